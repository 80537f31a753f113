"""Reimage and manual-upgrade operations of a scale set, folded from its stream.

Each operation is an intent (``ReimageRequested``) the worker carries out through the
fleet and then a result (``ReimageFinished``). One still without its result after a
restart is carried out again: the fleet's operation ids make a repeat a no-op.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from engine.domain.events import ReimageFinished, ReimageRequested

KEPT = 100  # finished operations remembered for their status (the newest)


@dataclass
class ReimageOperation:
    """One operation: what was asked, when, and (once finished) how it went."""

    request: ReimageRequested
    requested_at: datetime
    finished_at: datetime | None = None
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Reimages:
    """The scale set's reimage operations by id, oldest first."""

    operations: dict[str, ReimageOperation] = field(default_factory=dict)

    def apply(self, event: ReimageRequested | ReimageFinished, at: datetime) -> dict[str, str]:
        """Fold one event recorded at engine time ``at``; return the instances' new versions."""
        if isinstance(event, ReimageRequested):
            self.operations[event.operation_id] = ReimageOperation(event, at)
            finished = [k for k, op in self.operations.items() if op.finished_at is not None]
            for key in finished[: max(0, len(finished) - KEPT)]:
                del self.operations[key]
            return {}
        op = self.operations.get(event.operation_id)
        if op is not None:
            op.finished_at = at
            op.failed = dict(event.failed)
        return event.reimaged

    def pending(self) -> list[ReimageOperation]:
        """Requested and not yet finished, oldest first."""
        return [op for op in self.operations.values() if op.finished_at is None]


def reimage_operation_id(key: str, stream_version: int) -> str:
    """Deterministic: the same log names its operations the same."""
    return hashlib.blake2b(f"{key}#reimage#{stream_version}".encode(), digest_size=12).hexdigest()

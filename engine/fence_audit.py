"""Prove from the log alone that no scale set was ever driven by two engines at once.

When engines share a log, every event an owner writes carries ``metadata.fence``
(engine id, fencing token), and each ownership begins with ``scaleset.lease_acquired``.
The audit walks the log in position order and checks, per scale set (its own stream
and its upgrades' streams):

* tokens never go down: once a newer owner wrote, no older one did;
* each token belongs to one engine, and its first event is that engine's marker;
* after the first marker, nothing is written without a fence;
* within one upgrade, no instance is reimaged twice (a takeover redoes no reimage).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.domain.events import InstanceReimaged
from engine.domain.grouping import decode_all
from events import RecordedEvent


@dataclass
class _Scope:
    token: int = 0
    engines: dict[int, str] = field(default_factory=dict)
    fenced: bool = False


@dataclass
class FenceAudit:
    """What the audit saw; ``problems`` is empty when the log proves single ownership."""

    scale_sets: int = 0
    owners: int = 0  # (scale set, token) pairs: one per ownership
    takeovers: int = 0  # ownerships that began with a token above 1
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule was broken."""
        return not self.problems


def audit_fences(records: Iterable[RecordedEvent]) -> FenceAudit:
    """Check the ownership rules over ``records`` (the whole log, in position order)."""
    audit = FenceAudit()
    scopes: dict[str, _Scope] = {}
    upgrade_of: dict[str, str] = {}  # upgrade stream -> scale set key
    reimaged: dict[str, Counter[str]] = {}
    for record in records:
        audit.events += 1
        key = _scope(record, upgrade_of)
        if key is None:
            continue
        _check_fence(audit, scopes.setdefault(key, _Scope()), key, record)
        if record.stream_id.startswith("upgrade-"):
            counts = reimaged.setdefault(record.stream_id, Counter())
            for event in decode_all(record):
                if isinstance(event, InstanceReimaged):
                    counts[event.instance_id] += 1
    audit.scale_sets = len(scopes)
    for stream, counts in reimaged.items():
        twice = sorted(i for i, n in counts.items() if n > 1)
        if twice:
            audit.problems.append(f"{stream}: instances reimaged twice: {twice[:5]}")
    return audit


def _scope(record: RecordedEvent, upgrade_of: dict[str, str]) -> str | None:
    stream = record.stream_id
    if stream.startswith("vmss-"):
        key = stream.removeprefix("vmss-")
        if record.type == "scaleset.upgrade_started":
            upgrade_of["upgrade-" + record.data["upgrade_id"]] = key
        return key
    return upgrade_of.get(stream)


def _check_fence(audit: FenceAudit, scope: _Scope, key: str, record: RecordedEvent) -> None:
    fence = record.metadata.fence
    where = f"{key} at position {record.position} ({record.type})"
    if fence is None:
        if scope.fenced:
            audit.problems.append(f"{where}: written without a fence after a lease was taken")
        return
    engine, token = fence
    if token < scope.token:
        audit.problems.append(f"{where}: token {token} after token {scope.token}")
        return
    if token > scope.token:
        if record.type != "scaleset.lease_acquired":
            audit.problems.append(f"{where}: token {token} begins without lease_acquired")
        scope.token, scope.fenced = token, True
        scope.engines[token] = engine
        audit.owners += 1
        audit.takeovers += token > 1
    elif scope.engines.get(token) != engine:
        audit.problems.append(
            f"{where}: token {token} used by {engine} and by {scope.engines.get(token)}"
        )

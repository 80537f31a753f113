"""Prove from the log alone that no scale set was ever driven by two engines at once.

When engines share a log, every event an owner writes carries ``metadata.fence``
(engine id, fencing token), and each ownership begins with ``scaleset.lease_acquired``.
The audit walks the log in position order and checks, per scale set (its own stream
and its upgrades' streams):

* tokens never go down: once a newer owner wrote, no older one did;
* each token belongs to one engine, and its first event is that engine's marker;
* after the first marker, nothing is written without a fence until the set is deleted
  (a set created again under the same name starts unfenced; tokens keep growing);
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


class FenceAuditor:
    """The audit, fed page by page (a log need not fit in memory)."""

    def __init__(self) -> None:
        self.audit = FenceAudit()
        self._scopes: dict[str, _Scope] = {}
        self._upgrade_of: dict[str, str] = {}  # upgrade stream -> scale set key
        self._reimaged: dict[str, Counter[str]] = {}

    def feed(self, records: Iterable[RecordedEvent]) -> None:
        """Check the next records (in position order)."""
        for record in records:
            self.audit.events += 1
            if record.stream_id.startswith("upgrade-"):
                counts = self._reimaged.setdefault(record.stream_id, Counter())
                for event in decode_all(record):
                    if isinstance(event, InstanceReimaged):
                        counts[event.instance_id] += 1
            key = _scope(record, self._upgrade_of)
            if key is not None:
                _check_fence(self.audit, self._scopes.setdefault(key, _Scope()), key, record)

    def result(self) -> FenceAudit:
        """The audit of everything fed so far."""
        self.audit.scale_sets = len(self._scopes)
        for stream, counts in self._reimaged.items():
            twice = sorted(i for i, n in counts.items() if n > 1)
            problem = f"{stream}: instances reimaged twice: {twice[:5]}"
            if twice and problem not in self.audit.problems:
                self.audit.problems.append(problem)
        return self.audit


def audit_fences(records: Iterable[RecordedEvent]) -> FenceAudit:
    """Check the ownership rules over ``records`` (the whole log, in position order)."""
    auditor = FenceAuditor()
    auditor.feed(records)
    return auditor.result()


def _scope(record: RecordedEvent, upgrade_of: dict[str, str]) -> str | None:
    stream = record.stream_id
    if stream.startswith("vmss-"):
        key = stream.removeprefix("vmss-")
        if record.type == "scaleset.upgrade_started":
            upgrade_of["upgrade-" + record.data["upgrade_id"]] = key
        return key
    return upgrade_of.get(stream)


def _check_fence(audit: FenceAudit, scope: _Scope, key: str, record: RecordedEvent) -> None:
    _check_token(audit, scope, key, record)
    if record.type == "scaleset.deleted":  # the set's lifetime ends: a new one is created
        scope.fenced = False  # without a fence; its first owner's token is higher still


def _check_token(audit: FenceAudit, scope: _Scope, key: str, record: RecordedEvent) -> None:
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

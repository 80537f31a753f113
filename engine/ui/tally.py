"""The fleet at one position, in the few numbers the dashboard shows, cheap to snapshot.

``FleetTally`` is a pure fold like ``projections.fleet_view.FleetView`` but keeps only
what the fleet page needs: each set's status and its instances' phases, and running
totals of both. Snapshots share state copy-on-write: a snapshot is a shallow copy of two
dicts of immutable rows and per-upgrade records, and a record is cloned the first time a
fold changes it after a snapshot was taken. So a snapshot of a 10,000-set fleet costs a
millisecond and a little memory, and folding forward from one never disturbs another.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from events import RecordedEvent
from projections.upgrade_view import expand

PHASES = ("idle", "pending", "upgrading", "upgraded", "failed")
IDLE, PENDING, UPGRADING, UPGRADED, FAILED = range(len(PHASES))
NO_UPGRADE = "NoUpgrade"
STATUSES = (NO_UPGRADE, "RollingForward", "Completed", "Faulted", "Cancelled")

_MARKS = {
    "upgrade.instance_reimage_started": UPGRADING,
    "upgrade.instance_reimage_failed": FAILED,
    "upgrade.instance_healthy": UPGRADED,
    "upgrade.instance_health_timeout": FAILED,
    "upgrade.instance_rollback_started": FAILED,
    "upgrade.instance_rolled_back": FAILED,
    "upgrade.instance_rollback_failed": FAILED,
}
_ENDS = {
    "upgrade.completed": "Completed",
    "upgrade.cancelled": "Cancelled",
    "upgrade.faulted": "Faulted",
}
_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class SetRow:
    """One scale set as the fleet page lists it (immutable: snapshots share it)."""

    status: str
    instances: int
    upgrade_id: str | None = None
    target: str | None = None
    phases: tuple[int, ...] = (0, 0, 0, 0, 0)


class _Upgrade:
    """One upgrade's instance phases; mutated only by the tally whose generation it has."""

    __slots__ = ("code", "counts", "gen", "scale_set", "states", "target")

    def __init__(self, scale_set: str, target: str | None, states: dict[str, int]) -> None:
        self.scale_set = scale_set
        self.target = target
        self.code = "RollingForward"
        self.states = states
        self.counts = [0] * len(PHASES)
        for phase in states.values():
            self.counts[phase] += 1
        self.gen = 0

    def clone(self, gen: int) -> _Upgrade:
        copy = _Upgrade.__new__(_Upgrade)
        copy.scale_set, copy.target, copy.code = self.scale_set, self.target, self.code
        copy.states, copy.counts, copy.gen = dict(self.states), list(self.counts), gen
        return copy


class FleetTally:
    """Every set's status and instance phases as of ``position``, with fleet totals."""

    def __init__(self) -> None:
        self.sets: dict[str, SetRow] = {}
        self.status_counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self.phase_counts: list[int] = [0] * len(PHASES)
        self.position = 0
        self.time_us = 0
        self._upgrades: dict[str, _Upgrade] = {}
        self._gen = next(_generations)

    def snapshot(self) -> FleetTally:
        """An independent tally at the same position, sharing unchanged state."""
        copy = FleetTally.__new__(FleetTally)
        copy.sets, copy._upgrades = dict(self.sets), dict(self._upgrades)
        copy.status_counts, copy.phase_counts = dict(self.status_counts), list(self.phase_counts)
        copy.position, copy.time_us = self.position, self.time_us
        copy._gen = next(_generations)
        self._gen = next(_generations)  # what both share is now read-only to both
        return copy

    def apply(self, event: RecordedEvent) -> None:
        """Fold one event (in position order)."""
        self.position = event.position
        self.time_us = max(self.time_us, event.occurred_us)
        stream = event.stream_id
        if stream.startswith("upgrade-"):
            self._upgrade_event(stream.removeprefix("upgrade-"), event.type, event.data)
        elif stream.startswith("vmss-"):
            self._set_event(stream.removeprefix("vmss-"), event.type, event.data)

    def _set_event(self, key: str, type_name: str, data: dict[str, Any]) -> None:
        row = self.sets.get(key)
        if type_name == "scaleset.created":
            count = len(data["instance_versions"])
            self._put(key, SetRow(NO_UPGRADE, count, phases=(count, 0, 0, 0, 0)))
        elif type_name == "scaleset.model_updated" and row is not None:
            count = len(data["instance_versions"])
            phases = (count, 0, 0, 0, 0) if row.upgrade_id is None else row.phases
            self._put(key, SetRow(row.status, count, row.upgrade_id, row.target, phases))
        elif type_name == "scaleset.deleted":
            self._put(key, None)

    def _upgrade_event(self, upgrade_id: str, type_name: str, data: dict[str, Any]) -> None:
        if type_name == "upgrade.requested":
            self._requested(upgrade_id, data)
            return
        if upgrade_id not in self._upgrades:
            return
        upgrade = self._own(upgrade_id)
        if type_name in _ENDS:
            upgrade.code = _ENDS[type_name]
        for item_type, item in expand(type_name, data):
            phase = _MARKS.get(item_type)
            old = upgrade.states.get(item.get("instance_id", ""))
            if phase is not None and old is not None and old != phase:
                upgrade.states[item["instance_id"]] = phase
                upgrade.counts[old] -= 1
                upgrade.counts[phase] += 1
        row = self.sets.get(upgrade.scale_set)
        if row is not None and row.upgrade_id == upgrade_id:  # only the set's latest shows
            self._refresh(upgrade_id, upgrade)

    def _requested(self, upgrade_id: str, data: dict[str, Any]) -> None:
        target = data["target"].get("version")
        redeploy = set(data.get("redeploy", ()))
        states = {
            i: PENDING if v != target or i in redeploy else UPGRADED
            for i, v in data["instance_versions"].items()
        }
        upgrade = _Upgrade(data["scale_set"], target, states)
        upgrade.gen = self._gen
        self._upgrades[upgrade_id] = upgrade
        self._refresh(upgrade_id, upgrade)

    def _refresh(self, upgrade_id: str, upgrade: _Upgrade) -> None:
        """The set's row after a change to its latest upgrade."""
        key = upgrade.scale_set
        row = self.sets.get(key)
        if row is not None:
            phases = tuple(upgrade.counts)
            self._put(key, SetRow(upgrade.code, row.instances, upgrade_id, upgrade.target, phases))

    def _own(self, upgrade_id: str) -> _Upgrade:
        """The upgrade's record, cloned first if a snapshot shares it."""
        upgrade = self._upgrades[upgrade_id]
        if upgrade.gen != self._gen:
            upgrade = upgrade.clone(self._gen)
            self._upgrades[upgrade_id] = upgrade
        return upgrade

    def _put(self, key: str, row: SetRow | None) -> None:
        old = self.sets.pop(key, None)
        if old is not None:
            self.status_counts[old.status] -= 1
            for phase, n in enumerate(old.phases):
                self.phase_counts[phase] -= n
        if row is not None:
            self.sets[key] = row
            self.status_counts[row.status] += 1
            for phase, n in enumerate(row.phases):
                self.phase_counts[phase] += n

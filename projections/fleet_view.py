"""The read side of the whole fleet, folded from the log: latest upgrade, history, instances.

``FleetView`` is a pure fold (feed it events in position order). ``fleet_as_of`` folds a
store up to a position or an engine time, which answers any question "as of" a past
moment without touching anything live.

"Two months" in the history is counted in calendar months: an upgrade is kept if it
started at or after the same day and time two months before now (the day clamped to the
end of a shorter month: two months before 30 April is 28 or 29 February).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime

from events import EventStore, RecordedEvent
from events.clock import to_micros
from projections.upgrade_view import JSON, UpgradeView, expand

HISTORY_LIMIT = 5


def months_before(when: datetime, months: int) -> datetime:
    """``when`` moved back by calendar months, the day clamped to the target month."""
    month_index = when.year * 12 + (when.month - 1) - months
    year, month = divmod(month_index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


@dataclass(slots=True)
class InstanceView:
    """One instance as the log knows it."""

    version: str
    health: str = "Unknown"


@dataclass
class FleetView:
    """Every scale set's upgrades and instances, as of the events folded so far."""

    upgrades: dict[str, UpgradeView] = field(default_factory=dict)
    scale_sets: dict[str, list[str]] = field(default_factory=dict)  # key -> upgrade ids
    instances: dict[str, dict[str, InstanceView]] = field(default_factory=dict)
    position: int = 0

    def apply(self, event: RecordedEvent) -> None:
        """Fold one event (events must come in position order)."""
        self.position = event.position
        if event.stream_id.startswith("upgrade-"):
            upgrade_id = event.stream_id.removeprefix("upgrade-")
            view = self.upgrades.setdefault(upgrade_id, UpgradeView(upgrade_id))
            view.apply(event)
            for type_name, data in expand(event.type, event.data):
                self._instance_change(view.scale_set, type_name, data)
        elif event.stream_id.startswith("vmss-"):
            self._scale_set_event(event.stream_id.removeprefix("vmss-"), event)

    def _scale_set_event(self, key: str, event: RecordedEvent) -> None:
        data = event.data
        if event.type == "scaleset.created":
            self.scale_sets[key] = []
            self.instances[key] = {i: InstanceView(v) for i, v in data["instance_versions"].items()}
        elif event.type == "scaleset.model_updated":
            known = self.instances.setdefault(key, {})
            versions: dict[str, str] = data["instance_versions"]
            self.instances[key] = {i: known.get(i) or InstanceView(v) for i, v in versions.items()}
        elif event.type == "scaleset.deleted":
            self.scale_sets.pop(key, None)
            self.instances.pop(key, None)
        elif event.type == "scaleset.upgrade_started":
            self.scale_sets.setdefault(key, []).append(data["upgrade_id"])
        elif event.type == "scaleset.reimage_finished":  # reimage, manualupgrade
            known = self.instances.get(key, {})
            for instance_id, version in data["reimaged"].items():
                if instance_id in known:
                    known[instance_id].version = version

    def _instance_change(self, key: str, type_name: str, data: JSON) -> None:
        instance = self.instances.get(key, {}).get(data.get("instance_id", ""))
        if instance is None:
            return
        if type_name in ("upgrade.instance_reimaged", "upgrade.instance_rolled_back"):
            instance.version = data["version"]
        elif type_name == "upgrade.instance_health_changed":
            instance.health = data["health"]
        elif type_name == "upgrade.instance_healthy":
            instance.health = "Healthy"
        elif type_name == "upgrade.instance_health_timeout":
            instance.health = data["last_health"]

    def latest(self, key: str) -> JSON | None:
        """The latest rolling upgrade of a scale set (None if it never had one)."""
        view = self.latest_view(key)
        return view.latest() if view is not None else None

    def latest_view(self, key: str) -> UpgradeView | None:
        """The view behind ``latest`` (the HTTP API caches its encoded form)."""
        ids = self._upgrade_ids(key)
        if not ids:
            return None
        return self.upgrades.get(ids[-1])

    def _upgrade_ids(self, key: str) -> list[str]:
        """A set's upgrade ids by its key (as stored: ASCII lower-cased, other letters
        upper-cased), or by an ASCII key in any case."""
        return self.scale_sets.get(key) or self.scale_sets.get(key.lower()) or []

    def history(self, key: str, now: datetime) -> list[JSON]:
        """The last five OS upgrade attempts within two months before ``now``, newest first."""
        return [v.history_item() for v in self.history_views(key, now)]

    def history_views(self, key: str, now: datetime) -> list[UpgradeView]:
        """The views behind ``history`` (the HTTP API pages through them by upgrade id)."""
        since = months_before(now, 2)
        views = [self.upgrades[u] for u in self._upgrade_ids(key) if u in self.upgrades]
        # Newest first: by start time, and by log position for equal start times (views
        # are in the order their upgrades started; the sort is stable).
        recent = [
            v for v in reversed(views) if v.start_time is not None and since <= v.start_time <= now
        ]
        recent.sort(key=lambda v: v.start_time or now, reverse=True)
        return recent[:HISTORY_LIMIT]


async def fleet_as_of(
    store: EventStore, *, position: int | None = None, time: datetime | None = None
) -> FleetView:
    """Fold the log as it stood at ``position``, or at engine time ``time`` (or now)."""
    view = FleetView()
    limit_us = to_micros(time) if time is not None else None
    after = 0
    while True:
        page = await store.read_all(after=after, limit=5000, up_to=position)
        if not page:
            return view
        for event in page:
            if limit_us is None or event.occurred_us <= limit_us:
                view.apply(event)
        after = page[-1].position

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


@dataclass(slots=True)
class ScaleSetModel:
    """What a SQL user asks about a scale set's model: where it is, its zones, its policy.

    Flat and typed on purpose: it is a row of the ``fleet_scale_sets`` table
    (``projections.sql_tables``), and the runner reloads it from that row.
    """

    subscription: str
    resource_group: str
    name: str
    location: str
    zones: str  # comma-separated availability zones, "" for a regional set
    capacity: int
    sku: str
    os_type: str
    upgrade_mode: str
    automatic_os_upgrade: bool
    use_rolling_upgrade_policy: bool
    disable_automatic_rollback: bool
    max_batch_instance_percent: int
    max_unhealthy_instance_percent: int
    max_unhealthy_upgraded_instance_percent: int
    pause_time_between_batches_s: int
    image_publisher: str
    image_offer: str
    image_sku: str
    image_version: str
    image_id: str | None
    health_source: str  # "probe", "extension" or "none"
    service_fabric: bool
    created_time: datetime


def model_from_spec(spec: JSON, created: datetime) -> ScaleSetModel:
    """The flat model of a recorded ``ScaleSetSpec`` (fields missing in old logs defaulted)."""
    policy: JSON = spec.get("policy") or {}
    rolling: JSON = policy.get("rolling") or {}
    automatic: JSON = policy.get("automatic") or {}
    image: JSON = spec.get("image") or {}
    if spec.get("health_probe"):
        health_source = "probe"
    elif spec.get("health_extension") is not None:
        health_source = "extension"
    else:
        health_source = "none"
    return ScaleSetModel(
        subscription=spec["subscription"],
        resource_group=spec["resource_group"],
        name=spec["name"],
        location=spec["location"],
        zones=",".join(spec.get("zones") or ()),
        capacity=int(spec["capacity"]),
        sku=spec.get("sku", ""),
        os_type=spec.get("os_type", "Linux"),
        upgrade_mode=policy.get("mode", "Manual"),
        automatic_os_upgrade=bool(automatic.get("enable_automatic_os_upgrade", False)),
        use_rolling_upgrade_policy=bool(automatic.get("use_rolling_upgrade_policy", False)),
        disable_automatic_rollback=bool(automatic.get("disable_automatic_rollback", False)),
        max_batch_instance_percent=int(rolling.get("max_batch_instance_percent", 20)),
        max_unhealthy_instance_percent=int(rolling.get("max_unhealthy_instance_percent", 20)),
        max_unhealthy_upgraded_instance_percent=int(
            rolling.get("max_unhealthy_upgraded_instance_percent", 20)
        ),
        pause_time_between_batches_s=int(rolling.get("pause_time_between_batches_s", 0)),
        image_publisher=image.get("publisher", ""),
        image_offer=image.get("offer", ""),
        image_sku=image.get("sku", ""),
        image_version=image.get("version", ""),
        image_id=image.get("id"),
        health_source=health_source,
        service_fabric=bool(spec.get("service_fabric", False)),
        created_time=created,
    )


# (image, version, location): a platform image is "publisher/offer/sku" in one location;
# a gallery image is its id, with one entry per region it was published or replicated to.
ImageVersionKey = tuple[str, str, str]


@dataclass
class FleetView:
    """Every scale set's upgrades and instances, as of the events folded so far."""

    upgrades: dict[str, UpgradeView] = field(default_factory=dict)
    scale_sets: dict[str, list[str]] = field(default_factory=dict)  # key -> upgrade ids
    instances: dict[str, dict[str, InstanceView]] = field(default_factory=dict)
    position: int = 0
    models: dict[str, ScaleSetModel] = field(default_factory=dict)
    image_versions: dict[ImageVersionKey, datetime] = field(default_factory=dict)

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
        else:
            for key in image_versions_of(event):
                self.image_versions.setdefault(key, event.occurred_at)

    def _scale_set_event(self, key: str, event: RecordedEvent) -> None:
        data = event.data
        if event.type == "scaleset.created":
            self.scale_sets[key] = []
            self.instances[key] = {i: InstanceView(v) for i, v in data["instance_versions"].items()}
            self.models[key] = model_from_spec(data["spec"], event.occurred_at)
        elif event.type == "scaleset.model_updated":
            known = self.instances.setdefault(key, {})
            versions: dict[str, str] = data["instance_versions"]
            self.instances[key] = {i: known.get(i) or InstanceView(v) for i, v in versions.items()}
            previous = self.models.get(key)
            created = previous.created_time if previous is not None else event.occurred_at
            self.models[key] = model_from_spec(data["spec"], created)
        elif event.type == "scaleset.deleted":
            self.scale_sets.pop(key, None)
            self.instances.pop(key, None)
            self.models.pop(key, None)
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


def image_versions_of(event: RecordedEvent) -> list[ImageVersionKey]:
    """The image versions a catalog event makes available, and where."""
    data = event.data
    if event.type == "image.version_published":
        image = f"{data['publisher']}/{data['offer']}/{data['sku']}"
        return [(image, data["version"], data["location"])]
    if event.type == "gallery.version_published":
        return [(data["image_id"], data["version"], region) for region in data["regions"]]
    if event.type == "gallery.version_replicated":
        return [(data["image_id"], data["version"], data["region"])]
    return []


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

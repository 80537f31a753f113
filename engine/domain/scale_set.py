"""One scale set: its state folded from its stream, and its pure decisions (SPEC 2.1)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from engine.domain.events import (
    AutomaticUpgradeScheduled,
    ReimageFinished,
    ReimageRequested,
    ScaleSetCreated,
    ScaleSetDeleted,
    ScaleSetModelUpdated,
    ScaleSetUpgradeFinished,
    ScaleSetUpgradeStarted,
    UpgradeRequested,
)
from engine.domain.model import (
    DEFAULT_ROLLING_POLICY,
    ScaleSetSpec,
    StartedBy,
    version_key,
)
from engine.domain.reimage import Reimages


class OperationNotAllowedError(Exception):
    """A command conflicts with the current state (HTTP 409 ``OperationNotAllowed``)."""


@dataclass(frozen=True)
class EngineSettings:
    """Timings and limits of the orchestrator; the defaults are Azure's numbers."""

    first_rollout_max_delay_s: int = 3 * 3600
    new_version_min_delay_s: int = 30 * 60
    new_version_max_delay_s: int = 60 * 60
    health_timeout_s: int = 300
    probe_interval_s: int = 5
    max_concurrent_upgrades: int | None = None


@dataclass
class ScaleSetState:
    """A scale set as its stream says it is now."""

    spec: ScaleSetSpec | None = None
    instance_versions: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    automatic_configured_at: datetime | None = None
    platform_upgrades: int = 0
    active_upgrade: ScaleSetUpgradeStarted | None = None
    upgrades: list[str] = field(default_factory=list)
    scheduled: AutomaticUpgradeScheduled | None = None
    left_failed: tuple[str, ...] = ()
    not_retried: str | None = None  # a Platform upgrade to this version did not complete
    version: int = 0
    created_at: datetime | None = None  # ARM's timeCreated: engine time of the creation
    unique_id: str = ""  # ARM's uniqueId
    model_generation: int = 0  # the etag: +1 on every model change
    reimages: Reimages = field(default_factory=Reimages)
    instances_created: dict[str, datetime] = field(default_factory=dict)  # ARM's timeCreated

    def apply(self, event: object, at: datetime) -> None:
        """Fold one event recorded at engine time ``at``."""
        self.version += 1
        if isinstance(event, ScaleSetCreated):
            self._created(event, at)
        elif isinstance(event, ScaleSetModelUpdated):
            self._model_updated(event, at)
        elif isinstance(event, ScaleSetDeleted):
            self.deleted = True
        elif isinstance(event, AutomaticUpgradeScheduled):
            self.scheduled = event
        elif isinstance(event, ScaleSetUpgradeStarted):
            self._upgrade_started(event)
        elif isinstance(event, ScaleSetUpgradeFinished):
            self._upgrade_finished(event)
        elif isinstance(event, ReimageRequested | ReimageFinished):
            self.instance_versions.update(self.reimages.apply(event, at))

    def _created(self, event: ScaleSetCreated, at: datetime) -> None:
        self.spec = event.spec
        self.instance_versions = dict(event.instance_versions)
        self.deleted = False
        self.created_at, self.model_generation = at, 1
        self.unique_id = unique_id_for(event.spec.key, self.version)
        self.instances_created = dict.fromkeys(event.instance_versions, at)
        if _automatic(event.spec):
            self.automatic_configured_at = at

    def _model_updated(self, event: ScaleSetModelUpdated, at: datetime) -> None:
        self.model_generation += event.spec != self.spec  # a PUT of the same model: same etag
        self.spec = event.spec
        self.instance_versions = dict(event.instance_versions)
        created = self.instances_created
        self.instances_created = {i: created.get(i, at) for i in event.instance_versions}
        if event.automatic_newly_enabled:
            self.automatic_configured_at = at
            self.platform_upgrades = 0
        if not _automatic(event.spec):
            self.automatic_configured_at = None
            self.scheduled = None

    def _upgrade_started(self, event: ScaleSetUpgradeStarted) -> None:
        self.active_upgrade = event
        self.upgrades.append(event.upgrade_id)
        if event.started_by == StartedBy.PLATFORM:
            self.platform_upgrades += 1
            self.scheduled = None
        elif self.scheduled is not None and version_key(event.target_version) >= version_key(
            self.scheduled.target_version
        ):
            self.scheduled = None  # a manual upgrade does what the timer would have done

    def _upgrade_finished(self, event: ScaleSetUpgradeFinished) -> None:
        active = self.active_upgrade
        if active is not None and active.started_by == StartedBy.PLATFORM:
            target = active.target_version
            reached = event.status == "Completed" and all(
                v == target for v in event.instance_versions.values()
            )
            self.not_retried = None if reached else target
        self.active_upgrade = None
        self.instance_versions = dict(event.instance_versions)
        self.left_failed = event.left_failed


def _automatic(spec: ScaleSetSpec) -> bool:
    return spec.policy.automatic.enable_automatic_os_upgrade


def jitter(key: str, version: str, span_s: int) -> int:
    """A delay in [0, span) fixed by the scale set and version: spreads load, replays the same."""
    if span_s <= 0:
        return 0
    digest = hashlib.blake2b(f"{key}/{version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % span_s


def schedule_automatic(
    state: ScaleSetState,
    latest: str | None,
    now: datetime,
    settings: EngineSettings,
    available_at: datetime | None = None,
) -> AutomaticUpgradeScheduled | None:
    """Schedule a Platform upgrade when a newer version is available (SPEC 2.1.1).

    The delay is counted from when ``latest`` became available here (``available_at``,
    from the catalog's log; ``now`` if unknown), not from when the set was free to look
    at it: a version published while a rollout runs is due 30-60 minutes after its
    publication, and starts as soon as that rollout ends if the window has passed. The
    first rollout after enabling gets the set's one-time spread of up to 3 hours,
    counted from the enabling or, for a version that comes later, from its publication.
    """
    spec = state.spec
    if spec is None or state.deleted or state.automatic_configured_at is None or latest is None:
        return None
    if spec.image.version.lower() != "latest" and not spec.image.is_gallery:
        return None
    latest_key = version_key(latest)
    if not any(version_key(v) < latest_key for v in set(state.instance_versions.values())):
        return None
    if state.not_retried is not None and version_key(latest) <= version_key(state.not_retried):
        return None  # a failed automatic rollout is not retried; a newer version is
    scheduled = state.scheduled
    if scheduled is not None and version_key(scheduled.target_version) >= latest_key:
        return None
    if scheduled is not None:  # a newer version: keep the time already chosen
        return replace(scheduled, target_version=latest, reason="newer version available")
    since = available_at if available_at is not None else now
    if state.platform_upgrades == 0:
        delay = first_rollout_delay(spec.key, settings)
        base = max(state.automatic_configured_at, since)
        reason = "first rollout after enabling"
    else:
        span = settings.new_version_max_delay_s - settings.new_version_min_delay_s
        delay = settings.new_version_min_delay_s + jitter(spec.key, latest, span)
        base, reason = since, "new version available"
    due = max(now, base + timedelta(seconds=delay))
    return AutomaticUpgradeScheduled(latest, due, reason, delay, base)


def first_rollout_delay(key: str, settings: EngineSettings) -> int:
    """The set's one-time spread of its first rollout: fixed by the set, so load spreads
    over the 3 hours and a replay (or a restarted engine) chooses the same."""
    return jitter(key, "first", settings.first_rollout_max_delay_s)


def manual_target(state: ScaleSetState, latest: str | None) -> str:
    """The version a manual upgrade moves every instance to (SPEC 2.1.2).

    The latest available one, or the newest an instance runs if the catalog has nothing
    newer. An empty set (capacity 0) has no instance to go by: the catalog's latest, or
    the model's own version.
    """
    assert state.spec is not None
    known = [v for v in (latest, *state.instance_versions.values()) if v is not None]
    return max(known, key=version_key) if known else state.spec.image.version


def upgrade_id_for(state: ScaleSetState) -> str:
    """A deterministic id: the same log replayed names its upgrades the same."""
    assert state.spec is not None
    return hashlib.blake2b(f"{state.spec.key}#{state.version}".encode(), digest_size=12).hexdigest()


def unique_id_for(key: str, stream_version: int) -> str:
    """A scale set's ``uniqueId``, fixed by its creation's place in the log.

    A set deleted and created again under the same name gets a new one, as in Azure.
    """
    hexed = hashlib.blake2b(f"{key}#created#{stream_version}".encode(), digest_size=16).hexdigest()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


def start_upgrade(
    state: ScaleSetState, started_by: StartedBy, target_version: str
) -> ScaleSetUpgradeStarted:
    """Refuse a second upgrade; otherwise record that one starts (SPEC 2.1.3)."""
    if state.spec is None or state.deleted:
        raise LookupError("the scale set does not exist")
    if state.active_upgrade is not None:
        raise OperationNotAllowedError(
            "Rolling upgrade is already in progress on this Virtual Machine Scale Set."
        )
    return ScaleSetUpgradeStarted(upgrade_id_for(state), started_by, target_version)


def build_request(
    state: ScaleSetState, started: ScaleSetUpgradeStarted, settings: EngineSettings
) -> UpgradeRequested:
    """The full, fixed inputs of an upgrade: target, policy in force, rollback targets."""
    spec = state.spec
    assert spec is not None
    automatic = spec.policy.automatic
    platform = started.started_by == StartedBy.PLATFORM
    policy = (
        spec.policy.rolling
        if not platform or automatic.use_rolling_upgrade_policy
        else DEFAULT_ROLLING_POLICY
    )
    grace = 0
    if spec.health_extension is not None:
        source, interval = "extension", spec.health_extension.interval_s
        ext = spec.health_extension
        grace = interval * ext.number_of_probes
        if ext.grace_period_s is not None:
            grace = ext.grace_period_s
    elif spec.health_probe:
        source, interval = "probe", settings.probe_interval_s
    else:
        source, interval = "none", settings.probe_interval_s
    image = spec.image
    target = type(image)(image.publisher, image.offer, image.sku, started.target_version, image.id)
    ids = list(state.instance_versions)
    return UpgradeRequested(
        upgrade_id=started.upgrade_id,
        scale_set=spec.key,
        location=spec.location,
        started_by=started.started_by,
        target=target,
        policy=policy,
        automatic_rollback=platform and not automatic.disable_automatic_rollback,
        deferral=automatic.os_rolling_upgrade_deferral,
        health_source=source,
        instance_versions=dict(state.instance_versions),
        zones={i: spec.zone_of(i) for i in ids} if spec.zones else {},
        update_domains={i: spec.update_domain_of(i) for i in ids},
        service_fabric=spec.service_fabric,
        health_timeout_s=settings.health_timeout_s,
        probe_interval_s=interval,
        redeploy=state.left_failed,
        grace_period_s=grace,
    )

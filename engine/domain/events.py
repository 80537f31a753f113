"""Every event the orchestrator records, each carrying the inputs of its decision.

Type names are stable strings (never Python paths) registered in ``DOMAIN_EVENTS``.
Streams: ``images-<location>/<publisher>/<offer>/<sku>`` (the catalog),
``vmss-<subscription>/<group>/<name>`` (a scale set) and ``upgrade-<id>`` (one upgrade).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.domain.model import (
    Health,
    ImageReference,
    RollingUpgradePolicy,
    ScaleSetSpec,
    StartedBy,
)
from engine.domain.names import fold
from events import EventRegistry

DOMAIN_EVENTS = EventRegistry()
register = DOMAIN_EVENTS.register


def catalog_stream(location: str, publisher: str, offer: str, sku: str) -> str:
    """The stream of one image family in one location."""
    return f"images-{location}/{publisher}/{offer}/{sku}".lower()


def scale_set_stream(key: str) -> str:
    """The stream of one scale set."""
    return f"vmss-{key}"


def upgrade_stream(upgrade_id: str) -> str:
    """The stream of one rolling upgrade."""
    return f"upgrade-{upgrade_id}"


# -- catalog ----------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationProfile:
    """How the simulated fleet behaves on an image version (ignored by real fleets)."""

    unhealthy_instance_percent: int = 0
    boot_seconds: int = 30
    reimage_failure_percent: int = 0


@register("image.version_published")
@dataclass(frozen=True)
class ImageVersionPublished:
    location: str
    publisher: str
    offer: str
    sku: str
    version: str
    simulation: SimulationProfile = field(default_factory=SimulationProfile)


@register("gallery.version_published")
@dataclass(frozen=True)
class GalleryImageVersionPublished:
    image_id: str
    version: str
    regions: tuple[str, ...]
    exclude_from_latest: bool = False
    simulation: SimulationProfile = field(default_factory=SimulationProfile)


@register("gallery.version_replicated")
@dataclass(frozen=True)
class GalleryImageVersionReplicated:
    image_id: str
    version: str
    region: str


def gallery_stream(image_id: str) -> str:
    """The stream of one gallery image definition."""
    return "gallery-" + fold(image_id.strip("/"))  # ASCII lower-cased, as ARM compares


# -- scale sets -------------------------------------------------------------------


@register("scaleset.created")
@dataclass(frozen=True)
class ScaleSetCreated:
    spec: ScaleSetSpec
    instance_versions: dict[str, str]  # instance id -> image version it runs


@register("scaleset.model_updated")
@dataclass(frozen=True)
class ScaleSetModelUpdated:
    spec: ScaleSetSpec
    automatic_newly_enabled: bool
    instance_versions: dict[str, str]  # after scaling in or out


@register("scaleset.deleted")
@dataclass(frozen=True)
class ScaleSetDeleted:
    key: str


@register("scaleset.lease_acquired")
@dataclass(frozen=True)
class LeaseAcquired:
    """An engine took over driving the scale set with fencing token ``token``.

    Appended with that token before the engine reads the set's streams: from its
    commit on the store refuses every append with an older token, so whatever the
    engine then reads is final and no earlier owner can add to it.
    """

    engine_id: str
    token: int


@register("scaleset.automatic_upgrade_scheduled")
@dataclass(frozen=True)
class AutomaticUpgradeScheduled:
    """A durable timer: start a Platform upgrade to ``target_version`` at ``due_at``.

    ``due_at`` is ``counted_from + delay_s``, or the moment the set was free to start
    if that had passed (a rollout was running).
    """

    target_version: str
    due_at: datetime
    reason: str  # "first rollout after enabling", "new version available", "newer ..."
    delay_s: int
    counted_from: datetime | None = None  # the version's availability or the enabling


@register("scaleset.upgrade_started")
@dataclass(frozen=True)
class ScaleSetUpgradeStarted:
    """Links an upgrade to the set; with ``target_version`` the request can be rebuilt."""

    upgrade_id: str
    started_by: StartedBy
    target_version: str


@register("scaleset.upgrade_finished")
@dataclass(frozen=True)
class ScaleSetUpgradeFinished:
    upgrade_id: str
    status: str
    instance_versions: dict[str, str]  # the instances' images when the upgrade ended
    left_failed: tuple[str, ...] = ()  # instances to redeploy even if on the target version


# -- upgrades ---------------------------------------------------------------------


@register("upgrade.requested")
@dataclass(frozen=True)
class UpgradeRequested:
    """Everything the upgrade will decide from, fixed when it starts."""

    upgrade_id: str
    scale_set: str
    location: str
    started_by: StartedBy
    target: ImageReference
    policy: RollingUpgradePolicy
    automatic_rollback: bool
    deferral: bool
    health_source: str  # "probe", "extension" or "none"
    instance_versions: dict[str, str]  # rollback targets
    zones: dict[str, str]
    update_domains: dict[str, int]
    service_fabric: bool
    health_timeout_s: int
    probe_interval_s: int
    redeploy: tuple[str, ...] = ()  # left failed by an earlier upgrade: do them again
    grace_period_s: int = 0  # Initializing instances are waited for this long at least


@register("upgrade.precheck_passed")
@dataclass(frozen=True)
class PreCheckPassed:
    unhealthy: int
    total: int
    limit_percent: int


@register("upgrade.batch_started")
@dataclass(frozen=True)
class BatchStarted:
    index: int
    members: tuple[str, ...]
    batch_size: int
    reason: str
    unhealthy: int
    total: int


@register("upgrade.instance_reimage_started")
@dataclass(frozen=True)
class InstanceReimageStarted:
    """Intent: the instance's OS disk is about to be replaced."""

    instance_id: str
    from_version: str
    to_version: str


@register("upgrade.instance_reimaged")
@dataclass(frozen=True)
class InstanceReimaged:
    instance_id: str
    version: str
    failed_extensions: tuple[str, ...] = ()


@register("upgrade.instance_reimage_failed")
@dataclass(frozen=True)
class InstanceReimageFailed:
    instance_id: str
    error: str


@register("upgrade.health_wait_started")
@dataclass(frozen=True)
class HealthWaitStarted:
    """A durable timer: instances not Healthy by ``deadline`` have failed."""

    instances: tuple[str, ...]
    deadline: datetime


@register("upgrade.instance_health_changed")
@dataclass(frozen=True)
class InstanceHealthChanged:
    instance_id: str
    health: Health


@register("upgrade.instance_healthy")
@dataclass(frozen=True)
class InstanceHealthy:
    instance_id: str


@register("upgrade.instance_health_timeout")
@dataclass(frozen=True)
class InstanceHealthTimeout:
    instance_id: str
    last_health: Health
    waited_s: int


@register("upgrade.instance_rollback_started")
@dataclass(frozen=True)
class InstanceRollbackStarted:
    """Intent: the previous OS disk is about to be restored."""

    instance_id: str
    to_version: str


@register("upgrade.instance_rolled_back")
@dataclass(frozen=True)
class InstanceRolledBack:
    instance_id: str
    version: str


@register("upgrade.instance_rollback_failed")
@dataclass(frozen=True)
class InstanceRollbackFailed:
    instance_id: str
    error: str


@register("upgrade.batch_completed")
@dataclass(frozen=True)
class BatchCompleted:
    index: int
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]
    processed_total: int
    failed_total: int
    limit_percent: int
    # upgraded earlier, Healthy after their wait, not Healthy now: counted against the
    # limit with failed_total (not folded into it: they may recover)
    unhealthy_after_upgrade: tuple[str, ...] = ()


@register("upgrade.pause_started")
@dataclass(frozen=True)
class PauseStarted:
    """A durable timer: the next batch starts no earlier than ``until``."""

    until: datetime


@register("upgrade.instances_approved")
@dataclass(frozen=True)
class InstancesApproved:
    instance_ids: tuple[str, ...]


@register("upgrade.cancel_requested")
@dataclass(frozen=True)
class CancelRequested:
    by: str


@register("upgrade.cancelled")
@dataclass(frozen=True)
class UpgradeCancelled:
    succeeded: int
    failed: int
    not_started: int


@register("upgrade.faulted")
@dataclass(frozen=True)
class UpgradeFaulted:
    code: str
    message: str
    numerator: int
    denominator: int
    limit_percent: int


@register("upgrade.completed")
@dataclass(frozen=True)
class UpgradeCompleted:
    succeeded: int
    failed: int


@register("upgrade.instance_events")
@dataclass(frozen=True)
class InstanceEvents:
    """Several events of one per-instance kind, decided at one instant, as one record.

    A batch step decides the same thing for up to hundreds of instances at once (20
    reimages started, 20 instances healthy). One record per instance would multiply
    the per-record costs (encode, hash, insert, project) by the batch size for no gain
    in meaning; ``items`` keeps every instance's own data, in decision order. Readers
    expand the group (``engine.domain.grouping.expand``) and fold the items one by one.
    """

    event: str  # the type name of every item
    version: int  # the items' schema version (upcast on expand when older)
    items: tuple[dict[str, object], ...]


# -- reimage and manual upgrade (scale set stream) ----------------------------------


@register("scaleset.reimage_requested")
@dataclass(frozen=True)
class ReimageRequested:
    """Intent: these instances' OS disks are about to be replaced with ``version``.

    ``kind`` is what the user asked for: ``reimage`` (the model's image again, its
    newest version when the model says ``latest``) or ``manualupgrade`` (the instances
    not on the model's image get it).
    """

    operation_id: str
    kind: str
    instance_ids: tuple[str, ...]
    version: str


@register("scaleset.reimage_finished")
@dataclass(frozen=True)
class ReimageFinished:
    """How each instance of a ``ReimageRequested`` went (the fleet's answers)."""

    operation_id: str
    reimaged: dict[str, str]  # instance id -> the version it now runs
    failed: dict[str, str]  # instance id -> error

"""Value types of the domain: scale set models, image references and upgrade policy.

Plain frozen dataclasses, JSON-friendly, so they go into events unchanged. Field names
are snake_case versions of Azure's ``properties.upgradePolicy`` and friends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from engine.domain.names import fold


class Health(StrEnum):
    """An instance's health signal (SPEC 2.4)."""

    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    INITIALIZING = "Initializing"
    UNKNOWN = "Unknown"


class StartedBy(StrEnum):
    """Who started an upgrade."""

    PLATFORM = "Platform"
    USER = "User"


class UpgradeStatus(StrEnum):
    """``runningStatus.code`` of a rolling upgrade."""

    ROLLING_FORWARD = "RollingForward"
    CANCELLED = "Cancelled"
    COMPLETED = "Completed"
    FAULTED = "Faulted"


@dataclass(frozen=True)
class ImageReference:
    """A platform image (publisher/offer/sku/version) or a gallery image (``id``)."""

    publisher: str = ""
    offer: str = ""
    sku: str = ""
    version: str = "latest"
    id: str | None = None

    @property
    def is_gallery(self) -> bool:
        """True for a shared image gallery reference."""
        return self.id is not None

    @property
    def family(self) -> tuple[str, str, str]:
        """(publisher, offer, sku): what "a newer version of the same image" means."""
        return (self.publisher.lower(), self.offer.lower(), self.sku.lower())


@dataclass(frozen=True)
class RollingUpgradePolicy:
    """``upgradePolicy.rollingUpgradePolicy`` with Azure's defaults."""

    max_batch_instance_percent: int = 20
    max_unhealthy_instance_percent: int = 20
    max_unhealthy_upgraded_instance_percent: int = 20
    pause_time_between_batches_s: int = 0
    prioritize_unhealthy_instances: bool = False
    enable_cross_zone_upgrade: bool = False
    max_surge: bool = False
    rollback_failed_instances_on_policy_breach: bool = False


DEFAULT_ROLLING_POLICY = RollingUpgradePolicy()


@dataclass(frozen=True)
class AutomaticOSUpgradePolicy:
    """``upgradePolicy.automaticOSUpgradePolicy``."""

    enable_automatic_os_upgrade: bool = False
    disable_automatic_rollback: bool = False
    use_rolling_upgrade_policy: bool = False
    os_rolling_upgrade_deferral: bool = False


@dataclass(frozen=True)
class UpgradePolicy:
    """``properties.upgradePolicy``."""

    mode: str = "Manual"
    rolling: RollingUpgradePolicy = field(default_factory=RollingUpgradePolicy)
    automatic: AutomaticOSUpgradePolicy = field(default_factory=AutomaticOSUpgradePolicy)


@dataclass(frozen=True)
class HealthExtension:
    """The Application Health extension's settings (SPEC 2.4)."""

    interval_s: int = 5
    number_of_probes: int = 1
    grace_period_s: int | None = None


@dataclass(frozen=True)
class Extension:
    """A VM extension of the model, applied again after every reimage."""

    name: str
    type: str = "CustomScript"
    publisher: str = "Microsoft.Azure.Extensions"
    provision_after: tuple[str, ...] = ()
    credential_expires_at: datetime | None = None


@dataclass(frozen=True)
class DataDisk:
    """A data disk; reimaging never touches it."""

    lun: int
    size_gb: int


@dataclass(frozen=True)
class Identity:
    """``identity`` of a scale set: ARM keeps it with the model and returns it."""

    type: str = "None"  # "SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned"
    user_assigned: tuple[str, ...] = ()  # resource ids of the user-assigned identities


@dataclass(frozen=True)
class ScaleSetSpec:
    """Everything the orchestrator needs to know about one scale set's model."""

    subscription: str
    resource_group: str
    name: str
    location: str
    capacity: int
    image: ImageReference
    sku: str = "Standard_D2s_v3"
    policy: UpgradePolicy = field(default_factory=UpgradePolicy)
    health_probe: bool = False
    health_extension: HealthExtension | None = None
    extensions: tuple[Extension, ...] = ()
    data_disks: tuple[DataDisk, ...] = ()
    zones: tuple[str, ...] = ()
    os_type: str = "Linux"
    enable_automatic_updates: bool | None = None
    service_fabric: bool = False
    service_fabric_durability: str | None = None
    update_domains: int = 5
    api_version: str = "2024-07-01"
    tags: tuple[tuple[str, str], ...] = ()  # in the order the client sent them
    identity: Identity | None = None
    health_probe_id: str = ""  # as the client sent it (case kept); "" for older logs

    @property
    def key(self) -> str:
        """Case-insensitive identity, as ARM treats resource names."""
        return scale_set_key(self.subscription, self.resource_group, self.name)

    @property
    def has_health_source(self) -> bool:
        """A probe or the Application Health extension is configured."""
        return self.health_probe or self.health_extension is not None

    def instance_ids(self) -> tuple[str, ...]:
        """Instances are named "0".."N-1"."""
        return tuple(str(i) for i in range(self.capacity))

    def zone_of(self, instance_id: str) -> str:
        """The zone an instance lives in ("" for a regional set)."""
        return self.zones[int(instance_id) % len(self.zones)] if self.zones else ""

    def update_domain_of(self, instance_id: str) -> int:
        """The update domain of an instance."""
        return int(instance_id) % max(1, self.update_domains)


def scale_set_key(subscription: str, resource_group: str, name: str) -> str:
    """The stream-safe identity of a scale set: ARM's case-insensitivity, no more."""
    key = f"{subscription}/{resource_group}/{name}"
    if key.isascii():  # the hot path, and the key of every log written before Unicode
        return key.lower()
    return f"{fold(subscription)}/{fold(resource_group)}/{fold(name)}"


def canonical_version(version: str) -> str:
    """The one spelling of a numeric version: no leading zeros ("01.0.00" -> "1.0.0").

    New versions must already be canonical; logs written before that rule may hold
    other spellings, and the catalog folds each under its canonical form.
    """
    parts = version.split(".")
    if not all(part.isdecimal() for part in parts):
        return version
    return ".".join(str(int(part)) for part in parts)


def version_key(version: str) -> tuple[int, ...]:
    """Order image versions numerically ("1.10.0" > "1.9.3")."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)

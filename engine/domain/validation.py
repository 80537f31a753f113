"""Checks on scale set models and policies (SPEC 2.3), as pure functions.

Each failure names the offending property (``target``) the way ARM's
``InvalidParameter`` errors do, so the HTTP API can pass it straight through.
"""

from __future__ import annotations

from engine.domain.model import ScaleSetSpec, UpgradePolicy

SUPPORTED_PLATFORM_IMAGES = frozenset(
    (publisher.lower(), offer.lower(), sku.lower())
    for publisher, offer, sku in [
        ("Canonical", "UbuntuServer", "16.04-LTS"),
        ("Canonical", "UbuntuServer", "18.04-LTS"),
        ("OpenLogic", "CentOS", "7.5"),
        ("CoreOS", "CoreOS", "Stable"),
        ("MicrosoftWindowsServer", "WindowsServer", "2012-R2-Datacenter"),
        ("MicrosoftWindowsServer", "WindowsServer", "2016-Datacenter"),
        ("MicrosoftWindowsServer", "WindowsServer", "2016-Datacenter-Smalldisk"),
        ("MicrosoftWindowsServer", "WindowsServer", "2016-Datacenter-with-Containers"),
        ("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter"),
        ("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter-Smalldisk"),
        ("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter-with-Containers"),
        (
            "MicrosoftWindowsServer",
            "WindowsServer",
            "Datacenter-Core-1903-with-Containers-smalldisk",
        ),
    ]
)
"""The platform images automatic OS upgrades support (table of the source documents)."""

MIN_AUTO_UPGRADE_API = "2018-10-01"
MAX_PAUSE_S = 600


class InvalidParameterError(ValueError):
    """A model or policy value is not allowed; ``target`` names the property."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"{target}: {message}")
        self.target = target
        self.message = message


def validate_policy(policy: UpgradePolicy) -> None:
    """Check the ranges of SPEC 2.3's policy table."""
    prefix = "properties.upgradePolicy"
    if policy.mode not in ("Automatic", "Manual", "Rolling"):
        raise InvalidParameterError(f"{prefix}.mode", "must be Automatic, Manual or Rolling")
    rolling = policy.rolling
    ranges = [
        ("maxBatchInstancePercent", rolling.max_batch_instance_percent, 5, 100),
        ("maxUnhealthyInstancePercent", rolling.max_unhealthy_instance_percent, 5, 100),
        (
            "maxUnhealthyUpgradedInstancePercent",
            rolling.max_unhealthy_upgraded_instance_percent,
            0,
            100,
        ),
        ("pauseTimeBetweenBatches", rolling.pause_time_between_batches_s, 0, MAX_PAUSE_S),
    ]
    for name, value, low, high in ranges:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidParameterError(
                f"{prefix}.rollingUpgradePolicy.{name}", f"must be between {low} and {high}"
            )


def validate_scale_set(spec: ScaleSetSpec) -> None:
    """Check a scale set model; with automatic upgrades on, also their requirements."""
    if not spec.name or not spec.location:
        raise InvalidParameterError("name" if not spec.name else "location", "is required")
    if not 0 <= spec.capacity <= 1000:
        raise InvalidParameterError("sku.capacity", "must be between 0 and 1000")
    if not spec.image.is_gallery and not all(spec.image.family):
        raise InvalidParameterError(
            "properties.virtualMachineProfile.storageProfile.imageReference",
            "needs publisher, offer and sku, or a gallery image id",
        )
    validate_policy(spec.policy)
    health = spec.health_extension
    if health is not None:
        _validate_health_extension(
            health.interval_s, health.number_of_probes, health.grace_period_s
        )
    if spec.policy.automatic.enable_automatic_os_upgrade:
        _validate_automatic(spec)


def _validate_health_extension(interval: int, probes: int, grace: int | None) -> None:
    target = "properties.virtualMachineProfile.extensionProfile.applicationHealth"
    if not 5 <= interval <= 60:
        raise InvalidParameterError(f"{target}.intervalInSeconds", "must be between 5 and 60")
    if not 1 <= probes <= 24:
        raise InvalidParameterError(f"{target}.numberOfProbes", "must be between 1 and 24")
    if grace is not None and not 0 <= grace <= 7200:
        raise InvalidParameterError(f"{target}.gracePeriod", "must be between 0 and 7200 seconds")


def _validate_automatic(spec: ScaleSetSpec) -> None:
    auto = "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
    image = "properties.virtualMachineProfile.storageProfile.imageReference"
    if spec.api_version < MIN_AUTO_UPGRADE_API:  # ISO dates order as strings
        raise InvalidParameterError("api-version", "automatic OS upgrades need 2018-10-01 or later")
    if not spec.image.is_gallery and spec.image.version.lower() != "latest":
        raise InvalidParameterError(
            f"{image}.version", "must be 'latest' for automatic OS upgrades"
        )
    if not spec.image.is_gallery and spec.image.family not in SUPPORTED_PLATFORM_IMAGES:
        raise InvalidParameterError(
            image, "automatic OS upgrades do not support this image (see the supported images)"
        )
    if spec.service_fabric:
        if spec.service_fabric_durability not in ("Silver", "Gold"):
            raise InvalidParameterError(
                "serviceFabric.durabilityLevel", "must be Silver or Gold for automatic OS upgrades"
            )
    elif spec.health_probe == (spec.health_extension is not None):
        raise InvalidParameterError(
            auto,
            "Automatic OS Upgrade is not supported for this Virtual Machine Scale Set because "
            + (
                "both a health probe and the health extension are configured; keep one"
                if spec.health_probe
                else "a health probe or health extension was not specified."
            ),
        )
    if spec.os_type == "Windows" and spec.enable_automatic_updates:
        raise InvalidParameterError(
            "properties.virtualMachineProfile.osProfile.windowsConfiguration.enableAutomaticUpdates",
            "must be false when automatic OS upgrades are enabled",
        )

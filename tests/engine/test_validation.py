"""The model checks of SPEC 2.3 as a pure function: each rule's boundary, target and message.

The HTTP API passes ``target`` and ``message`` through as ARM's ``InvalidParameter``
error, so both are part of the contract, and every range is checked on both sides.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from engine.domain.model import HealthExtension, ImageReference, RollingUpgradePolicy
from engine.domain.validation import InvalidParameterError, validate_scale_set
from tests.engine.harness import spec

HEALTH = "properties.virtualMachineProfile.extensionProfile.applicationHealth"
IMAGE = "properties.virtualMachineProfile.storageProfile.imageReference"
AUTO = "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
ROLLING = "properties.upgradePolicy.rollingUpgradePolicy"
WINDOWS_UPDATES = (
    "properties.virtualMachineProfile.osProfile.windowsConfiguration.enableAutomaticUpdates"
)
NO_SOURCE = (
    "Automatic OS Upgrade is not supported for this Virtual Machine Scale Set because "
    "a health probe or health extension was not specified."
)
BOTH_SOURCES = (
    "Automatic OS Upgrade is not supported for this Virtual Machine Scale Set because "
    "both a health probe and the health extension are configured; keep one"
)


def with_extension(**settings: Any) -> dict[str, Any]:
    return {"health_probe": False, "health_extension": HealthExtension(**settings)}


def rolling(**policy: Any) -> dict[str, Any]:
    return {"policy": replace(spec().policy, rolling=RollingUpgradePolicy(**policy))}


REFUSED = [
    (with_extension(interval_s=4), f"{HEALTH}.intervalInSeconds", "must be between 5 and 60"),
    (with_extension(interval_s=61), f"{HEALTH}.intervalInSeconds", "must be between 5 and 60"),
    (with_extension(number_of_probes=0), f"{HEALTH}.numberOfProbes", "must be between 1 and 24"),
    (with_extension(number_of_probes=25), f"{HEALTH}.numberOfProbes", "must be between 1 and 24"),
    (
        with_extension(grace_period_s=-1),
        f"{HEALTH}.gracePeriod",
        "must be between 0 and 7200 seconds",
    ),
    (
        with_extension(grace_period_s=7201),
        f"{HEALTH}.gracePeriod",
        "must be between 0 and 7200 seconds",
    ),
    (
        {"api_version": "2018-06-01"},
        "api-version",
        "automatic OS upgrades need 2018-10-01 or later",
    ),
    (
        {"image": ImageReference("Canonical", "UbuntuServer", "18.04-LTS", "1.0.0")},
        f"{IMAGE}.version",
        "must be 'latest' for automatic OS upgrades",
    ),
    (
        {"image": ImageReference("Someone", "Custom", "1")},
        IMAGE,
        "automatic OS upgrades do not support this image (see the supported images)",
    ),
    (
        {"service_fabric": True, "service_fabric_durability": "Bronze"},
        "serviceFabric.durabilityLevel",
        "must be Silver or Gold for automatic OS upgrades",
    ),
    ({"health_probe": False}, AUTO, NO_SOURCE),
    ({"health_extension": HealthExtension()}, AUTO, BOTH_SOURCES),
    (
        {"os_type": "Windows", "enable_automatic_updates": True},
        WINDOWS_UPDATES,
        "must be false when automatic OS upgrades are enabled",
    ),
    (rolling(max_batch_instance_percent=4), f"{ROLLING}.maxBatchInstancePercent",
     "must be between 5 and 100"),
    (rolling(max_unhealthy_instance_percent=101), f"{ROLLING}.maxUnhealthyInstancePercent",
     "must be between 5 and 100"),
    (rolling(max_unhealthy_upgraded_instance_percent=-1),
     f"{ROLLING}.maxUnhealthyUpgradedInstancePercent", "must be between 0 and 100"),
    (rolling(pause_time_between_batches_s=601), f"{ROLLING}.pauseTimeBetweenBatches",
     "must be between 0 and 600"),
    ({"capacity": 1001}, "sku.capacity", "must be between 0 and 1000"),
    ({"location": ""}, "location", "is required"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "target", "message"), REFUSED)
def test_each_rule_names_its_property_and_says_why(
    change: dict[str, Any], target: str, message: str
) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        validate_scale_set(replace(spec("v", 3), **change))
    assert (caught.value.target, caught.value.message) == (target, message)
    assert str(caught.value) == f"{target}: {message}"


ACCEPTED = [
    with_extension(interval_s=5),
    with_extension(interval_s=60),
    with_extension(number_of_probes=1),
    with_extension(number_of_probes=24),
    with_extension(grace_period_s=0),
    with_extension(grace_period_s=7200),
    {"api_version": "2018-10-01"},
    {"service_fabric": True, "service_fabric_durability": "Silver", "health_probe": False},
    {"service_fabric": True, "service_fabric_durability": "Gold", "health_probe": False},
    {"os_type": "Windows", "enable_automatic_updates": False},
    {"os_type": "Linux", "enable_automatic_updates": True},  # a Windows-only setting
    {"image": ImageReference(id="/subscriptions/s/resourceGroups/g/providers/x/images/app")},
    rolling(max_batch_instance_percent=100, max_unhealthy_upgraded_instance_percent=0),
    rolling(pause_time_between_batches_s=600),
    {"capacity": 0},
    {"capacity": 1000},
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_the_boundaries_themselves_are_allowed(change: dict[str, Any]) -> None:
    validate_scale_set(replace(spec("v", 3), **change))


def test_without_automatic_upgrades_their_requirements_do_not_apply() -> None:
    manual = spec("m", 3, automatic=False, probe=False, api_version="2017-12-01")
    validate_scale_set(replace(manual, image=ImageReference("Someone", "Custom", "1", "2.0.0")))

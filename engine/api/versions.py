"""Bodies follow the requested ``api-version``: what a version does not define is not sent.

``SINCE`` says, for each property we send that did not exist in every version we
accept (2018-10-01 on), the first Compute api-version whose OpenAPI defines it. Read
from Microsoft's published OpenAPI files (azure-rest-api-specs,
``specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/<version>/``,
through the models azure-mgmt-compute 30.6 generated from each of them); every version
from 2024-03-01 on defines all of them (``tests/api/openapi/`` holds that version's
files, and ``tests/api/test_openapi.py`` checks our bodies against it).
"""

from __future__ import annotations

from functools import cache
from typing import Any

JSON = dict[str, Any]
_ROLLING = "properties.upgradePolicy.rollingUpgradePolicy"
_AUTOMATIC = "properties.upgradePolicy.automaticOSUpgradePolicy"

SINCE: dict[str, dict[str, str]] = {
    "VirtualMachineScaleSet": {
        "etag": "2023-09-01",
        "properties.timeCreated": "2021-11-01",
        "properties.orchestrationMode": "2020-12-01",
        f"{_ROLLING}.prioritizeUnhealthyInstances": "2020-12-01",
        f"{_ROLLING}.enableCrossZoneUpgrade": "2020-12-01",
        f"{_ROLLING}.maxSurge": "2022-11-01",
        f"{_ROLLING}.rollbackFailedInstancesOnPolicyBreach": "2022-11-01",
        f"{_AUTOMATIC}.useRollingUpgradePolicy": "2022-03-01",
        f"{_AUTOMATIC}.osRollingUpgradeDeferral": "2023-09-01",
    },
    "VirtualMachineScaleSetVM": {
        "properties.timeCreated": "2023-07-01",
        "properties.storageProfile.imageReference.exactVersion": "2019-07-01",
    },
    "VirtualMachineScaleSetVMInstanceView": {},
    "VirtualMachineScaleSetInstanceView": {},
    "RollingUpgradeStatusInfo": {
        "properties.policy.prioritizeUnhealthyInstances": "2020-12-01",
        "properties.policy.enableCrossZoneUpgrade": "2020-12-01",
        "properties.policy.maxSurge": "2022-11-01",
        "properties.policy.rollbackFailedInstancesOnPolicyBreach": "2022-11-01",
    },
    "UpgradeOperationHistoricalStatusInfo": {
        "properties.targetImageReference.exactVersion": "2019-07-01",
    },
}
UPGRADE_VIEWS = ("RollingUpgradeStatusInfo", "UpgradeOperationHistoricalStatusInfo")


@cache  # on the hot read path
def complete(api_version: str, kinds: tuple[str, ...] = UPGRADE_VIEWS) -> bool:
    """True when ``api_version`` defines everything we send in ``kinds`` of bodies."""
    return all(api_version >= since for kind in kinds for since in SINCE[kind].values())


def for_version(body: JSON, kind: str, api_version: str) -> JSON:
    """``body`` (a ``kind`` resource) without the properties ``api_version`` lacks.

    Api-versions are ISO dates, so they compare as strings. The body is changed in
    place (it was rendered for this response) and returned.
    """
    for path, since in SINCE[kind].items():
        if api_version < since:
            _drop(body, path.split("."))
    return body


def _drop(body: JSON, parts: list[str]) -> None:
    for part in parts[:-1]:
        child = body.get(part)
        if not isinstance(child, dict):
            return
        body = child
    body.pop(parts[-1], None)

"""Valid request bodies of every writing endpoint (the seeds that the fuzz test mutates)."""

from __future__ import annotations

from typing import Any

from tests.api.live import image_path, vmss_path


def valid_bodies() -> dict[str, tuple[str, str, Any]]:
    """name -> (path, method, valid JSON body)."""
    scale_set = {
        "location": "westeurope",
        "sku": {"name": "Standard_D2s_v3", "capacity": 3},
        "zones": ["1", "2"],
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 20,
                    "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT0S",
                    "prioritizeUnhealthyInstances": True, "maxSurge": False,
                },
                "automaticOSUpgradePolicy": {
                    "enableAutomaticOSUpgrade": True, "disableAutomaticRollback": False,
                    "useRollingUpgradePolicy": True, "osRollingUpgradeDeferral": False,
                },
            },
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "Canonical", "offer": "UbuntuServer",
                                       "sku": "18.04-LTS", "version": "latest"},
                    "dataDisks": [{"lun": 0, "diskSizeGB": 64}],
                },
                "extensionProfile": {"extensions": [
                    {"name": "health", "properties": {
                        "publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux",
                        "settings": {"intervalInSeconds": 5, "numberOfProbes": 1}}},
                    {"name": "script", "properties": {
                        "publisher": "Microsoft.Azure.Extensions", "type": "CustomScript",
                        "settings": {"credentialExpiresAt": "2030-01-01T00:00:00Z"},
                        "provisionAfterExtensions": ["health"]}},
                ]},
            },
        },
    }  # fmt: skip
    patch = {"properties": {"upgradePolicy": {"rollingUpgradePolicy": {"maxSurge": True}}}}
    return {
        "put": (vmss_path("fuzz"), "PUT", scale_set),
        "put-new": (vmss_path("fuzz-new"), "PUT", scale_set),
        "patch": (vmss_path("fuzz"), "PATCH", patch),
        "publish": (
            image_path("3.0.0"),
            "PUT",
            {"properties": {"simulation": {"unhealthyInstancePercent": 5, "bootSeconds": 30}}},
        ),
        "health": (
            vmss_path("fuzz", "/virtualMachines/1/simulateHealth"),
            "POST",
            {"state": "Unhealthy"},
        ),
        "approve": (vmss_path("fuzz", "/approveRollingUpgrade"), "POST", {"instanceIds": ["0"]}),
        "advance": ("/admin/clock/advance", "POST", {"seconds": 1}),
    }

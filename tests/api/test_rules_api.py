"""Rules of the source documents over HTTP (issue 15): what a client of ARM sees."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.live import API, LOCATION, UBUNTU, LiveServer, vmss_path


def scale_set(capacity: int, *, automatic: bool = False, **extra: Any) -> dict[str, Any]:
    """A PUT body of an Ubuntu 18.04 scale set behind a health probe."""
    publisher, offer, sku = UBUNTU
    profile: dict[str, Any] = {
        "storageProfile": {
            "imageReference": {
                "publisher": publisher, "offer": offer, "sku": sku, "version": "latest",
            }
        },
        "networkProfile": {"healthProbe": {"id": "/probes/p"}},
        **extra,
    }  # fmt: skip
    return {
        "location": LOCATION,
        "sku": {"name": "Standard_D2s_v3", "capacity": capacity},
        "properties": {
            "upgradePolicy": {
                "mode": "Manual",
                "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": automatic},
            },
            "virtualMachineProfile": profile,
        },
    }


def test_starting_an_os_upgrade_on_an_empty_scale_set_succeeds(server: LiveServer) -> None:
    q = {"api-version": API}
    assert server.http.put(vmss_path("none"), params=q, json=scale_set(0)).status_code == 201
    server.publish("1.1.0")
    start = server.http.post(vmss_path("none", "/osRollingUpgrade"), params=q)
    assert start.status_code == 202, start.text
    server.advance(0)
    operation = server.http.get(start.headers["azure-asyncoperation"]).json()
    assert operation["status"] == "Succeeded"
    latest = server.http.get(vmss_path("none", "/rollingUpgrades/latest"), params=q).json()
    assert latest["properties"]["runningStatus"]["code"] == "Completed"
    assert set(latest["properties"]["progress"].values()) == {0}
    history = server.http.get(vmss_path("none", "/osUpgradeHistory"), params=q).json()["value"]
    assert [h["properties"]["targetImageReference"]["version"] for h in history] == ["1.1.0"]


def fabric(type_handler_version: str) -> dict[str, Any]:
    """The extension profile of a Service Fabric node type (Silver durability)."""
    return {
        "extensionProfile": {
            "extensions": [
                {
                    "name": "fabric",
                    "properties": {
                        "publisher": "Microsoft.Azure.ServiceFabric",
                        "type": "ServiceFabricLinuxNode",
                        "typeHandlerVersion": type_handler_version,
                        "settings": {"durabilityLevel": "Silver"},
                    },
                }
            ]
        }
    }


@pytest.mark.parametrize(("version", "status"), [("1.0", 400), ("1.1", 201), ("1.10", 201)])
def test_service_fabric_needs_type_handler_version_1_1_for_automatic_upgrades(
    server: LiveServer, version: str, status: int
) -> None:
    q = {"api-version": API}
    body = scale_set(5, automatic=True, **fabric(version))
    response = server.http.put(vmss_path("sf"), params=q, json=body)
    assert response.status_code == status, response.text
    if status == 400:
        error = response.json()["error"]
        assert error["code"] == "InvalidParameter"
        assert error["target"].endswith("typeHandlerVersion")
    manual = scale_set(5, **fabric(version))  # only automatic upgrades need it
    assert server.http.put(vmss_path("sf-manual"), params=q, json=manual).status_code == 201

"""Every response body of a tour of the API fits Microsoft's published Compute OpenAPI.

The schemas are the 2024-03-01 files vendored under ``tests/api/openapi/`` (source named
in its README); requests are sent with that api-version. The checker is strict: a
property the schema does not define is an error, so a misspelt name would fail here.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.errors_bodies import valid_bodies
from tests.api.live import LOCATION, RG, SUB, LiveServer, image_path, vmss_path
from tests.api.openapi_schema import OpenApi

VERSION = "2024-03-01"
SPEC = OpenApi()
USER_IDENTITY = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id1"
)


def checked(server: LiveServer, method: str, path: str, status: int, **kwargs: Any) -> Any:
    """Send the request; assert its status and that its body fits the operation's schema."""
    response = server.http.request(method, path, params={"api-version": VERSION}, **kwargs)
    assert response.status_code == status, response.text
    found = SPEC.response(method, urlsplit(str(response.url)).path, status)
    if found is None:
        assert not response.content
        return None
    body = response.json()
    problems = SPEC.errors(body, *found)
    assert problems == [], f"{method} {path}: {problems}"
    return body


def windows_body() -> dict[str, Any]:
    """A regional Windows set with a probe, tags and both kinds of identity."""
    _, _, linux = valid_bodies()["put"]
    body = copy.deepcopy(linux)
    body.pop("zones")
    body["tags"] = {"env": "prod"}
    body["identity"] = {
        "type": "SystemAssigned, UserAssigned",
        "userAssignedIdentities": {USER_IDENTITY: {}},
    }
    profile = body["properties"]["virtualMachineProfile"]
    profile["storageProfile"]["imageReference"].update(
        publisher="MicrosoftWindowsServer", offer="WindowsServer", sku="2019-Datacenter"
    )
    profile["osProfile"] = {"windowsConfiguration": {"enableAutomaticUpdates": False}}
    profile.pop("extensionProfile")
    profile["networkProfile"] = {"healthProbe": {"id": "/subscriptions/s/probes/p"}}
    return body


def test_every_response_body_fits_the_published_schema(server: LiveServer) -> None:
    server.publish_image("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter", "1.0.0")
    _, _, linux = valid_bodies()["put"]
    checked(server, "PUT", vmss_path("lin"), 201, json=linux)
    checked(server, "PUT", vmss_path("win"), 201, json=windows_body())
    checked(server, "PUT", vmss_path("win"), 200, json=windows_body())
    checked(server, "PATCH", vmss_path("win"), 200, json={"tags": {"env": "test"}})
    server.publish("1.1.0", bootSeconds=30)
    checked(server, "POST", vmss_path("lin", "/osRollingUpgrade"), 202)
    server.advance(3600)
    checked(server, "POST", vmss_path("lin", "/reimage"), 202, json={"instanceIds": ["0"]})
    checked(server, "POST", vmss_path("lin", "/virtualMachines/1/reimage"), 202)
    checked(server, "POST", vmss_path("lin", "/manualupgrade"), 202, json={"instanceIds": ["*"]})

    reads = [
        vmss_path("lin"),
        vmss_path("win"),
        vmss_path("lin").removesuffix("/lin"),
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachineScaleSets",
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{LOCATION}/virtualMachineScaleSets",
        vmss_path("lin", "/instanceView"),
        vmss_path("lin", "/skus"),
        vmss_path("lin", "/virtualMachines"),
        vmss_path("lin", "/virtualMachines/2"),
        vmss_path("lin", "/virtualMachines/2/instanceView"),
        vmss_path("win", "/virtualMachines/0/instanceView"),
        vmss_path("lin", "/rollingUpgrades/latest"),
        vmss_path("lin", "/osUpgradeHistory"),
        image_path(),
        image_path("1.1.0"),
    ]
    for path in reads:
        checked(server, "GET", path, 200)
    for path in (vmss_path("lin", "/virtualMachines"), vmss_path("lin", "/virtualMachines/2")):
        response = server.http.get(path, params={"api-version": VERSION, "$expand": "instanceView"})
        found = SPEC.response("GET", path, 200)
        assert found is not None and SPEC.errors(response.json(), *found) == []


def test_the_checker_finds_invented_names_wrong_types_and_enums(server: LiveServer) -> None:
    _, _, linux = valid_bodies()["put"]
    good = checked(server, "PUT", vmss_path("lin"), 201, json=linux)
    schema = SPEC.response("GET", vmss_path("lin"), 200)
    assert schema is not None
    bad = copy.deepcopy(good)
    bad["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxSurgee"] = True
    bad["properties"]["upgradePolicy"]["mode"] = "Sometimes"
    bad["sku"]["capacity"] = "3"
    del bad["location"]
    problems = SPEC.errors(bad, *schema)
    assert len(problems) == 4, problems
    assert any("maxSurgee" in p for p in problems)


@pytest.mark.parametrize("suffix", ["", "/virtualMachines/0"])
def test_old_api_versions_get_what_they_define(server: LiveServer, suffix: str) -> None:
    """Sent at 2024-03-01 the bodies fit; the properties newer than an old version go."""
    _, _, linux = valid_bodies()["put"]
    checked(server, "PUT", vmss_path("lin"), 201, json=linux)
    new = checked(server, "GET", vmss_path("lin", suffix), 200)
    old = server.http.get(vmss_path("lin", suffix), params={"api-version": "2019-03-01"}).json()
    assert "timeCreated" in new["properties"]
    assert "timeCreated" not in old["properties"]

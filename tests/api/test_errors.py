"""ARM errors: shapes, status codes, api-version, validation; refused requests write nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, LOCATION, UBUNTU, LiveServer, image_path, vmss_path


def body(**policy: Any) -> dict[str, Any]:
    """A valid PUT body with automatic upgrades; ``policy`` replaces upgradePolicy keys."""
    publisher, offer, sku = UBUNTU
    upgrade = {"mode": "Rolling", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
    upgrade.update(policy)
    return {
        "location": LOCATION,
        "sku": {"name": "Standard_D2s_v3", "capacity": 4},
        "properties": {
            "upgradePolicy": upgrade,
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {
                        "publisher": publisher, "offer": offer, "sku": sku, "version": "latest",
                    }
                },
                "networkProfile": {"healthProbe": {"id": "/probes/p"}},
            },
        },
    }  # fmt: skip


def refused(server: LiveServer, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """Send a request that must be refused: no write, no Retry-After, an ARM error body."""
    server.advance(0)  # the engine has finished reacting to earlier requests
    before = server.head()
    kwargs.setdefault("params", {"api-version": API})
    response = server.http.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert "retry-after" not in response.headers
    assert response.headers["x-ms-request-id"]
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "target", "details"}
    assert server.head() == before, "a refused request wrote to the log"
    return {"status": response.status_code, **error}


def test_put_creates_then_updates(server: LiveServer) -> None:
    first = server.http.put(vmss_path("web"), params={"api-version": API}, json=body())
    again = server.http.put(vmss_path("web"), params={"api-version": API}, json=body())
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["properties"]["provisioningState"] == "Succeeded"


@pytest.mark.parametrize(
    ("policy", "target"),
    [
        ({"rollingUpgradePolicy": {"maxBatchInstancePercent": 4}}, "maxBatchInstancePercent"),
        ({"rollingUpgradePolicy": {"maxUnhealthyInstancePercent": 101}}, "maxUnhealthyInstance"),
        ({"rollingUpgradePolicy": {"maxUnhealthyUpgradedInstancePercent": -1}}, "Upgraded"),
        ({"rollingUpgradePolicy": {"pauseTimeBetweenBatches": "PT2H"}}, "pauseTimeBetween"),
        ({"rollingUpgradePolicy": {"pauseTimeBetweenBatches": "-PT1S"}}, "pauseTimeBetween"),
        ({"rollingUpgradePolicy": {"maxSurge": "sometimes"}}, "maxSurge"),
        ({"rollingUpgradePolicy": {"maxBatchInstancePercent": "20"}}, "maxBatchInstancePercent"),
        ({"mode": "Sideways"}, "upgradePolicy.mode"),
        ({"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": 1}}, "enableAutomaticOS"),
    ],
)
def test_invalid_policy_names_the_property(
    server: LiveServer, policy: dict[str, Any], target: str
) -> None:
    error = refused(server, "PUT", vmss_path("web"), json=body(**policy))
    assert (error["status"], error["code"]) == (400, "InvalidParameter")
    assert target in error["target"]


def test_pause_time_message_is_azures(server: LiveServer) -> None:
    policy = {"rollingUpgradePolicy": {"pauseTimeBetweenBatches": "PT2H"}}
    error = refused(server, "PUT", vmss_path("web"), json=body(**policy))
    assert "The pause time PT2H provided is invalid" in error["message"]


def test_automatic_upgrades_need_a_health_source_and_latest(server: LiveServer) -> None:
    no_probe = body()
    del no_probe["properties"]["virtualMachineProfile"]["networkProfile"]
    error = refused(server, "PUT", vmss_path("web"), json=no_probe)
    assert "health probe or health extension was not specified" in error["message"]
    pinned = body()
    pinned["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = (
        "1.0.0"
    )
    assert refused(server, "PUT", vmss_path("web"), json=pinned)["target"].endswith("version")
    too_old = {"api-version": "2018-06-01"}
    old_api = refused(server, "PUT", vmss_path("web"), json=body(), params=too_old)
    assert old_api["code"] == "InvalidApiVersionParameter"


def test_api_version_is_required_and_must_be_known(server: LiveServer) -> None:
    missing = refused(server, "GET", vmss_path("web"), params={})
    assert (missing["status"], missing["code"]) == (400, "MissingApiVersionParameter")
    unknown = refused(server, "GET", vmss_path("web"), params={"api-version": "2099-01-01"})
    assert (unknown["status"], unknown["code"]) == (400, "InvalidApiVersionParameter")


def test_missing_things_are_404(server: LiveServer) -> None:
    for suffix in ("", "/rollingUpgrades/latest", "/osUpgradeHistory", "/virtualMachines"):
        error = refused(server, "GET", vmss_path("ghost", suffix))
        assert (error["status"], error["code"]) == (404, "ResourceNotFound")
    assert refused(server, "POST", vmss_path("ghost", "/osRollingUpgrade"))["status"] == 404
    assert refused(server, "PATCH", vmss_path("ghost"), json={})["status"] == 404
    assert refused(server, "GET", "/no/such/endpoint")["code"] == "ResourceNotFound"
    delete = server.http.delete(vmss_path("ghost"), params={"api-version": API})
    assert delete.status_code == 204


def test_conflicts_are_409(server: LiveServer) -> None:
    server.http.put(vmss_path("web"), params={"api-version": API}, json=body())
    cancel = refused(server, "POST", vmss_path("web", "/rollingUpgrades/cancel"))
    assert (cancel["status"], cancel["code"]) == (409, "OperationNotAllowed")
    assert cancel["message"] == "There is no ongoing Rolling Upgrade to cancel."
    again = refused(server, "PUT", image_path("1.0.0"))
    assert (again["status"], again["code"]) == (409, "OperationNotAllowed")
    nothing_to_approve = refused(server, "POST", vmss_path("web", "/approveRollingUpgrade"))
    assert nothing_to_approve["status"] == 409


def test_bad_bodies_of_the_other_endpoints(server: LiveServer) -> None:
    server.http.put(vmss_path("web"), params={"api-version": API}, json=body())
    health = vmss_path("web", "/virtualMachines/0/simulateHealth")
    assert refused(server, "POST", health, json={"state": "Sleepy"})["target"] == "state"
    assert refused(server, "POST", vmss_path("web", "/virtualMachines/9/simulateHealth"),
                   json={"state": "Healthy"})["status"] == 404  # fmt: skip
    publish = {"properties": {"simulation": {"unhealthyInstancePercent": 101}}}
    error = refused(server, "PUT", image_path("2.0.0"), json=publish)
    assert error["target"] == "properties.simulation.unhealthyInstancePercent"
    assert refused(server, "PUT", image_path("two"))["target"] == "version"
    for seconds in (-1, "10", None, 1e300):
        error = refused(server, "POST", "/admin/clock/advance", json={"seconds": seconds})
        assert error["target"] == "seconds"
    assert refused(server, "PUT", vmss_path("web"), content=b"{not json")["code"] == (
        "InvalidRequestContent"
    )
    moved = body()
    moved["location"] = "northeurope"
    assert refused(server, "PUT", vmss_path("web"), json=moved)["target"] == "location"


def test_operation_status_resources(server: LiveServer) -> None:
    server.http.put(vmss_path("web"), params={"api-version": API}, json=body())
    server.publish("1.1.0", bootSeconds=60)
    start = server.http.post(vmss_path("web", "/osRollingUpgrade"), params={"api-version": API})
    assert start.status_code == 202
    status_url, monitor_url = start.headers["azure-asyncoperation"], start.headers["location"]
    assert status_url.startswith(server.url) and "monitor=true" in monitor_url
    running = server.http.get(status_url).json()
    operation = status_url.split("/")[-1].split("?")[0]
    assert (running["status"], running["name"]) == ("InProgress", operation)
    assert server.http.get(monitor_url).status_code == 202
    server.advance(3600)
    finished = server.http.get(status_url).json()
    assert finished["status"] == "Succeeded" and finished["endTime"] >= finished["startTime"]
    assert server.http.get(monitor_url).status_code == 200
    other = status_url.replace("0001/providers", "0002/providers")  # another subscription
    assert server.http.get(other).status_code in (403, 404)


def test_oversized_bodies_are_refused_unread(server: LiveServer) -> None:
    huge = b"[" * 300_000
    assert refused(server, "PUT", vmss_path("web"), content=huge)["code"] == (
        "InvalidRequestContent"
    )

    def endless() -> Iterator[bytes]:  # chunked, no Content-Length
        for _ in range(100):
            yield b" " * 10_000

    error = refused(server, "PUT", vmss_path("web"), content=endless())
    assert "exceeds" in error["message"]


def test_a_get_body_put_back_changes_nothing(server: LiveServer) -> None:
    """The rendered model parses back to the same model (PATCH relies on it)."""
    path, _, full = valid_bodies()["put"]
    q = {"api-version": API}
    assert server.http.put(path, params=q, json=full).status_code == 201
    first = server.http.get(path, params=q).json()
    assert server.http.put(path, params=q, json=first).status_code == 200
    assert server.http.get(path, params=q).json() == first
    extensions = first["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert [e["properties"]["type"] for e in extensions] == [
        "ApplicationHealthLinux",
        "CustomScript",
    ]


def test_windows_automatic_updates_are_turned_off_and_cannot_be_on(server: LiveServer) -> None:
    windows = body()
    profile = windows["properties"]["virtualMachineProfile"]
    profile["storageProfile"]["imageReference"].update(
        publisher="MicrosoftWindowsServer", offer="WindowsServer", sku="2019-Datacenter"
    )
    server.publish_image("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter", "1.0.0")
    profile["osProfile"] = {"windowsConfiguration": {"enableAutomaticUpdates": True}}
    error = refused(server, "PUT", vmss_path("win"), json=windows)
    assert error["target"].endswith("windowsConfiguration.enableAutomaticUpdates")
    profile["osProfile"] = {"windowsConfiguration": {}}
    created = server.http.put(vmss_path("win"), params={"api-version": API}, json=windows)
    assert created.status_code == 201
    config = created.json()["properties"]["virtualMachineProfile"]["osProfile"]
    assert config["windowsConfiguration"]["enableAutomaticUpdates"] is False


def test_fixed_path_segments_match_in_any_case(server: LiveServer) -> None:
    q = {"api-version": API}
    assert server.http.put(vmss_path("Web"), params=q, json=body()).status_code == 201
    lower = (
        vmss_path("Web")
        .replace("resourceGroups", "resourcegroups")
        .replace("virtualMachineScaleSets", "VIRTUALMACHINESCALESETS")
    )
    got = server.http.get(lower, params=q)
    assert got.status_code == 200 and got.json()["name"] == "Web"
    latest = server.http.get(lower + "/rollingupgrades/LATEST", params=q)  # routed, no upgrade
    assert "entity was not found" in latest.json()["error"]["message"]
    assert refused(server, "GET", lower + "/nothing")["code"] == "ResourceNotFound"

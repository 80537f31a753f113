"""The hot-read fast path answers exactly what the routed handlers answer, behind auth."""

from __future__ import annotations

from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, OTHER_SUB, LiveServer, client, vmss_path


def test_fast_path_and_router_agree(server: LiveServer) -> None:
    path, _, body = valid_bodies()["put"]
    assert server.http.put(path, params={"api-version": API}, json=body).status_code == 201
    server.publish("1.1.0", bootSeconds=60)
    assert server.http.post(vmss_path("fuzz", "/osRollingUpgrade"), params={"api-version": API})
    server.advance(30)  # mid-upgrade: progress counts are moving
    for suffix in ("/rollingUpgrades/latest", "/osUpgradeHistory"):
        fast = server.http.get(vmss_path("fuzz", suffix) + f"?api-version={API}")
        routed = server.http.get(vmss_path("fuzz", suffix) + f"?api-version={API}&routed=1")
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content
        assert fast.headers["content-type"] == "application/json"
        assert fast.headers["x-ms-request-id"]


def test_fast_path_is_behind_auth(server: LiveServer) -> None:
    path, _, body = valid_bodies()["put"]
    server.http.put(path, params={"api-version": API}, json=body)
    server.http.post(vmss_path("fuzz", "/osRollingUpgrade"), params={"api-version": API})
    latest = vmss_path("fuzz", "/rollingUpgrades/latest") + f"?api-version={API}"
    with client(server.url, {}) as anonymous:
        assert anonymous.get(latest).status_code == 401
    with client(server.url, {"Authorization": "Bearer limited-token"}) as limited:
        assert limited.get(latest).status_code == 403
        other = vmss_path("fuzz", "/rollingUpgrades/latest", sub=OTHER_SUB)
        assert limited.get(other + f"?api-version={API}").status_code == 404

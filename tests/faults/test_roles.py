"""Roles: platform-wide actions need a platform token; a subscription token gets 403.

The image catalog is shared by every subscription, so a token limited to subscription A
must not publish into it: B's automatic upgrades would pick A's version up. Each route
declares its role in the route table; these tests walk that table, so a platform route
added later is covered without touching them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from engine.api.app import Resource, routes
from engine.api.auth import Role, Token
from tests.api.live import (
    API,
    OTHER_SUB,
    SUB,
    TOKEN,
    LiveServer,
    client,
    image_path,
    live_server,
    vmss_path,
)
from tests.api.test_errors import body

LIMITED = "token-of-sub-a"  # limited to SUB, the subscription of every test path
PLATFORM_ROUTES = {
    ("PUT", image_path("2.0.0")),
    ("GET", "/admin/clock"),
    ("POST", "/admin/clock/advance"),
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A platform token, a token of SUB (``LIMITED``) and one of another subscription."""
    tokens = (
        Token(TOKEN),
        Token(LIMITED, frozenset({SUB})),
        Token("limited-token", frozenset({OTHER_SUB})),
    )
    with live_server(tmp_path, tokens=tokens) as live:
        live.publish("1.0.0")
        yield live


def _table_routes(server: LiveServer) -> list[tuple[str, str, Role]]:
    """(method, template, role) of every route in the table."""
    assert server.server.service is not None
    found = []
    for route in routes(server.server.service):
        assert isinstance(route, Route) and isinstance(route.app, Resource)
        for method, endpoint in route.app.handlers.items():
            found.append((method, route.path, endpoint.role))
    return found


def test_every_route_declares_a_role_and_the_platform_ones_are_the_catalog_and_clock(
    server: LiveServer,
) -> None:
    platform = {(m, p) for m, p, role in _table_routes(server) if role is Role.PLATFORM}
    assert {m for m, _ in platform} == {"PUT", "GET", "POST"}
    assert {p.rsplit("/", 1)[-1] for _, p in platform} == {"{version}", "clock", "advance"}
    assert all(r in (Role.PLATFORM, Role.SUBSCRIPTION) for *_, r in _table_routes(server))


def test_a_subscription_token_gets_403_on_every_platform_route_and_nothing_is_written(
    server: LiveServer,
) -> None:
    server.advance(0)
    before = server.head()
    with client(server.url, {"Authorization": f"Bearer {LIMITED}"}) as limited:
        for method, path in sorted(PLATFORM_ROUTES):
            json = {"seconds": 3600} if path.endswith("advance") else None
            response = limited.request(method, path, params={"api-version": API}, json=json)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "AuthorizationFailed"
            assert "retry-after" not in response.headers
    assert server.head() == before, "a refused platform action wrote to the log"
    catalog = server.http.get(image_path(), params={"api-version": API}).json()
    assert [v["name"] for v in catalog] == ["1.0.0"]  # 2.0.0 was not published
    clock = server.http.get("/admin/clock").json()["now"]
    assert clock.startswith("2026-03-01T08:00")  # the clock did not move


def test_a_platform_token_may_publish_and_move_the_clock(server: LiveServer) -> None:
    published = server.http.put(image_path("2.0.0"), params={"api-version": API})
    assert published.status_code == 201, published.text
    advanced = server.http.post("/admin/clock/advance", json={"seconds": 60})
    assert advanced.status_code == 200 and advanced.json()["now"].startswith("2026-03-01T08:01")


def test_a_subscription_token_reads_the_catalog_and_drives_its_own_sets(
    server: LiveServer,
) -> None:
    q = {"api-version": API}
    with client(server.url, {"Authorization": f"Bearer {LIMITED}"}) as limited:
        listed = limited.get(image_path(), params=q)
        one = limited.get(image_path("1.0.0"), params=q)
        created = limited.put(vmss_path("web"), params=q, json=body())
        other = limited.get(vmss_path("web", sub=OTHER_SUB), params=q)
    assert listed.status_code == 200 and [v["name"] for v in listed.json()] == ["1.0.0"]
    assert one.status_code == 200
    assert created.status_code == 201, created.text
    assert other.status_code == 403  # another subscription's sets stay out of reach


def test_a_version_refused_to_subscription_a_never_reaches_the_sets_of_b(
    server: LiveServer,
) -> None:
    """The attack of the issue: A publishes a 100 % unhealthy version; B's sets fault."""
    q = {"api-version": API}
    latest_of_b = vmss_path("b", "/rollingUpgrades/latest", sub=OTHER_SUB)
    with client(server.url, {"Authorization": "Bearer limited-token"}) as tenant_b:
        assert tenant_b.put(vmss_path("b", sub=OTHER_SUB), params=q, json=body()).is_success
        server.advance(4 * 3600)  # B's first automatic rollout window has passed
        before = tenant_b.get(latest_of_b, params=q)
        bad = {"properties": {"simulation": {"unhealthyInstancePercent": 100}}}
        with client(server.url, {"Authorization": f"Bearer {LIMITED}"}) as tenant_a:
            refused = tenant_a.put(image_path("6.6.6"), params=q, json=bad)
        server.advance(2 * 3600)  # past any new-version delay
        after = tenant_b.get(latest_of_b, params=q)
    assert refused.status_code == 403
    assert after.status_code == before.status_code and after.text == before.text
    assert "6.6.6" not in after.text  # no upgrade of B's set ever targeted A's version

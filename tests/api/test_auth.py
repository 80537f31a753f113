"""Bearer tokens: missing or unknown -> 401, limited to other subscriptions -> 403."""

from __future__ import annotations

import httpx

from tests.api.live import API, OTHER_SUB, LiveServer, client, vmss_path


def get(server: LiveServer, path: str, headers: dict[str, str]) -> httpx.Response:
    with client(server.url, headers) as http:
        return http.get(path, params={"api-version": API})


def test_missing_token_is_401(server: LiveServer) -> None:
    response = get(server, vmss_path("web"), {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationFailed"
    assert "retry-after" not in response.headers


def test_unknown_token_is_401(server: LiveServer) -> None:
    for header in ("Bearer wrong-token", "Basic dGVzdA==", "Bearer", "test-token"):
        response = get(server, vmss_path("web"), {"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_token_limited_to_other_subscriptions_is_403(server: LiveServer) -> None:
    limited = {"Authorization": "Bearer limited-token"}
    response = get(server, vmss_path("web"), limited)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "AuthorizationFailed"
    assert get(server, "/admin/clock", limited).status_code == 403
    allowed = get(server, vmss_path("web", sub=OTHER_SUB), limited)
    assert allowed.status_code == 404  # authorised; the scale set just does not exist


def test_every_endpoint_requires_a_token(server: LiveServer) -> None:
    with client(server.url, {}) as http:
        for method, path in [
            ("GET", "/admin/clock"),
            ("POST", "/admin/clock/advance"),
            ("PUT", vmss_path("web")),
            ("POST", vmss_path("web", "/osRollingUpgrade")),
            ("GET", "/anything/else"),
        ]:
            assert http.request(method, path).status_code == 401, path

"""Unicode and confusable resource names through the real API: stored and read back under
ARM's case-insensitivity (simple per-character upper-casing), or a 400 naming the
segment; never a 500, never an alias ARM would not make."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.domain.model import scale_set_key
from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, SUB, LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        yield live


def _body() -> Any:
    return valid_bodies()["put"][2]


def _path(rg: str, name: str = "web", suffix: str = "") -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute"
        f"/virtualMachineScaleSets/{name}{suffix}"
    )


def _put(server: LiveServer, rg: str, name: str = "web") -> httpx.Response:
    return server.http.put(_path(rg, name), params={"api-version": API}, json=_body())


def _get(server: LiveServer, rg: str, name: str = "web", suffix: str = "") -> httpx.Response:
    return server.http.get(_path(rg, name, suffix), params={"api-version": API})


def test_non_ascii_resource_group_is_stored_and_read_back(server: LiveServer) -> None:
    for rg in ("grüße", "rg-\u0663\u0664\u0665", "Ελλάδα", "日本"):
        created = _put(server, rg)
        assert created.status_code == 201, (rg, created.text)
        assert f"/resourceGroups/{rg}/" in created.json()["id"]
        got = _get(server, rg)
        assert got.status_code == 200, (rg, got.text)
        assert got.json()["id"] == created.json()["id"]
        listed = server.http.get(_path(rg, "")[:-1], params={"api-version": API})
        assert listed.status_code == 200, listed.text
        assert [s["name"] for s in listed.json()["value"]] == ["web"]
        for suffix in ("/osUpgradeHistory", "/virtualMachines"):
            assert _get(server, rg, suffix=suffix).status_code == 200


def test_case_insensitive_like_arm_per_character_upper_casing(server: LiveServer) -> None:
    assert _put(server, "grüße").status_code == 201
    same = _get(server, "GRÜßE")  # ü and Ü are one letter to ARM
    assert same.status_code == 200, same.text
    assert _put(server, "GRÜßE").status_code == 200  # an update, not a second set
    # ß has no simple upper-case mapping: 'GRÜSSE' is another resource group to ARM
    assert _get(server, "GRÜSSE").status_code == 404
    assert _put(server, "GRÜSSE").status_code == 201


def test_kelvin_sign_does_not_alias_k(server: LiveServer) -> None:
    assert _put(server, "kelvin").status_code == 201
    assert _get(server, "\u212aelvin").status_code == 404
    created = _put(server, "\u212aelvin")
    assert created.status_code == 201, created.text
    assert _get(server, "KELVIN").json()["id"] != created.json()["id"]


@pytest.mark.parametrize(
    ("rg", "name", "target"),
    [
        ("r" * 91, "web", "resourceGroupName"),
        ("rg.", "web", "resourceGroupName"),  # ARM: must not end in a period
        ("rg²", "web", "resourceGroupName"),  # '²' is a number, not a .NET LetterOrDigit
        ("gru\u0308sse", "web", "resourceGroupName"),  # a combining mark (decomposed ü)
        ("rg\U0001d400", "web", "resourceGroupName"),  # outside the BMP: two UTF-16 units
        ("rg", "w" * 65, "name"),
        ("rg", "web-", "name"),
        ("rg", "web.", "name"),
        ("rg", "wéb", "name"),
    ],
)
def test_names_arm_refuses_are_a_400_naming_the_segment(
    server: LiveServer, rg: str, name: str, target: str
) -> None:
    refused = _put(server, rg, name)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["target"] == target
    assert _get(server, rg, name).status_code in (400, 404)


def test_ninety_character_group_and_sixty_four_character_name_are_accepted(
    server: LiveServer,
) -> None:
    rg, name = "ü" * 89 + "x", "n" * 63 + "_"
    assert _put(server, rg, name).status_code == 201
    assert _get(server, rg.upper(), name.upper()).status_code == 200


def test_ascii_keys_are_unchanged_so_existing_logs_still_load() -> None:
    assert scale_set_key("Sub-1", "RG.(x)_y", "Web-01") == "sub-1/rg.(x)_y/web-01"
    assert scale_set_key("s", "grüße", "w") == scale_set_key("s", "GRÜßE", "W")
    assert scale_set_key("s", "grüße", "w") != scale_set_key("s", "grüsse", "w")
    assert scale_set_key("s", "\u212a", "w") != scale_set_key("s", "k", "w")
    # dotless i and long s upper-case to ASCII letters; they stay distinct from them
    assert scale_set_key("s", "\u0131", "w") != scale_set_key("s", "i", "w")
    assert scale_set_key("s", "\u017f", "w") != scale_set_key("s", "s", "w")


def test_history_next_link_of_a_unicode_resource_group_is_a_working_url(
    tmp_path: Path,
) -> None:
    with live_server(tmp_path, history_page_size=1) as server:
        server.publish("1.0.0")
        rg = "grüße(1)"
        assert _put(server, rg).status_code == 201
        for version in ("1.1.0", "1.2.0"):
            server.publish(version, bootSeconds=10)
            started = server.http.post(
                _path(rg, suffix="/osRollingUpgrade"), params={"api-version": API}
            )
            assert started.status_code == 202, started.text
            server.advance(3600)
        page = _get(server, rg, suffix="/osUpgradeHistory").json()
        link = page["nextLink"]
        assert link.isascii() and "/resourceGroups/gr%C3%BC%C3%9Fe(1)/" in link
        following = server.http.get(link)
        assert following.status_code == 200, following.text
        assert len(following.json()["value"]) == 1
        for spelled in (rg, "GRÜßE(1)"):
            latest = _get(server, spelled, suffix="/rollingUpgrades/latest")
            assert latest.status_code == 200, latest.text
            assert latest.json()["properties"]["runningStatus"]["code"] == "Completed"

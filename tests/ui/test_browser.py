"""The dashboard in a real headless browser, against a real server on a virtual clock.

One rollout of a 10-instance set, driven by ``POST /admin/clock/advance``: the page
follows it live, the slider takes the set back to RollingForward and forward to
Completed, and a link copied from the address bar shows the same moment in a fresh
browser context. Screenshots of the run go to ``docs/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.live import API, RG, SUB, TOKEN, LiveServer, live_server, vmss_path
from tests.ui.conftest import SCREENSHOTS

VIEWPORT = {"width": 1100, "height": 760}
WAIT_MS = 10_000


def rolling_set(capacity: int) -> dict[str, Any]:
    """A Rolling-mode set on Ubuntu 18.04 latest, upgraded only when asked."""
    return {
        "location": "westeurope",
        "sku": {"name": "Standard_D2s_v3", "capacity": capacity},
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 20,
                    "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT0S",
                },
                "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": False},
            },
            "virtualMachineProfile": {
                "storageProfile": {"imageReference": {
                    "publisher": "Canonical", "offer": "UbuntuServer", "sku": "18.04-LTS",
                    "version": "latest"}},
                "networkProfile": {"healthProbe": {"id": "/probe"}},
            },
        },
    }  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A live server with four sets on 1.0.0 (``web`` has 10 instances), 1.1.0 published."""
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        for name, capacity in (("web", 10), ("api", 6), ("batch", 4), ("spare", 3)):
            body = rolling_set(capacity)
            response = live.http.put(vmss_path(name), params={"api-version": API}, json=body)
            assert response.status_code == 201, response.text
        live.publish("1.1.0", bootSeconds=60)
        yield live


def post(server: LiveServer, name: str, action: str) -> None:
    response = server.http.post(vmss_path(name, action), params={"api-version": API})
    assert response.status_code == 202, response.text


def latest_code(server: LiveServer) -> str:
    response = server.http.get(
        vmss_path("web", "/rollingUpgrades/latest"), params={"api-version": API}
    )
    assert response.status_code == 200, response.text
    code: str = response.json()["properties"]["runningStatus"]["code"]
    return code


def open_with_token(page: Any, url: str) -> None:
    """Load ``url``, answer the token form, wait for the first view."""
    page.goto(url)
    page.locator("#token").fill(TOKEN)
    page.locator("#token-form button").click()
    page.wait_for_function("document.body.dataset.at !== undefined", timeout=WAIT_MS)


def test_dashboard_follows_a_rollout_live_and_travels_in_time(
    server: LiveServer, browser: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415 - optional dependency

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # The page loads; its data only after the token.
    open_with_token(page, f"{server.url}/ui/")
    expect(page.locator("#count-NoUpgrade")).to_have_text("4", timeout=WAIT_MS)
    expect(page.locator("#phase-idle")).to_have_text("23")

    # Live: start the upgrade and move the clock; the open page follows without reloading.
    page.locator("#fleet-table a", has_text=f"{SUB}/{RG}/web".lower()).click()
    expect(page.locator("#view h1")).to_contain_text("/web")
    page.evaluate("window.notReloaded = true")
    for name in ("web", "api", "batch"):
        post(server, name, "/osRollingUpgrade")
    expect(page.locator("#status")).to_have_text("RollingForward", timeout=WAIT_MS)
    server.advance(30)
    post(server, "batch", "/rollingUpgrades/cancel")
    server.advance(60)  # inside the rollout: some batches done, some instances pending
    rolling = server.head()
    assert latest_code(server) == "RollingForward"
    expect(page.locator("#at")).to_have_text(str(rolling), timeout=WAIT_MS)
    page.screenshot(path=str(SCREENSHOTS / "set-rolling.png"))
    for _ in range(60):  # bounded: a 10-instance rollout takes a few virtual minutes
        if latest_code(server) != "RollingForward":
            break
        server.advance(60)
    assert latest_code(server) == "Completed"
    done = server.head()
    expect(page.locator("#status")).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#at")).to_have_text(str(done), timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded") is True

    # Time travel: the slider takes the set back to RollingForward and forward again.
    page.locator("#slider").fill(str(rolling))
    expect(page.locator("#status")).to_have_text("RollingForward", timeout=WAIT_MS)
    expect(page.locator("#at")).to_have_text(str(rolling))
    assert f"at={rolling}" in page.url
    shared = page.url
    page.locator("#slider").fill(str(done))
    expect(page.locator("#status")).to_have_text("Completed", timeout=WAIT_MS)
    page.locator("#step-back").click()
    expect(page.locator("#at")).to_have_text(str(done - 1), timeout=WAIT_MS)
    expect(page.locator("#change")).to_contain_text(f"step to {done - 1}:")

    # A shared link reproduces the moment in a fresh context (a new tab's own token).
    context = browser.new_context(viewport=VIEWPORT)
    other = context.new_page()
    open_with_token(other, shared)
    expect(other.locator("#status")).to_have_text("RollingForward", timeout=WAIT_MS)
    expect(other.locator("#at")).to_have_text(str(rolling))
    assert (
        other.locator("#tiles").inner_text() == page_at(page, shared).locator("#tiles").inner_text()
    )
    other.locator("#upgrade-link").click()
    expect(other.locator("#events tr.now")).to_have_count(1, timeout=WAIT_MS)
    expect(other.locator("#events")).to_contain_text("pre-check passed")
    other.goto(f"{server.url}/ui/#/?at={rolling}")
    expect(other.locator("#count-RollingForward")).to_have_text("2", timeout=WAIT_MS)
    expect(other.locator("#count-Cancelled")).to_have_text("1")
    other.screenshot(path=str(SCREENSHOTS / "fleet-rolling.png"))
    context.close()
    page.close()  # its live stream ends now, not when the server stops
    assert errors == []


def page_at(page: Any, url: str) -> Any:
    """``page`` showing ``url`` (the moment the shared link names)."""
    page.goto(url)
    page.wait_for_function(
        f"location.href === {url!r} && document.body.dataset.at", timeout=WAIT_MS
    )
    from playwright.sync_api import expect  # noqa: PLC0415 - optional dependency

    expect(page.locator("#status")).to_have_text("RollingForward", timeout=WAIT_MS)
    return page

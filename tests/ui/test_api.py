"""The dashboard's HTTP side on a real server: the page, its auth, its JSON, its stream.

Also ``osupgrade ui`` as a real process on a stored SQLite log: it serves the same
endpoints, never creates a log that is not there, and leaves the log's bytes unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.domain.model import RollingUpgradePolicy
from events import PostgresEventStore, SQLiteEventStore
from tests.api.live import API, RG, SUB, TOKEN, LiveServer, client, live_server, vmss_path
from tests.backends import pg_dsn
from tests.engine import harness
from tests.ui.test_browser import post, rolling_set

KEY = f"{SUB}/{RG}/web".lower()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A live server with one 5-instance set rolling to 1.1.0 for 90 virtual seconds."""
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        response = live.http.put(vmss_path("web"), params={"api-version": API}, json=rolling_set(5))
        assert response.status_code == 201, response.text
        live.publish("1.1.0", bootSeconds=60)
        post(live, "web", "/osRollingUpgrade")
        live.advance(90)
        yield live


def test_the_page_loads_without_a_token_but_no_data_does(server: LiveServer) -> None:
    with client(server.url, {}) as anonymous:
        page = anonymous.get("/ui/")
        assert page.status_code == 200
        assert "osupgrade dashboard" in page.text
        assert anonymous.get("/ui").headers["location"] == "/ui/"
        script = anonymous.get("/ui/static/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert anonymous.get("/ui/api/fleet").status_code == 401
        assert anonymous.get("/ui/api/live").status_code == 401
    with client(server.url, {"Authorization": "Bearer limited-token"}) as limited:
        assert limited.get("/ui/api/fleet").status_code == 403  # the whole fleet: not for it
    assert server.http.get("/ui/api/fleet").status_code == 200


def test_every_view_answers_for_any_position(server: LiveServer) -> None:
    head = server.head()
    now = server.http.get("/ui/api/fleet").json()
    assert now["at"] == now["head"] == head
    assert now["statuses"]["RollingForward"] == 1
    assert sum(now["phases"].values()) == 5
    (row,) = now["sets"]
    assert row["key"] == KEY
    past = server.http.get("/ui/api/fleet", params={"at": 1}).json()
    assert past["at"] == 1
    assert past["sets"] == []  # position 1: the image version, no set yet
    later = server.http.get("/ui/api/fleet", params={"at": head + 100}).json()
    assert later["at"] == head  # clamped to the log's end

    scale_set = server.http.get(f"/ui/api/set/{SUB}/{RG}/WEB").json()
    assert scale_set["upgrade"]["code"] == "RollingForward"
    assert scale_set["upgrade"]["batches"][0]["completed"]["check"]["limit"] == 20
    assert [i["id"] for i in scale_set["instances"]] == ["0", "1", "2", "3", "4"]
    assert scale_set["changes"] == sorted(scale_set["changes"])
    first = scale_set["changes"][0]
    created = server.http.get(f"/ui/api/set/{SUB}/{RG}/web", params={"at": first}).json()
    assert created["upgrade"] is None
    assert {i["phase"] for i in created["instances"]} == {"idle"}

    upgrade_id = scale_set["upgrade"]["id"]
    upgrade = server.http.get(f"/ui/api/upgrade/{upgrade_id}").json()
    types = [e["type"] for e in upgrade["events"]]
    assert types[:2] == ["upgrade.requested", "upgrade.precheck_passed"]
    assert upgrade["events"][1]["inputs"]["check"] == {
        "value": 0, "total": 5, "percent": 0.0, "limit": 20
    }  # fmt: skip
    before = server.http.get(f"/ui/api/upgrade/{upgrade_id}", params={"at": first}).json()
    assert before["requested"] is False
    assert all(e["future"] for e in before["events"])

    event = server.http.get("/ui/api/event", params={"at": head}).json()["event"]
    assert event["position"] == head
    time_of = server.http.get("/ui/api/meta", params={"at": first}).json()["time"]
    assert server.http.get("/ui/api/meta", params={"time": time_of}).json()["at"] >= first


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/ui/api/fleet", {"at": "-1"}, 400),
        ("/ui/api/fleet", {"at": "abc"}, 400),
        ("/ui/api/fleet", {"time": "yesterday"}, 400),
        ("/ui/api/fleet", {"limit": "x"}, 400),
        ("/ui/api/set/nosub/norg/none", {}, 404),
        ("/ui/api/upgrade/nonexistent", {}, 404),
    ],
)
def test_bad_moments_and_unknown_names_are_refused(
    server: LiveServer, path: str, params: dict[str, str], status: int
) -> None:
    response = server.http.get(path, params=params)
    assert response.status_code == status
    assert response.json()["error"]


def test_the_live_stream_sends_the_new_head_when_the_log_grows(server: LiveServer) -> None:
    head = server.head()
    received: list[dict[str, object]] = []

    def listen() -> None:
        with server.http.stream("GET", "/ui/api/live", params={"after": head}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(orjson.loads(line[6:]))
                    return

    listener = threading.Thread(target=listen)
    listener.start()
    server.advance(60)  # the rollout goes on: new events
    listener.join(30)
    assert not listener.is_alive()
    assert received and int(str(received[0]["head"])) > head


async def make_log(path: Path) -> None:
    """A small stored log: one upgrade of a 4-instance set."""
    async with SQLiteEventStore(path) as store, harness.world(store=store, autojump=False) as w:
        await w.create(harness.spec("web", 4, automatic=False, rolling=RollingUpgradePolicy()))
        await w.publish("1.1.0", boot_seconds=30)
        upgrade = await w.engine.start_os_upgrade(harness.SUB, harness.RG, "web")
        await w.finish("web", upgrade)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_osupgrade_ui_serves_a_stored_log_and_never_writes_it(tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite"
    asyncio.run(make_log(log))
    before = digest(log)
    command = [sys.executable, "-m", "engine.cli", "ui", "--db", str(log), "--port", "0"]
    process = subprocess.Popen([*command, "--auth-token", TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the log is folded and the port open
        assert "read-only" in line, line
        url = line.split()[2].removesuffix("/ui/")
        with client(url, {"Authorization": f"Bearer {TOKEN}"}) as http:
            fleet = http.get("/ui/api/fleet").json()
            assert fleet["statuses"]["Completed"] == 1
            stored = http.get(f"/ui/api/set/{harness.SUB}/{harness.RG}/web").json()
            assert stored["upgrade"]["code"] == "Completed"
            assert http.get("/ui/").status_code == 200
        with client(url, {}) as anonymous:
            assert anonymous.get("/ui/api/fleet").status_code == 401
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()
    assert digest(log) == before


def test_osupgrade_ui_never_creates_a_log(tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite"
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "ui", "--db", str(missing), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not missing.exists()


async def grow_pg_log(dsn: str, schema: str, upgrade: bool) -> int:
    """Create a 4-instance set (first call) or upgrade it (second call); the new head."""
    async with (
        PostgresEventStore(dsn, schema=schema) as store,
        harness.world(store=store, autojump=False) as w,
    ):
        if not upgrade:
            await w.create(harness.spec("web", 4, automatic=False, rolling=RollingUpgradePolicy()))
        else:
            await w.publish("1.1.0", boot_seconds=30)
            started = await w.engine.start_os_upgrade(harness.SUB, harness.RG, "web")
            await w.finish("web", started)
        await w.engine.durable()
        return await store.head()


def test_osupgrade_ui_follows_a_postgresql_log_another_process_writes() -> None:
    dsn = pg_dsn()
    schema = f"t_ui_{uuid.uuid4().hex[:12]}"
    first = asyncio.run(grow_pg_log(dsn, schema, upgrade=False))
    command = [sys.executable, "-m", "engine.cli", "ui", "--db", dsn, "--pg-schema", schema]
    process = subprocess.Popen(
        [*command, "--port", "0", "--auth-token", TOKEN], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "read-only" in line and "***" not in line, line
        url = line.split()[2].removesuffix("/ui/")
        with client(url, {"Authorization": f"Bearer {TOKEN}"}) as http:
            fleet = http.get("/ui/api/fleet").json()
            assert (fleet["head"], fleet["statuses"]["NoUpgrade"]) == (first, 1)
            final = asyncio.run(grow_pg_log(dsn, schema, upgrade=True))
            with http.stream("GET", "/ui/api/live", params={"after": first}) as stream:
                for text in stream.iter_lines():  # NOTIFY (or the 1 s poll) wakes the follower
                    if text.startswith("data: ") and orjson.loads(text[6:])["head"] == final:
                        break
            fleet = http.get("/ui/api/fleet").json()
            assert (fleet["head"], fleet["statuses"]["Completed"]) == (final, 1)
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()

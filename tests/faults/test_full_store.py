"""A full SQLite store: a real ``SQLITE_FULL``, mid-rollout, and recovery without a restart.

The file is capped with ``PRAGMA max_page_count`` at its current size on the connections
that write it (the log's writer and the projection's), so SQLite itself refuses to grow
it, exactly as on a full disk. Before, every write answered 500, every affected worker
crashed, and every request for those sets, reads included, answered 500 until a restart.
Now commands answer 503 saying the log is full, reads answer, no worker crashes, and once
the cap is raised the upgrades finish, the projection stores its rows, the chain verifies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import orjson
import pytest

from engine.api.cache import RenderCache
from engine.api.service import ApiService
from engine.runtime.clock import VirtualClock
from events import NewEvent, SQLiteEventStore, StoreFullError
from projections.fleet_view import FleetView
from projections.runner import ProjectionRunner, SQLiteTables, stored_rows
from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, RG, SUB, LiveServer, live_server, vmss_path
from tests.engine.harness import RG as HARNESS_RG
from tests.engine.harness import SUB as HARNESS_SUB
from tests.engine.harness import T0, world
from tests.engine.harness import spec as harness_spec

SETS = ("a", "b", "c")
Q = {"api-version": API}
READS = ("", "/virtualMachines", "/rollingUpgrades/latest", "/osUpgradeHistory")


def _service(live: LiveServer) -> ApiService:
    assert live.server.service is not None
    return live.server.service


def _writers(service: ApiService) -> list[aiosqlite.Connection]:
    """The connections that write the file: the log's writer and the projection's."""
    store, tables = service.store, service.runner.tables
    assert isinstance(store, SQLiteEventStore) and isinstance(tables, SQLiteTables)
    assert store._writer is not None and tables._conn is not None
    return [store._writer, tables._conn]


async def cap(service: ApiService) -> None:
    """Let no connection that writes the file grow it past its current size."""
    for conn in _writers(service):
        await _pragma(conn, f"max_page_count = {await _pragma(conn, 'page_count')}")


async def uncap(service: ApiService) -> None:
    """Space is back."""
    for conn in _writers(service):
        await _pragma(conn, "max_page_count = 1073741823")


async def _pragma(conn: aiosqlite.Connection, pragma: str) -> int:
    """Run a pragma to the end: a statement left open would hold a read snapshot."""
    rows = list(await conn.execute_fetchall(f"PRAGMA {pragma}"))
    return int(rows[0][0])


async def log_state(service: ApiService) -> dict[str, Any]:
    """What the log says (folded afresh) and what the server holds, for the final checks."""
    view = FleetView()
    for recorded in await service.store.read_all(limit=10_000_000):
        view.apply(recorded)
    cache = RenderCache()
    latest = {}
    for name in SETS:
        upgrade = view.latest_view(f"{SUB}/{RG}/{name}")
        assert upgrade is not None
        latest[name] = orjson.loads(cache.latest(upgrade))
    report = await service.store.verify()
    return {
        "latest": latest,
        "chain_ok": report.ok,
        "head": await service.store.head(),
        "checkpoint": service.runner.checkpoint,
        "crashed": dict(service.engine._crashed),
        "restarting": dict(service.engine._restarting),
    }


def _reads_answer(http: httpx.Client) -> None:
    """Every read of every set, and the list, answers 200."""
    for name in SETS:
        for suffix in READS:
            response = http.get(vmss_path(name, suffix), params=Q)
            assert response.status_code == 200, (suffix, response.text)
    listing = http.get(vmss_path("")[:-1], params=Q)
    assert listing.status_code == 200 and len(listing.json()["value"]) == len(SETS)


def _assert_full(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "ServiceUnavailable" and "full" in error["message"], error
    assert response.headers["retry-after"].isdigit()


def test_full_sqlite_store_mid_rollout_503_reads_answer_no_crash_then_upgrades_finish(
    tmp_path: Path,
) -> None:
    body = valid_bodies()["put"][2]
    body["sku"]["capacity"] = 5
    with live_server(tmp_path) as live:
        http = live.http
        live.publish("1.0.0")
        for name in SETS:
            assert http.put(vmss_path(name), params=Q, json=body).status_code == 201
        live.publish("1.1.0", bootSeconds=60)
        for name in SETS:
            assert http.post(vmss_path(name, "/osRollingUpgrade"), params=Q).status_code == 202
        live.advance(90)  # mid-rollout: a batch or two done in each set
        service = _service(live)
        live.call(cap(service))
        statuses = []
        for _ in range(20):  # until the file is full (free pages inside it go first)
            live.advance(30)
            response = http.put(vmss_path("a"), params=Q, json=body)
            statuses.append(response.status_code)
            if response.status_code == 503:
                break
        assert statuses[-1] == 503 and set(statuses) <= {200, 503}, statuses
        _assert_full(response)
        for name in SETS:  # every command is refused, saying why, and nothing is a 500
            _assert_full(http.post(vmss_path(name, "/rollingUpgrades/cancel"), params=Q))
        for _ in range(3):  # time goes on: workers fail to append and wait to restart
            live.advance(30)
            _reads_answer(http)
        full = live.call(log_state(service))
        assert full["restarting"] and not full["crashed"]
        live.call(uncap(service))
        for _ in range(40):  # restarts back off up to a minute of engine time
            live.advance(60)
            codes = {
                http.get(vmss_path(name, "/rollingUpgrades/latest"), params=Q).json()["properties"][
                    "runningStatus"
                ]["code"]
                for name in SETS
            }
            if codes == {"Completed"}:
                break
        assert codes == {"Completed"}
        stored = service.runner.wait_for(live.head())  # the projection retries its write
        live.call(asyncio.wait_for(stored, 10))
        after = live.call(log_state(service))
        _reads_answer(http)
        served = {
            name: http.get(vmss_path(name, "/rollingUpgrades/latest"), params=Q).json()
            for name in SETS
        }
    assert served == after["latest"]
    assert after["chain_ok"] and not after["crashed"] and not after["restarting"]
    assert after["checkpoint"] == after["head"]


def big_event() -> NewEvent:
    """An event too large for the free space left in a page: the file must grow."""
    return NewEvent("test.big", {"blob": os.urandom(60_000).hex()})


async def test_full_sqlite_store_refuses_appends_typed_and_takes_them_again_without_reopening(
    tmp_path: Path,
) -> None:
    async with SQLiteEventStore(tmp_path / "log.sqlite") as store:
        await store.append("s-0", [NewEvent("test.small", {"n": 0})], 0)
        assert store._writer is not None
        writer = store._writer
        await _pragma(writer, f"max_page_count = {await _pragma(writer, 'page_count')}")
        head = await store.head()
        refused = await asyncio.gather(
            *(store.append(f"s-{i}", [big_event()], None) for i in range(1, 6)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreFullError) for r in refused), refused
        assert "is full" in str(refused[0])
        assert await store.head() == head  # nothing was written ...
        assert [e.stream_id for e in await store.read_all()] == ["s-0"]  # ... reads answer
        await _pragma(writer, "max_page_count = 1073741823")  # space is back
        taken = await asyncio.gather(
            *(store.append(f"s-{i}", [big_event()], None) for i in range(1, 6))
        )  # the same writer, the same connection: no reopening
        assert sorted(p for positions in taken for p in positions) == list(range(2, 7))
        assert await store.append("s-0", [NewEvent("test.small", {"n": 1})], 1) == [7]
        assert (await store.verify()).ok


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), for root only; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_sqlite_on_a_full_file_system_refuses_typed_and_resumes_once_space_is_freed(
    tiny_filesystem: Path,
) -> None:
    ballast = tiny_filesystem / "ballast"
    ballast.write_bytes(b"\0" * 512 * 1024)  # what an operator frees later
    async with SQLiteEventStore(tiny_filesystem / "log.sqlite") as store:
        error = None
        for n in range(100):  # 2 MiB hold fewer than 20 of these events
            try:
                await store.append(f"s-{n}", [big_event()], 0)
            except StoreFullError as exc:
                error = exc
                break
        assert error is not None and "is full" in str(error)
        head = await store.head()
        assert head == n and len(await store.read_all()) == n  # reads answer
        ballast.unlink()
        assert await store.append(f"s-{n}", [big_event()], 0) == [head + 1]
        assert (await store.verify()).ok


class CappedTables(SQLiteTables):
    """The projection's tables on a file that may not grow (capped once opened)."""

    async def open(self) -> None:
        await super().open()
        assert self._conn is not None
        await _pragma(self._conn, f"max_page_count = {await _pragma(self._conn, 'page_count')}")


async def fill(store: SQLiteEventStore) -> None:
    """Append until not even a small event fits: the file is full to the last page."""
    assert store._writer is not None
    writer = store._writer
    await _pragma(writer, f"max_page_count = {await _pragma(writer, 'page_count')}")
    for size in (60_000, 2_000, 100):
        for n in range(2_000):
            try:
                await store.append(f"filler-{size}-{n}", [NewEvent("test.f", {"x": "y" * size})], 0)
            except StoreFullError:
                break
        else:
            raise AssertionError("the capped file never filled up")


async def test_projection_on_the_full_file_keeps_folding_and_stores_its_rows_once_there_is_room(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.sqlite"
    clock = VirtualClock(T0)
    async with SQLiteEventStore(db, clock=clock, durability="normal") as store:
        async with ProjectionRunner(store, db):
            pass  # the projection's tables exist, and are behind what follows
        async with world(store=store, clock=clock) as w:
            for name in SETS:  # big enough that its rows need pages of their own
                await w.create(harness_spec(name, 40))
            await w.publish("1.1.0", boot_seconds=60)
            for name in SETS:
                await w.engine.wait_for_upgrade(HARNESS_SUB, HARNESS_RG, name)
            await w.engine.durable()
        await fill(store)  # the rollout is in the log; the stored projection is behind
        head = await store.head()
        tables = CappedTables(db)
        async with ProjectionRunner(store, tables, batch_size=50) as runner:
            assert runner.checkpoint < head
            await runner.wait_folded(head)  # the view, which reads come from, is current ...
            for name in SETS:
                latest = runner.view.latest(f"{HARNESS_SUB}/{HARNESS_RG}/{name}")
                assert latest is not None
                assert latest["properties"]["runningStatus"]["code"] == "Completed"
            with pytest.raises(TimeoutError):  # ... the stored rows are not, and stay behind
                await asyncio.wait_for(runner.wait_for(head), 0.5)
            assert isinstance(runner.problem, StoreFullError)
            assert tables._conn is not None
            await _pragma(tables._conn, "max_page_count = 1073741823")  # space is back
            await asyncio.wait_for(runner.wait_for(head), 10)  # stored at the next retry
            assert runner.problem is None
        async with ProjectionRunner(store, tmp_path / "fresh.sqlite") as fresh:
            await fresh.wait_for(head)
    assert await stored_rows(db) == await stored_rows(tmp_path / "fresh.sqlite")

"""PostgreSQL restarts (``pg_ctl restart -m fast|immediate``) under three live servers.

Mid-rollout, with clients reading and writing through all three servers, the database
is restarted for real: every connection of every server is cut. Before, every server
that lived through it was broken for good (the projection kept its dead connection:
commands answered 500, reads froze, SIGTERM exited 1). Now nothing answers 500,
commands get 503 while the database is away, every upgrade completes, every server's
reads catch up with the log, the fence audit is clean and every server exits 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import httpx
import orjson
import pytest

from engine.api.cache import RenderCache
from engine.api.service import leases_schema
from engine.domain.events import SimulationProfile
from engine.scaleout.pg_leases import PostgresLeaseBoard
from events import PostgresEventStore, StoreUnavailableError
from projections.fleet_view import FleetView
from tests.api.live import API
from tests.engine.harness import LOCATION, UBUNTU, spec
from tests.faults.client_load import Tally, run_client, vmss_path
from tests.faults.conftest import ThrowawayPostgres
from tests.pg_servers import (
    SPEED,
    TTL,
    admin_engine,
    audit_fences_cli,
    engine_process,
    mid_rollout,
    spread,
    wait_for_events,
)

SETS = 24
SCHEMA = "osupgrade"
CLIENTS = 3
T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T | None]], seconds: float, what: str) -> T:
    """Ask ``check`` again until it answers (not None); other processes do the work.

    The database may still be coming back: an unreachable log counts as "not yet".
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = await check()
        except StoreUnavailableError:
            result = None
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)  # the servers are other processes: nothing to wait on


async def all_finished(store: PostgresEventStore) -> list[str] | None:
    """Every set's 1.1.0 upgrade status, once all have finished (else None)."""
    finished = await store.read_all(limit=100_000, types=["scaleset.upgrade_finished"])
    statuses = {r.stream_id: r.data["status"] for r in finished}
    return list(statuses.values()) if len(statuses) == SETS else None


async def log_fold(store: PostgresEventStore) -> FleetView:
    """The fleet as the log has it: what every server's reads must show in the end."""
    view = FleetView()
    for recorded in await store.read_all(limit=10_000_000):
        view.apply(recorded)
    return view


async def reads_match_log(urls: list[str], keys: list[str], view: FleetView) -> bool | None:
    """True once every server's latest upgrade and instances equal the log's fold."""
    cache = RenderCache()
    async with httpx.AsyncClient(headers={"Authorization": "Bearer t"}, timeout=30) as http:
        for url in urls:
            for key in keys:
                path, query = vmss_path(key), {"api-version": API}
                latest_view = view.latest_view(key)
                assert latest_view is not None
                latest = await http.get(f"{url}{path}/rollingUpgrades/latest", params=query)
                if latest.json() != orjson.loads(cache.latest(latest_view)):
                    return None
                machines = await http.get(f"{url}{path}/virtualMachines", params=query)
                versions = {
                    m["instanceId"]: m["properties"]["storageProfile"]["imageReference"][
                        "exactVersion"
                    ]
                    for m in machines.json()["value"]
                }
                if versions != {i: v.version for i, v in view.instances[key].items()}:
                    return None
    return True


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_pg_restart_mid_rollout_no_500_upgrades_complete_reads_catch_up_exit_0(
    throwaway_pg: ThrowawayPostgres, mode: Literal["fast", "immediate"], tmp_path: Path
) -> None:
    dsn = throwaway_pg.dsn
    exit_codes: list[int] = []
    tally = Tally()
    async with AsyncExitStack() as stack:
        board = await stack.enter_async_context(
            PostgresLeaseBoard(dsn, schema=leases_schema(SCHEMA), ttl_s=TTL)
        )
        clock = await board.shared_clock(SPEED, datetime.now(UTC))
        store = await stack.enter_async_context(PostgresEventStore(dsn, schema=SCHEMA, clock=clock))
        admin = await stack.enter_async_context(admin_engine(store, board, clock))
        await admin.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
        keys = []
        for n in range(SETS):
            model = spec(f"set{n:02}", 5)
            await admin.create_or_update_scale_set(model)
            keys.append(model.key)
        servers = [
            await stack.enter_async_context(
                engine_process(dsn, SCHEMA, tmp_path / f"e{i}.log", exit_codes=exit_codes)
            )
            for i in range(3)
        ]
        urls = [url for _, url in servers]
        async with asyncio.timeout(30):
            await spread(board, SETS)
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(run_client(urls, keys, stop, tally, seed, "t"))
            for seed in range(CLIENTS)
        ]
        await admin.publish_image_version(
            LOCATION, *UBUNTU, "1.1.0", SimulationProfile(boot_seconds=120)
        )
        async with asyncio.timeout(30):  # a few done: the rest are mid-rollout
            await wait_for_events(store, "scaleset.upgrade_finished", 3)
        assert await mid_rollout(store)
        await asyncio.to_thread(throwaway_pg.restart, mode)
        statuses = await poll(lambda: all_finished(store), 60, "every upgrade to finish")
        view = await poll(lambda: log_fold(store), 10, "the log")
        await poll(lambda: reads_match_log(urls, keys, view), 30, "reads to catch up")
        stop.set()
        await asyncio.gather(*clients)
        verdict = await audit_fences_cli(dsn, SCHEMA)
    print(f"{mode}: answers by status {dict(tally.statuses)}")
    assert not tally.failures, tally.failures[:5]
    assert set(statuses) == {"Completed"}
    assert "no scale set was driven by two engines" in verdict
    assert exit_codes == [0, 0, 0]
    for answer in tally.unavailable:
        error = answer["body"]["error"]  # type: ignore[index]
        assert error["code"] == "ServiceUnavailable" and "unreachable" in error["message"]
        assert answer["retry_after"] is not None

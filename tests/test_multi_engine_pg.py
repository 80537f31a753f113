"""Three ``osupgrade serve`` processes share one PostgreSQL log; one is SIGKILLed mid-rollout.

The surviving engines take its scale sets over within the lease TTL plus one renewal,
every upgrade completes, and the log itself proves (``engine.scaleout.fence_audit``) that no
scale set was ever driven by two engines and no instance was reimaged twice by one
upgrade. Time is real but sped up 300 times, shared by every process through the
database, so a 15-minute rollout takes seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from engine.api.service import leases_schema
from engine.domain.events import SimulationProfile
from engine.scaleout.fence_audit import audit_fences
from engine.scaleout.pg_leases import PostgresLeaseBoard
from events import PostgresEventStore, RecordedEvent
from tests.api.live import API
from tests.backends import pg_dsn
from tests.engine.harness import LOCATION, UBUNTU, spec
from tests.pg_servers import (
    RENEW,
    SPEED,
    TTL,
    admin_engine,
    audit_fences_cli,
    drop,
    engine_process,
    mid_rollout,
    spread,
    wait_for_events,
)

SETS = 200


async def any_server_serves_every_set(
    url: str, pid: int, owners: dict[str, str | None], store: PostgresEventStore
) -> None:
    """Reads of a set another server drives come from the log; commands are forwarded."""
    elsewhere = next(k for k, o in owners.items() if o is not None and f"-{pid}-" not in o)
    sub, rg, name = elsewhere.split("/")
    path = (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute"
        f"/virtualMachineScaleSets/{name}"
    )
    query = {"api-version": API}
    started = await store.stream_version(f"vmss-{elsewhere}")
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer t"}) as http:
        model = await http.get(path, params=query)
        instances = await http.get(f"{path}/virtualMachines", params=query)
        cancel = await http.post(f"{path}/rollingUpgrades/cancel", params=query)
        start = await http.post(f"{path}/osRollingUpgrade", params=query)
        unauthorised = await http.post(
            f"{path}/osRollingUpgrade", params=query, headers={"Authorization": "Bearer x"}
        )
    assert model.status_code == 200 and model.json()["name"] == name
    assert {i["properties"]["storageProfile"]["imageReference"]["exactVersion"]
            for i in instances.json()["value"]} == {"1.1.0"}  # fmt: skip
    # the owner's own refusal comes back through the forwarding server
    assert cancel.status_code == 409, cancel.text
    assert "no ongoing Rolling Upgrade" in cancel.json()["error"]["message"]
    assert start.status_code == 202, start.text  # forwarded to the owner, who started it
    assert "azure-asyncoperation" in start.headers
    assert unauthorised.status_code == 401  # checked before anything is forwarded
    assert await store.stream_version(f"vmss-{elsewhere}") > started


async def takeovers(
    store: PostgresEventStore, after: int, streams: set[str]
) -> dict[str, RecordedEvent]:
    """Follow the log until each of ``streams`` has a new ``lease_acquired``."""
    taken: dict[str, RecordedEvent] = {}
    async for event in store.subscribe(after=after, types=["scaleset.lease_acquired"]):
        if event.stream_id in streams:
            taken.setdefault(event.stream_id, event)
        if len(taken) == len(streams):
            return taken
    raise AssertionError("the subscription ended")


async def test_three_engines_one_killed_every_upgrade_completes_once(tmp_path: Path) -> None:
    dsn = pg_dsn()
    schema = f"t_{uuid.uuid4().hex[:10]}"
    try:
        async with AsyncExitStack() as stack:
            board = await stack.enter_async_context(
                PostgresLeaseBoard(dsn, schema=leases_schema(schema), ttl_s=TTL)
            )
            clock = await board.shared_clock(SPEED, datetime.now(UTC))
            store = await stack.enter_async_context(
                PostgresEventStore(dsn, schema=schema, clock=clock)
            )
            admin = await stack.enter_async_context(admin_engine(store, board, clock))
            await admin.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
            for n in range(SETS):
                await admin.create_or_update_scale_set(spec(f"set{n:03}", 10))
            servers = [
                await stack.enter_async_context(engine_process(dsn, schema, tmp_path / f"e{i}.log"))
                for i in range(3)
            ]
            processes = [process for process, _ in servers]
            async with asyncio.timeout(60):
                await spread(board, SETS)
            await admin.publish_image_version(
                LOCATION, *UBUNTU, "1.1.0", SimulationProfile(boot_seconds=180)
            )
            async with asyncio.timeout(60):  # a third done: the rest are mid-rollout
                await wait_for_events(store, "scaleset.upgrade_finished", SETS // 3)
            owner_of = await board.owners()
            assert len(set(owner_of.values()) - {None}) == 3  # work spread over all three
            running = await mid_rollout(store)
            victim_id = Counter(owner_of[key] for key in running).most_common(1)[0][0]
            assert victim_id is not None
            victim = next(p for p in processes if f"-{p.pid}-" in victim_id)
            victim_sets = {f"vmss-{k}" for k, o in owner_of.items() if o == victim_id}
            os.kill(victim.pid, signal.SIGKILL)
            killed_at, kill_position = clock.now(), await store.head()
            async with asyncio.timeout(120):
                finished = await wait_for_events(store, "scaleset.upgrade_finished", SETS)
                taken = await takeovers(store, kill_position, victim_sets)
            records = await store.read_all(limit=10_000_000)
            verdict = await audit_fences_cli(dsn, schema)
            assert "no scale set was driven by two engines" in verdict
            survivor, url = next((p, url) for p, url in servers if p is not victim)
            await any_server_serves_every_set(url, survivor.pid, await board.owners(), store)
    finally:
        await drop(dsn, schema, leases_schema(schema))
    assert {e.data["status"] for e in finished} == {"Completed"}
    audit = audit_fences(records)
    assert audit.ok, audit.problems
    assert {f"vmss-{k}" for k in running} & victim_sets  # it died mid-rollout ...
    assert set(taken) == victim_sets  # ... and every one of its sets was taken over ...
    assert all(r.data["engine_id"] != victim_id for r in taken.values())
    slowest = max(r.occurred_at for r in taken.values()) - killed_at
    print(f"slowest takeover: {slowest.total_seconds() / SPEED:.2f} s real after SIGKILL")
    assert slowest <= timedelta(seconds=(TTL + RENEW + 2) * SPEED), slowest  # ... in time
    assert audit.takeovers >= len(taken)

"""Real ``osupgrade serve`` processes on a shared PostgreSQL log, for multi-server tests.

Shared by the SIGKILL test (``tests/test_multi_engine_pg.py``), the forwarding tests and
the fault tests that restart the database under the servers (``tests/faults/``). Time
is real but sped up (``SPEED``), shared by every process through the database, so a
rollout takes seconds. Servers sharing a log on a real clock must hold the same cluster
secret; every server started here gets ``CLUSTER_SECRET`` through the environment
(never the command line).
"""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE, Process
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from engine.domain.scale_set import EngineSettings
from engine.runtime.clock import EngineClock as Clock
from engine.runtime.engine import Engine
from engine.scaleout.leases import Ownership
from engine.scaleout.pg_leases import PostgresLeaseBoard
from engine.sim.fleet import SimulatedFleet
from events import PostgresEventStore, RecordedEvent
from tests.servers import ROOT, start_serve, stop_serve

CLUSTER_SECRET = "cluster-secret-of-the-tests-" + "5" * 36
SPEED = 300.0
TTL, RENEW = 3.0, 1.0
NEW_VERSION_DELAY = (0, 1800)  # engine seconds: upgrades start over 6 real seconds


@asynccontextmanager
async def serve_process(
    dsn: str,
    schema: str,
    log: Path,
    *args: str,
    options: Sequence[str] = (),
    exit_codes: list[int] | None = None,
) -> AsyncIterator[tuple[Process, str]]:
    """One ``osupgrade serve`` on the shared log, on a free port; yields (process, url).

    ``args`` go to ``serve``, ``options`` before it (``-v``, ``--log-format json``). On
    exit it is stopped with SIGTERM (unless it already ended); its exit code is appended
    to ``exit_codes`` when given.
    """
    serve_args = ["--db", dsn, "--pg-schema", schema, *args]
    secret = {"OSUPGRADE_CLUSTER_SECRET": CLUSTER_SECRET}
    process, url = await start_serve(serve_args, log, global_args=options, env=secret)
    try:
        yield process, url
    finally:
        code = await stop_serve(process)
        if exit_codes is not None:
            exit_codes.append(code)


@asynccontextmanager
async def engine_process(
    dsn: str,
    schema: str,
    log: Path,
    *,
    options: Sequence[str] = (),
    exit_codes: list[int] | None = None,
) -> AsyncIterator[tuple[Process, str]]:
    """``serve_process`` with the sped-up clock and short leases of the rollout tests."""
    args = [
        "--speed", str(SPEED), "--auth-token", "t",
        "--lease-ttl", str(TTL), "--lease-renew", str(RENEW),
        "--first-rollout-max-delay", "0",
        "--new-version-delay", *(str(d) for d in NEW_VERSION_DELAY),
    ]  # fmt: skip
    async with serve_process(
        dsn, schema, log, *args, options=options, exit_codes=exit_codes
    ) as started:
        yield started


async def drop(dsn: str, *schemas: str) -> None:
    """Drop the test's schemas (the shared server outlives the test)."""
    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def spread(board: PostgresLeaseBoard, sets: int, engines: int = 3) -> None:
    """Wait until every engine holds an even share (leases move in real time)."""
    while True:
        owners = Counter((await board.owners()).values())
        fair = -(-sets // engines)
        if None not in owners and len(owners) == engines and max(owners.values()) <= fair:
            return
        await asyncio.sleep(0.2)  # another process's table: there is nothing to wait on


async def mid_rollout(store: PostgresEventStore) -> set[str]:
    """Keys of the scale sets with an upgrade started and not finished."""
    kinds = ["scaleset.upgrade_started", "scaleset.upgrade_finished"]
    running: set[str] = set()
    for r in await store.read_all(limit=10_000_000, types=kinds):
        key = r.stream_id.removeprefix("vmss-")
        (running.add if r.type == kinds[0] else running.discard)(key)
    return running


async def wait_for_events(store: PostgresEventStore, kind: str, enough: int) -> list[RecordedEvent]:
    """Follow the log (woken by NOTIFY) until ``enough`` scale sets have a ``kind`` event."""
    seen: dict[str, RecordedEvent] = {}
    async for event in store.subscribe(types=[kind]):
        seen.setdefault(event.stream_id, event)
        if len(seen) >= enough:
            return list(seen.values())
    raise AssertionError("the subscription ended")


def admin_engine(store: PostgresEventStore, board: PostgresLeaseBoard, clock: Clock) -> Engine:
    """An engine on the shared log that takes the test's calls and drives no scale set."""
    return Engine(
        store=store, fleet=SimulatedFleet(clock), clock=clock,
        settings=EngineSettings(first_rollout_max_delay_s=0),
        ownership=Ownership(board, "admin", renew_s=RENEW, claim=False),
    )  # fmt: skip


async def audit_fences_cli(dsn: str, schema: str) -> str:
    """``osupgrade audit fences`` on the log; its verdict (it must exit 0)."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "audit", "fences", "--db", dsn,
        "--pg-schema", schema, cwd=ROOT, stdout=PIPE,
    )  # fmt: skip
    verdict = (await cli.communicate())[0].decode()
    assert cli.returncode == 0, verdict
    return verdict

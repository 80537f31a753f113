"""Fleet-scale run on PostgreSQL: ``tools/bench_fleet.py``'s workload, 1 or more engines.

S scale sets x I instances get an automatic upgrade to a newly published version on a
log in a fresh schema of the PostgreSQL at ``--dsn`` (dropped afterwards unless
``--keep``).

``--engines 0`` runs one engine embedded in this process, alone on the log (no leases),
exactly as a single ``Engine`` would. ``--engines N`` (N >= 1) starts N engine
processes that share the log through leases and fencing (docs/POSTGRES.md): this
process creates the fleet, waits until the leases are spread, publishes the version and
times until every upgrade has finished, following the log. Each engine runs its own
virtual clock (autojump), so the run measures work, not waiting; leases run on real
time. The log is audited afterwards (``engine.scaleout.fence_audit``).

    dir=$(mktemp -d) && dsn=$(tools/pg_throwaway.sh start "$dir")
    .venv/bin/python tools/bench_fleet_pg.py --dsn "$dsn" --scale-sets 1000 --instances 100 \\
        --engines 1 --engines 3
    tools/pg_throwaway.sh stop "$dir"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_fleet import LOCATION, UBUNTU, base_spec, rollout  # noqa: E402

from engine.api.service import leases_schema  # noqa: E402
from engine.domain.events import SimulationProfile  # noqa: E402
from engine.logging import configure_logging  # noqa: E402
from engine.runtime.clock import VirtualClock  # noqa: E402
from engine.runtime.engine import Engine  # noqa: E402
from engine.scaleout.fence_audit import audit_fences  # noqa: E402
from engine.scaleout.leases import Ownership  # noqa: E402
from engine.scaleout.pg_leases import PostgresLeaseBoard  # noqa: E402
from engine.sim.fleet import SimulatedFleet  # noqa: E402
from events import PostgresEventStore  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL, RENEW = 6.0, 2.0


async def run_embedded(dsn: str, schema: str, scale_sets: int, instances: int) -> dict[str, Any]:
    """One engine in this process, alone on the log."""
    clock = VirtualClock(T0)
    fleet = SimulatedFleet(clock, seed=1)
    store = PostgresEventStore(dsn, schema=schema, clock=clock)
    async with store, Engine(store=store, fleet=fleet, clock=clock) as engine:
        started = time.perf_counter()
        done = await rollout(engine, clock, scale_sets, instances)
        wall = time.perf_counter() - started
        head = await store.head()
        report = await store.verify()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "completed": done, "wall_s": wall, "events": head, "peak_rss_mib": peak_mib,
        "chain_ok": report.ok, "audit_ok": True,
    }  # fmt: skip


async def run_shared(
    dsn: str, schema: str, scale_sets: int, instances: int, engines: int
) -> dict[str, Any]:
    """``engines`` engine processes share the log; this process only sets up and watches."""
    clock = VirtualClock(T0)
    async with (
        PostgresLeaseBoard(dsn, schema=leases_schema(schema), ttl_s=TTL) as board,
        PostgresEventStore(dsn, schema=schema, clock=clock) as store,
    ):
        admin = Engine(
            store=store, fleet=SimulatedFleet(clock), clock=clock,
            ownership=Ownership(board, "bench-admin", renew_s=RENEW, claim=False),
        )  # fmt: skip
        async with admin:
            await admin.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
            template = base_spec(instances)
            for i in range(scale_sets):
                await admin.create_or_update_scale_set(replace(template, name=f"vmss{i:05d}"))
            children = [await _child(dsn, schema) for _ in range(engines)]
            await _spread(board, scale_sets, engines)
            started = time.perf_counter()
            await admin.publish_image_version(
                LOCATION, *UBUNTU, "1.1.0", SimulationProfile(boot_seconds=60)
            )
            statuses = await _finished(store, scale_sets)
            wall = time.perf_counter() - started
            rss = [await _stop(child) for child in children]
            head = await store.head()
            report = await store.verify()
            audit = audit_fences(await store.read_all(limit=100_000_000))
    return {
        "completed": statuses["Completed"], "wall_s": wall, "events": head,
        "peak_rss_mib": max(rss), "rss_each": rss, "chain_ok": report.ok, "audit_ok": audit.ok,
    }  # fmt: skip


async def _child(dsn: str, schema: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", "--dsn", dsn, "--schema", schema,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _spread(board: PostgresLeaseBoard, scale_sets: int, engines: int) -> None:
    """Wait until every set is owned and no engine holds more than its share."""
    share = -(-scale_sets // engines)
    while True:
        owners = await board.owners()
        counts = Counter(owners.values())
        if None not in counts and len(counts) == engines and max(counts.values()) <= share:
            print(f"  leases spread: {sorted(counts.values())}", file=sys.stderr)
            return
        await asyncio.sleep(0.5)  # leases move on real time; nothing to wait on but that


async def _finished(store: PostgresEventStore, scale_sets: int) -> Counter[str]:
    """Follow the log until every scale set has finished an upgrade; count statuses."""
    statuses: dict[str, str] = {}
    async for event in store.subscribe(types=["scaleset.upgrade_finished"], batch_size=5000):
        statuses[event.stream_id] = event.data["status"]
        if len(statuses) % max(1, scale_sets // 10) == 0:
            print(f"  {len(statuses)}/{scale_sets} scale sets finished", file=sys.stderr)
        if len(statuses) == scale_sets:
            break
    return Counter(statuses.values())


async def _stop(child: asyncio.subprocess.Process) -> float:
    child.send_signal(signal.SIGTERM)
    assert child.stdout is not None
    out = await child.stdout.read()
    await child.wait()
    return float(json.loads(out or b'{"peak_rss_mib": 0}')["peak_rss_mib"])


async def child_main(dsn: str, schema: str) -> None:
    """One engine process: drive whatever it holds leases on until SIGTERM."""
    clock = VirtualClock(T0)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    engine_id = f"bench-{os.getpid()}"
    async with (
        PostgresLeaseBoard(dsn, schema=leases_schema(schema), ttl_s=TTL) as board,
        PostgresEventStore(dsn, schema=schema, clock=clock) as store,
    ):
        engine = Engine(
            store=store, fleet=SimulatedFleet(clock, seed=1), clock=clock,
            ownership=Ownership(board, engine_id, renew_s=RENEW),
        )  # fmt: skip
        async with engine:
            await stop.wait()
            await engine.durable()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak}), flush=True)


async def drop(dsn: str, schema: str) -> None:
    """Remove the run's schemas."""
    conn = await asyncpg.connect(dsn)
    try:
        for name in (schema, leases_schema(schema)):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    """Parse the command line, run each engine count, print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--scale-sets", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument(
        "--engines", type=int, action="append", help="engine processes (0: embedded); repeatable"
    )
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("console", logging.WARNING)
    if args.child:
        asyncio.run(child_main(args.dsn, args.schema))
        return
    if args.scale_sets < 1 or not 1 <= args.instances <= 1000:
        parser.error("--scale-sets >= 1 and 1 <= --instances <= 1000")
    counts = args.engines or [0]
    if any(n < 0 for n in counts):
        parser.error("--engines must be >= 0")
    first = None
    for engines in counts:
        schema = f"fleet_{uuid.uuid4().hex[:12]}"
        try:
            if engines == 0:
                job = run_embedded(args.dsn, schema, args.scale_sets, args.instances)
            else:
                job = run_shared(args.dsn, schema, args.scale_sets, args.instances, engines)
            result = asyncio.run(job)
        finally:
            if not args.keep:
                asyncio.run(drop(args.dsn, schema))
        first = first or result["wall_s"]
        print(_line(engines, args.scale_sets, args.instances, result, first), flush=True)


def _line(engines: int, sets: int, instances: int, r: dict[str, Any], first: float) -> str:
    who = "1 engine, embedded" if engines == 0 else f"{engines} engine process(es)"
    return (
        f"PostgreSQL, {who}: {sets:,} scale sets x {instances} instances: "
        f"{r['completed']:,.0f} completed; wall {r['wall_s']:.1f} s (x{r['wall_s'] / first:.2f} "
        f"of the first run), {r['events']:,.0f} events, {r['events'] / r['wall_s']:,.0f} events/s, "
        f"{r['wall_s'] / (sets * instances) * 1e6:,.0f} µs per instance, peak RSS per engine "
        f"{r['peak_rss_mib']:,.0f} MiB{_each(r)}, "
        f"hash chain {'intact' if r['chain_ok'] else 'BROKEN'}, "
        f"fence audit {'clean' if r['audit_ok'] else 'FAILED'}"
    )


def _each(r: dict[str, Any]) -> str:
    each = r.get("rss_each", [])
    return f" (each: {', '.join(f'{m:,.0f}' for m in each)})" if len(each) > 1 else ""


if __name__ == "__main__":
    main()

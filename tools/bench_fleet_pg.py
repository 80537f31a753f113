"""Fleet-scale run on PostgreSQL: ``tools/bench_fleet.py``'s workload, one engine, PG log.

S scale sets x I instances get an automatic upgrade to a newly published version,
driven by the real engine, workers and simulated fleet, with the log in a fresh schema
of the PostgreSQL at ``--dsn`` (dropped afterwards unless ``--keep``). Several engines
on one database need the lease of docs/POSTGRES.md, which is not built yet, so this
measures one engine.

    dir=$(mktemp -d) && dsn=$(tools/pg_throwaway.sh start "$dir")
    .venv/bin/python tools/bench_fleet_pg.py --dsn "$dsn" --scale-sets 1000 --instances 100
    tools/pg_throwaway.sh stop "$dir"
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_fleet import rollout  # noqa: E402

from engine.clock import VirtualClock  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.logging import configure_logging  # noqa: E402
from engine.simulated_fleet import SimulatedFleet  # noqa: E402
from events import PostgresEventStore  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run(dsn: str, schema: str, scale_sets: int, instances: int) -> dict[str, float]:
    """Create the fleet, publish a version, wait for every upgrade; return the numbers."""
    clock = VirtualClock(T0)
    fleet = SimulatedFleet(clock, seed=1)
    store = PostgresEventStore(dsn, schema=schema, clock=clock)
    async with store, Engine(store=store, fleet=fleet, clock=clock) as engine:
        started = time.perf_counter()
        done = await rollout(engine, clock, scale_sets, instances)
        wall = time.perf_counter() - started
        head = await store.head()
        report = await store.verify()
        virtual_hours = (clock.now() - T0).total_seconds() / 3600
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "scale_sets": scale_sets, "completed": done, "wall_s": wall, "events": head,
        "events_per_s": head / wall, "peak_rss_mib": peak_mib, "chain_ok": report.ok,
        "us_per_instance": wall / (scale_sets * instances) * 1e6, "virtual_hours": virtual_hours,
    }  # fmt: skip


async def drop(dsn: str, schema: str) -> None:
    """Remove the run's schema."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    """Parse the command line, run, print one line of results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--scale-sets", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()
    if args.scale_sets < 1 or not 1 <= args.instances <= 1000:
        parser.error("--scale-sets >= 1 and 1 <= --instances <= 1000")
    configure_logging("console", logging.WARNING)
    schema = f"fleet_{uuid.uuid4().hex[:12]}"
    try:
        result = asyncio.run(run(args.dsn, schema, args.scale_sets, args.instances))
    finally:
        if not args.keep:
            asyncio.run(drop(args.dsn, schema))
    print(
        f"PostgreSQL, 1 engine: {result['scale_sets']:,} scale sets x {args.instances} "
        f"instances: {result['completed']:,} upgrades completed in "
        f"{result['virtual_hours']:.1f} virtual hours; wall {result['wall_s']:.1f} s, "
        f"{result['events']:,} events, {result['events_per_s']:,.0f} events/s, peak RSS "
        f"{result['peak_rss_mib']:,.0f} MiB, {result['us_per_instance']:,.0f} µs per instance, "
        f"hash chain {'intact' if result['chain_ok'] else 'BROKEN'}"
        + (f" (schema {schema} kept)" if args.keep else "")
    )


if __name__ == "__main__":
    main()

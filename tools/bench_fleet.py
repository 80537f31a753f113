"""Fleet-scale run: S scale sets x I instances fully upgraded in virtual time on SQLite.

Every set gets an automatic upgrade to a newly published version (healthy, 60 s boot),
driven by the real engine, workers and simulated fleet on the embedded SQLite store, with
the stored fleet projection following the log. Prints, per size: wall time, events
appended, events/s, projection lag when the last upgrade finished and at the end, peak RSS
and cost per instance. Each size runs in its own process so peak RSS is per size.

    .venv/bin/python tools/bench_fleet.py --sizes 100x10,1000x100,10000x100
    .venv/bin/python tools/bench_fleet.py --scale-sets 1000 --instances 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.domain.events import SimulationProfile  # noqa: E402
from engine.domain.model import (  # noqa: E402
    AutomaticOSUpgradePolicy,
    ImageReference,
    ScaleSetSpec,
    UpgradePolicy,
    UpgradeStatus,
)
from engine.logging import configure_logging  # noqa: E402
from engine.runtime.clock import VirtualClock  # noqa: E402
from engine.runtime.engine import Engine  # noqa: E402
from engine.sim.fleet import SimulatedFleet  # noqa: E402
from events import SQLiteEventStore  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402

UBUNTU = ("Canonical", "UbuntuServer", "18.04-LTS")
LOCATION = "westeurope"


def base_spec(instances: int) -> ScaleSetSpec:
    policy = UpgradePolicy(automatic=AutomaticOSUpgradePolicy(enable_automatic_os_upgrade=True))
    return ScaleSetSpec(
        "bench", "rg", "x", LOCATION, instances, ImageReference(*UBUNTU),
        policy=policy, health_probe=True,
    )  # fmt: skip


async def rollout(engine: Engine, clock: VirtualClock, scale_sets: int, instances: int) -> int:
    """Create the fleet, publish a new version, wait for every upgrade; how many completed.

    The workload shared by this benchmark and ``bench_fleet_pg.py``.
    """
    async with clock.participant():
        await engine.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
        template = base_spec(instances)
        for i in range(scale_sets):
            await engine.create_or_update_scale_set(replace(template, name=f"vmss{i:05d}"))
        await engine.publish_image_version(
            LOCATION, *UBUNTU, "1.1.0", SimulationProfile(boot_seconds=60)
        )
    done = 0
    for i in range(scale_sets):
        upgrade = await engine.wait_for_upgrade("bench", "rg", f"vmss{i:05d}")
        done += upgrade.status == UpgradeStatus.COMPLETED
        if upgrade.status != UpgradeStatus.COMPLETED:
            print(f"  vmss{i:05d}: {upgrade.status} {upgrade.error}", file=sys.stderr)
        if (i + 1) % max(1, scale_sets // 10) == 0:
            print(f"  {i + 1}/{scale_sets} scale sets finished", file=sys.stderr)
    return done


async def run(scale_sets: int, instances: int, db: Path, project: bool) -> dict[str, float]:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    fleet = SimulatedFleet(clock, seed=1)
    store = SQLiteEventStore(db, clock=clock)
    async with store, Engine(store=store, fleet=fleet, clock=clock) as engine:
        runner = ProjectionRunner(store, db) if project else None
        if runner is not None:
            await runner.start()
        started = time.perf_counter()
        done = await rollout(engine, clock, scale_sets, instances)
        head = await store.head()
        lag_done = await runner.lag() if runner is not None else 0
        if runner is not None:
            await runner.wait_for(head)
            await runner.stop()
        wall = time.perf_counter() - started
        lag_end = await runner.lag() if runner is not None else 0
        virtual_hours = (clock.now() - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds() / 3600
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "scale_sets": scale_sets, "instances": scale_sets * instances, "completed": done,
        "wall_s": wall, "events": head, "events_per_s": head / wall, "peak_rss_mib": peak_mib,
        "us_per_instance": wall / (scale_sets * instances) * 1e6, "virtual_hours": virtual_hours,
        "lag_at_done": lag_done, "lag_at_end": lag_end, "per_instance": instances,
    }  # fmt: skip


def line(result: dict[str, float]) -> str:
    """One human line for one size."""
    return (
        f"{result['scale_sets']:,.0f} scale sets x {result['per_instance']:.0f} instances: "
        f"{result['completed']:,.0f} upgrades completed "
        f"in {result['virtual_hours']:.1f} virtual hours; "
        f"wall {result['wall_s']:.1f} s, {result['events']:,.0f} events, "
        f"{result['events_per_s']:,.0f} events/s, projection lag {result['lag_at_done']:,.0f} "
        f"at last upgrade / {result['lag_at_end']:,.0f} at end, "
        f"peak RSS {result['peak_rss_mib']:,.0f} MiB, "
        f"{result['us_per_instance']:,.0f} µs per instance"
    )


def run_sizes(sizes: list[tuple[int, int]], project: bool) -> None:
    """Each size in a fresh child process (own peak RSS), then a Markdown table."""
    results = []
    for scale_sets, instances in sizes:
        command = [sys.executable, __file__, "--scale-sets", str(scale_sets)]
        command += ["--instances", str(instances), "--json"]
        command += [] if project else ["--no-projections"]
        print(f"running {scale_sets:,} x {instances} ...", file=sys.stderr, flush=True)
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(line(results[-1]), flush=True)
    base = results[0]["us_per_instance"]
    print(
        "\n| scale sets x instances | wall s | events | events/s | lag at end | peak RSS MiB "
        "| µs/instance | vs first |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['scale_sets']:,.0f} x {r['per_instance']:.0f} | {r['wall_s']:.1f} "
              f"| {r['events']:,.0f} | {r['events_per_s']:,.0f} | {r['lag_at_end']:,.0f} "
              f"| {r['peak_rss_mib']:,.0f} | {r['us_per_instance']:,.0f} "
              f"| {r['us_per_instance'] / base:.2f} |")  # fmt: skip


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``100x10,1000x100`` -> [(100, 10), (1000, 100)]."""
    sizes = []
    for part in text.split(","):
        sets, _, per = part.strip().partition("x")
        sizes.append((int(sets), int(per)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", help="comma-separated SxI sizes (e.g. 100x10,1000x100), each in its own process"
    )
    parser.add_argument("--scale-sets", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--db", type=Path, default=None, help="log file (default: a temp dir)")
    parser.add_argument("--no-projections", action="store_true", help="engine and store only")
    parser.add_argument("--json", action="store_true", help="print one JSON result line")
    args = parser.parse_args()
    if args.sizes:
        run_sizes(parse_sizes(args.sizes), not args.no_projections)
        return
    if args.scale_sets < 1 or not 1 <= args.instances <= 1000:
        parser.error("--scale-sets >= 1 and 1 <= --instances <= 1000")
    configure_logging("console", logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "fleet.sqlite"
        result = asyncio.run(run(args.scale_sets, args.instances, db, not args.no_projections))
    print(json.dumps(result) if args.json else line(result))


if __name__ == "__main__":
    main()

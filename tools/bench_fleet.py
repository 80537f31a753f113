"""Fleet-scale run: S scale sets x I instances fully upgraded in virtual time on SQLite.

Every set gets an automatic upgrade to a newly published version (healthy, 60 s boot),
driven by the real engine, workers and simulated fleet on the embedded SQLite store.
Prints wall time, events appended, events/s, peak RSS and cost per instance.

    .venv/bin/python tools/bench_fleet.py --scale-sets 1000 --instances 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.clock import VirtualClock  # noqa: E402
from engine.domain.events import SimulationProfile  # noqa: E402
from engine.domain.model import (  # noqa: E402
    AutomaticOSUpgradePolicy,
    ImageReference,
    ScaleSetSpec,
    UpgradePolicy,
    UpgradeStatus,
)
from engine.engine import Engine  # noqa: E402
from engine.logging import configure_logging  # noqa: E402
from engine.simulated_fleet import SimulatedFleet  # noqa: E402
from events import SQLiteEventStore  # noqa: E402

UBUNTU = ("Canonical", "UbuntuServer", "18.04-LTS")
LOCATION = "westeurope"


def base_spec(instances: int) -> ScaleSetSpec:
    policy = UpgradePolicy(automatic=AutomaticOSUpgradePolicy(enable_automatic_os_upgrade=True))
    return ScaleSetSpec(
        "bench", "rg", "x", LOCATION, instances, ImageReference(*UBUNTU),
        policy=policy, health_probe=True,
    )  # fmt: skip


async def run(scale_sets: int, instances: int, db: Path) -> dict[str, float]:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    fleet = SimulatedFleet(clock, seed=1)
    store = SQLiteEventStore(db, clock=clock)
    async with store, Engine(store=store, fleet=fleet, clock=clock) as engine:
        started = time.perf_counter()
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
        wall = time.perf_counter() - started
        head = await store.head()
        virtual_hours = (clock.now() - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds() / 3600
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "scale_sets": scale_sets, "instances": scale_sets * instances, "completed": done,
        "wall_s": wall, "events": head, "events_per_s": head / wall, "peak_rss_mib": peak_mib,
        "us_per_instance": wall / (scale_sets * instances) * 1e6, "virtual_hours": virtual_hours,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-sets", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--db", type=Path, default=None, help="log file (default: a temp dir)")
    args = parser.parse_args()
    if args.scale_sets < 1 or not 1 <= args.instances <= 1000:
        parser.error("--scale-sets >= 1 and 1 <= --instances <= 1000")
    configure_logging("console", logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "fleet.sqlite"
        result = asyncio.run(run(args.scale_sets, args.instances, db))
    print(
        f"{result['scale_sets']:,} scale sets x {args.instances} instances: "
        f"{result['completed']:,} upgrades completed "
        f"in {result['virtual_hours']:.1f} virtual hours; "
        f"wall {result['wall_s']:.1f} s, {result['events']:,} events, "
        f"{result['events_per_s']:,.0f} events/s, peak RSS {result['peak_rss_mib']:,.0f} MiB, "
        f"{result['us_per_instance']:,.0f} µs per instance"
    )


if __name__ == "__main__":
    main()

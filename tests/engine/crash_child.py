"""Child process of the crash test: drives 50 scale sets until each finished an upgrade.

Usage: python -m tests.engine.crash_child DB JOURNAL
Prints ``HEAD n`` as the log grows and ``DONE`` at the end. Safe to kill at any
moment and start again on the same files: it continues from the log (and the simulated
machines from their journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from engine.domain.events import SimulationProfile
from engine.domain.model import RollingUpgradePolicy
from engine.logging import configure_logging
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.sim.fleet import SimulatedFleet
from events import SQLiteEventStore, StoreClosedError
from tests.engine.harness import LOCATION, RG, SUB, T0, UBUNTU, spec

SETS = 50


def names() -> list[str]:
    return [f"set{i:02d}" for i in range(SETS)]


async def setup(engine: Engine) -> None:
    """Publish two versions and create the sets; idempotent, so a killed setup resumes."""
    versions = engine.catalog.versions(LOCATION, *UBUNTU)
    if "1.0.0" not in versions:
        await engine.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
    existing = set(engine.scale_sets())
    for i, name in enumerate(names()):
        rolling = RollingUpgradePolicy(
            max_batch_instance_percent=20 + 10 * (i % 3), pause_time_between_batches_s=30 * (i % 2)
        )
        scale_set = spec(name, 3 + (i * 7) % 28, rolling=rolling, use_rolling_policy=i % 4 == 0)
        if scale_set.key not in existing:
            await engine.create_or_update_scale_set(scale_set)
    if "1.1.0" not in versions:
        profile = SimulationProfile(
            unhealthy_instance_percent=15, boot_seconds=75, reimage_failure_percent=5
        )
        await engine.publish_image_version(LOCATION, *UBUNTU, "1.1.0", profile)


async def report(store: SQLiteEventStore) -> None:
    with contextlib.suppress(StoreClosedError):
        async for page in store.subscribe(after=await store.head(), batch_size=200).batches():
            print(f"HEAD {page[-1].position}", flush=True)


async def main(db: Path, journal: Path) -> None:
    clock = VirtualClock(T0)
    fleet = SimulatedFleet(clock, seed=5, journal=journal)
    async with SQLiteEventStore(db, clock=clock) as store:
        reporter = asyncio.create_task(report(store))
        async with Engine(store=store, fleet=fleet, clock=clock) as engine:
            async with clock.participant():  # time stands still while we set up
                await setup(engine)
            for name in names():
                await engine.wait_for_upgrade(SUB, RG, name)
        reporter.cancel()
    print("DONE", flush=True)


if __name__ == "__main__":
    configure_logging("json", logging.WARNING)
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))

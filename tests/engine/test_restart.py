"""A restarted engine continues every unfinished upgrade from the log alone.

The engine is stopped at many points of a rollout (its tasks cancelled wherever they
are, as a crash would leave them) and started again on the same SQLite file; the end
result must equal an uninterrupted run, with no instance reimaged twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.domain.events import SimulationProfile
from engine.domain.model import Health
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.sim.fleet import SimulatedFleet
from events import SQLiteEventStore
from projections.upgrade_view import expand
from tests.engine.harness import LOCATION, RG, SUB, T0, UBUNTU, spec

SETS = 6


async def _setup(engine: Engine, fleet: SimulatedFleet) -> None:
    await engine.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
    for i in range(SETS):
        await engine.create_or_update_scale_set(spec(f"set{i}", 5 + 3 * i))
    fleet.force_health(f"{SUB}/{RG}/set2", "1", Health.UNHEALTHY)
    profile = SimulationProfile(unhealthy_instance_percent=25, boot_seconds=45)
    await engine.publish_image_version(LOCATION, *UBUNTU, "1.1.0", profile)


def _done(engine: Engine) -> bool:
    return all(
        engine.scale_set(SUB, RG, f"set{i}").state.upgrades
        and engine.scale_set(SUB, RG, f"set{i}").upgrade is None
        for i in range(SETS)
    )


async def _log(path: Path) -> dict[str, list[tuple[str, Any]]]:
    async with SQLiteEventStore(path) as store:
        by_stream: dict[str, list[tuple[str, Any]]] = {}
        for event in await store.read_all(limit=1_000_000):
            by_stream.setdefault(event.stream_id, []).append(
                (event.type, event.data, event.occurred_at)
            )
    return by_stream


async def _run(
    path: Path, stops: list[int]
) -> tuple[dict[str, list[tuple[str, Any]]], SimulatedFleet]:
    """Run the scenario to the end, stopping the engine after each step count in ``stops``."""
    clock = VirtualClock(T0, autojump=False)
    fleet = SimulatedFleet(clock, seed=11)
    steps = 0
    first = True
    pending = list(stops)
    while True:
        async with SQLiteEventStore(path, clock=clock) as store:
            engine = Engine(store=store, fleet=fleet, clock=clock)
            await engine.start()
            if first:
                await _setup(engine, fleet)
                first = False
            while not (finished := _done(engine)):
                if pending and steps >= pending[0]:
                    break
                assert await clock.step(), "stalled"
                steps += 1
            await engine.stop()
        if finished:
            assert not pending, f"the run ended after {steps} steps, before stop {pending}"
            return await _log(path), fleet
        pending.pop(0)
        clock = VirtualClock(clock.now(), autojump=False)  # a new process: a new clock
        fleet.clock = clock


@pytest.mark.parametrize("stops", [[1], [2, 5, 9], [3, 6, 9, 12, 15, 18, 21, 24, 27]])
async def test_restarts_reach_the_same_end_as_an_uninterrupted_run(
    tmp_path: Path, stops: list[int]
) -> None:
    reference, _ = await _run(tmp_path / "straight.sqlite", [])
    restarted, fleet = await _run(tmp_path / "restarted.sqlite", stops)
    assert restarted.keys() == reference.keys()
    for stream, events in reference.items():
        assert restarted[stream] == events, f"{stream} differs after restarts at {stops}"
    reimages = Counter(
        (stream, item["instance_id"])
        for stream, events in restarted.items()
        for kind, data, _ in events
        for item_kind, item in expand(kind, data)  # grouped per-instance events
        if item_kind == "upgrade.instance_reimage_started"
    )
    assert len(reimages) == sum(m.reimages for m in fleet.instances.values()) > 0
    assert max(reimages.values()) == 1
    assert all(machine.reimages <= 1 for machine in fleet.instances.values())

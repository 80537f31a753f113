"""A small world for engine tests: virtual clock, in-memory log, simulated fleet, engine.

Everything runs in virtual time: waits are explicit (``wait_for_upgrade``, ``settle``,
``clock.advance``), never wall-clock sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from engine.domain.events import SimulationProfile
from engine.domain.grouping import decode_all
from engine.domain.model import (
    AutomaticOSUpgradePolicy,
    Extension,
    HealthExtension,
    ImageReference,
    RollingUpgradePolicy,
    ScaleSetSpec,
    UpgradePolicy,
)
from engine.domain.scale_set import EngineSettings
from engine.domain.upgrade import UpgradeState
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.runtime.worker import ScaleSetWorker
from engine.sim.fleet import SimulatedFleet
from events import EventStore, InMemoryEventStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
LOCATION = "westeurope"
UBUNTU = ("Canonical", "UbuntuServer", "18.04-LTS")
SUB, RG = "sub-1", "rg-1"


def spec(
    name: str = "web",
    capacity: int = 10,
    *,
    automatic: bool = True,
    rolling: RollingUpgradePolicy | None = None,
    use_rolling_policy: bool = False,
    disable_rollback: bool = False,
    deferral: bool = False,
    probe: bool = True,
    extension: HealthExtension | None = None,
    extensions: tuple[Extension, ...] = (),
    **overrides: Any,
) -> ScaleSetSpec:
    """A valid scale set model; keyword arguments change what a test is about."""
    policy = UpgradePolicy(
        mode="Automatic",
        rolling=rolling or RollingUpgradePolicy(),
        automatic=AutomaticOSUpgradePolicy(
            enable_automatic_os_upgrade=automatic,
            disable_automatic_rollback=disable_rollback,
            use_rolling_upgrade_policy=use_rolling_policy,
            os_rolling_upgrade_deferral=deferral,
        ),
    )
    base = ScaleSetSpec(
        subscription=SUB,
        resource_group=RG,
        name=name,
        location=LOCATION,
        capacity=capacity,
        image=ImageReference(*UBUNTU),
        policy=policy,
        health_probe=probe and extension is None,
        health_extension=extension,
        extensions=extensions,
    )
    return replace(base, **overrides)


@dataclass
class World:
    """The pieces of one test's engine, reachable by name."""

    clock: VirtualClock
    store: EventStore
    fleet: SimulatedFleet
    engine: Engine

    async def publish(self, version: str, **simulation: int) -> None:
        """Publish an Ubuntu 18.04 version in the test location."""
        await self.engine.publish_image_version(
            LOCATION, *UBUNTU, version, SimulationProfile(**simulation)
        )

    async def create(self, scale_set: ScaleSetSpec) -> None:
        """Create a scale set."""
        await self.engine.create_or_update_scale_set(scale_set)

    async def run_until(self, done: Callable[[], object], max_steps: int = 100_000) -> None:
        """Walk timer by timer (``autojump=False``) until ``done()`` is true."""
        await step_until(self.clock, done, max_steps)

    async def in_batch(self, name: str) -> ScaleSetWorker:
        """Step until the scale set's upgrade has a batch in progress; return its worker."""
        worker = self.engine.scale_set(SUB, RG, name)
        await self.run_until(lambda: worker.upgrade is not None and not worker.upgrade.batch_done)
        return worker

    async def finish(self, name: str, upgrade_id: str | None = None) -> UpgradeState:
        """The upgrade's end state, stepping the clock if autojump is off."""
        if not self.clock.autojump:
            worker = self.engine.scale_set(SUB, RG, name)
            if upgrade_id is None and worker.upgrade is None and worker.state.upgrades:
                upgrade_id = worker.state.upgrades[-1]  # already finished
            if upgrade_id is None:
                await self.run_until(lambda: worker.upgrade is not None)
                assert worker.upgrade is not None and worker.upgrade.request is not None
                upgrade_id = worker.upgrade.request.upgrade_id
            await self.run_until(
                lambda: (
                    (upgrade_id in worker.state.upgrades and worker.upgrade is None)
                    or (
                        worker.upgrade is not None
                        and worker.upgrade.request is not None
                        and worker.upgrade.request.upgrade_id != upgrade_id
                    )
                )
            )
        return await self.engine.wait_for_upgrade(SUB, RG, name, upgrade_id)

    async def events(self, stream_prefix: str = "") -> list[tuple[str, Any]]:
        """Every (type, decoded event) of streams starting with ``stream_prefix``."""
        out = []
        for recorded in await self.store.read_all(limit=1_000_000):
            if recorded.stream_id.startswith(stream_prefix):
                out.extend((type(e).type_name, e) for e in decode_all(recorded))
        return out


async def step_until(
    clock: VirtualClock, done: Callable[[], object], max_steps: int = 100_000
) -> None:
    """Walk a clock without autojump timer by timer until ``done()`` is true."""
    await clock.wait_quiet()
    for _ in range(max_steps):
        if done():
            return
        if not await clock.step():
            raise AssertionError("nothing left to happen, and the condition never held")
    raise AssertionError(f"condition not reached in {max_steps} steps")


@asynccontextmanager
async def world(
    *,
    seed: int = 7,
    settings: EngineSettings | None = None,
    store: EventStore | None = None,
    clock: VirtualClock | None = None,
    autojump: bool = True,
) -> AsyncIterator[World]:
    """Start an engine on a fresh in-memory log with version 1.0.0 published."""
    clock = clock or VirtualClock(T0, autojump=autojump)
    store = store or InMemoryEventStore(clock=clock)
    fleet = SimulatedFleet(clock, seed=seed)
    async with Engine(store=store, fleet=fleet, clock=clock, settings=settings) as engine:
        w = World(clock, store, fleet, engine)
        if not engine.catalog.versions(LOCATION, *UBUNTU):
            await w.publish("1.0.0")
        yield w

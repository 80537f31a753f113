"""A fleet's optional features change nothing in the log, only the work.

The same rollouts (healthy sets, a version on which instances fail and roll back, an
extension-probed set, maintenance forcing instances unhealthy mid-batch) run twice: on
the simulated fleet, whose ``steady_until`` lets workers sleep until the first probe
that can see a change and whose ``apply`` carries out a batch in one call, and on the
same fleet behind the plain ``Fleet`` protocol, where every probe is made and every
instance gets its own call. The two logs must be identical, event for event and instant
for instant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from engine.domain.events import SimulationProfile
from engine.domain.model import Health, HealthExtension, ScaleSetSpec
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.runtime.fleet import BatchFleet, HealthForecast
from engine.sim.fleet import SimulatedFleet
from events import InMemoryEventStore
from tests.engine.fleets import PassThroughFleet
from tests.engine.harness import LOCATION, RG, SUB, T0, UBUNTU, spec, step_until


class EveryProbe(PassThroughFleet):
    """The simulated fleet without forecast or batches: every probe, one call per instance."""

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """A forced health wakes the worker in both runs."""
        self.inner.watch(changed)


async def rollout(hide_forecast: bool) -> tuple[list[tuple[Any, ...]], int]:
    """Run the rollouts; return the log and how many health readings the engine made."""
    clock = VirtualClock(T0, autojump=False)
    store = InMemoryEventStore(clock=clock)
    simulated = SimulatedFleet(clock, seed=3)
    readings = 0
    read_health = simulated.read_health

    async def counted(spec: ScaleSetSpec, ids: Sequence[str]) -> dict[str, Health]:
        nonlocal readings
        readings += 1
        return await read_health(spec, ids)

    simulated.read_health = counted  # type: ignore[method-assign]
    fleet = EveryProbe(simulated) if hide_forecast else simulated
    assert isinstance(fleet, HealthForecast) != hide_forecast
    assert isinstance(fleet, BatchFleet) != hide_forecast
    async with Engine(store=store, fleet=fleet, clock=clock) as engine:
        await engine.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
        extension = HealthExtension(grace_period_s=600)
        for name, extra in (("web", {}), ("api", {}), ("ext", {"extension": extension})):
            await engine.create_or_update_scale_set(spec(name, 20, **extra))
        profile = SimulationProfile(unhealthy_instance_percent=10, boot_seconds=95)
        await engine.publish_image_version(LOCATION, *UBUNTU, "1.1.0", profile)
        await step_until(clock, lambda: mid_batch(engine, "api"))
        api = engine.scale_set(SUB, RG, "api").upgrade
        assert api is not None
        for instance in ("0", "1", "2", "3"):  # maintenance the engine did not cause
            simulated.force_health("sub-1/rg-1/api", instance, Health.UNHEALTHY)
        for instance in api.batch:  # booting now, said healthy early (simulateHealth)
            simulated.force_health("sub-1/rg-1/api", instance, Health.HEALTHY)
        for name in ("web", "api", "ext"):
            await step_until(clock, lambda n=name: finished(engine, n))  # type: ignore[misc]
        await engine.durable()
    log = [
        (r.stream_id, r.type, r.data, r.occurred_at) for r in await store.read_all(limit=1_000_000)
    ]
    return log, readings


def mid_batch(engine: Engine, name: str) -> bool:
    upgrade = engine.scale_set(SUB, RG, name).upgrade
    return upgrade is not None and upgrade.processed >= 4 and not upgrade.batch_done


def finished(engine: Engine, name: str) -> bool:
    worker = engine.scale_set(SUB, RG, name)
    return bool(worker.state.upgrades) and worker.upgrade is None


async def test_skipping_forecast_quiet_probes_leaves_the_log_unchanged() -> None:
    every_probe, probed = await rollout(hide_forecast=True)
    forecast, skipped = await rollout(hide_forecast=False)
    types = {t for _, t, _, _ in every_probe}
    assert {"upgrade.instance_events", "upgrade.batch_completed"} <= types
    assert any("rolled_back" in str(d) or "health_timeout" in str(d) for _, _, d, _ in every_probe)
    assert forecast == every_probe
    assert skipped < probed / 3  # the same outcome from a third of the readings
    assert every_probe[-1][3] - T0 > timedelta(minutes=10)

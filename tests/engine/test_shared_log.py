"""Several engines share one log: leases spread the scale sets, fencing keeps one driver.

Engines here share one process, one in-memory log, one lease board and one virtual
clock, so every step is explicit and repeatable; ``tests/test_multi_engine_pg.py`` does
the same with real processes on PostgreSQL and a SIGKILL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from engine.domain.events import SimulationProfile
from engine.domain.scale_set import EngineSettings
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine, NotOwnedHereError
from engine.scaleout.fence_audit import audit_fences
from engine.scaleout.leases import Holdings, MemoryLeaseBoard, Ownership
from engine.sim.fleet import SimulatedFleet
from events import InMemoryEventStore, RecordedEvent
from tests.engine.harness import LOCATION, RG, SUB, T0, UBUNTU, spec

SETTINGS = EngineSettings(
    first_rollout_max_delay_s=300, new_version_min_delay_s=0, new_version_max_delay_s=300
)
TTL, RENEW = 15.0, 5.0


class Cluster:
    """Engines on one log; ``admin`` takes API calls but drives nothing."""

    def __init__(self, board_type: type[MemoryLeaseBoard] = MemoryLeaseBoard) -> None:
        self.clock = VirtualClock(T0, autojump=False)
        self.store = InMemoryEventStore(clock=self.clock)
        self.board = board_type(now=self.clock.now, ttl_s=TTL)
        self.admin = self.engine("admin", claim=False)
        self.engines: list[Engine] = []

    def engine(self, name: str, *, claim: bool = True) -> Engine:
        ownership = Ownership(self.board, name, renew_s=RENEW, sleep=self.clock.sleep, claim=claim)
        fleet = SimulatedFleet(self.clock, seed=len(name))  # each engine its own view, as apart
        return Engine(
            store=self.store, fleet=fleet, clock=self.clock, settings=SETTINGS, ownership=ownership
        )

    async def start(self, count: int, sets: int, capacity: int = 10) -> None:
        await self.admin.start()
        await self.admin.publish_image_version(LOCATION, *UBUNTU, "1.0.0")
        for n in range(sets):
            await self.admin.create_or_update_scale_set(spec(f"set{n}", capacity))
        for i in range(count):
            engine = self.engine(f"engine-{i}")
            self.engines.append(engine)
            await engine.start()

    async def publish(self, version: str, boot_seconds: int = 120) -> None:
        profile = SimulationProfile(boot_seconds=boot_seconds)
        await self.admin.publish_image_version(LOCATION, *UBUNTU, version, profile)

    async def run_until(self, done: Callable[[], Awaitable[bool]], steps: int = 100_000) -> None:
        """Walk timer by timer until ``done()``; fail if nothing is left to happen."""
        await self.clock.wait_quiet()
        for _ in range(steps):
            if await done():
                return
            assert await self.clock.step(), "nothing left to happen"
        raise AssertionError(f"not reached in {steps} steps")

    async def log(self) -> list[RecordedEvent]:
        return await self.store.read_all(limit=10_000_000)

    async def finished(self) -> dict[str, str]:
        """Scale set key -> status of its last finished upgrade."""
        out = {}
        for r in await self.store.read_all(limit=10_000_000, types=["scaleset.upgrade_finished"]):
            out[r.stream_id.removeprefix("vmss-")] = r.data["status"]
        return out

    async def stop(self) -> None:
        for engine in [*self.engines, self.admin]:
            await engine.stop()


async def crash(engine: Engine) -> None:
    """What SIGKILL does to an engine: its tasks stop; no lease is handed back."""
    tasks = [*engine._background, *engine._tasks.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    engine._background.clear()


def owned(engine: Engine) -> set[str]:
    return {key for key in engine.scale_sets() if engine.drives(key)}


async def test_leases_spread_scale_sets_over_the_engines() -> None:
    cluster = Cluster()
    await cluster.start(count=3, sets=30)

    async def spread() -> bool:
        return sorted(len(owned(e)) for e in cluster.engines) == [10, 10, 10]

    await cluster.run_until(spread)
    sets = [owned(e) for e in cluster.engines]
    assert set.union(*sets) == set((await cluster.board.owners()).keys())
    assert not any(a & b for a in sets for b in sets if a is not b)
    with pytest.raises(NotOwnedHereError):  # the admin engine knows it, but drives nothing
        cluster.admin.scale_set(SUB, RG, "set0")
    with pytest.raises(NotOwnedHereError):  # commands go to the owner
        await cluster.admin.start_os_upgrade(SUB, RG, "set0")
    state = await cluster.admin.scale_set_state(SUB, RG, "set0")  # reads come from the log
    assert state.spec is not None and state.spec.name == "set0" and state.version >= 2
    assert cluster.admin.scale_sets() == sorted(set.union(*sets))
    await cluster.stop()


async def test_a_crashed_engines_sets_are_taken_over_and_every_upgrade_completes() -> None:
    cluster = Cluster()
    await cluster.start(count=3, sets=30)
    victim = cluster.engines[0]

    async def victim_mid_rollout() -> bool:
        busy = [w for w in victim._workers.values() if w.upgrade is not None]
        return len(busy) >= 5

    await cluster.publish("1.1.0")
    await cluster.run_until(victim_mid_rollout)
    lost = owned(victim)
    killed_at = cluster.clock.now()
    await crash(victim)

    async def all_done() -> bool:
        return len(await cluster.finished()) == 30

    await cluster.run_until(all_done)
    await asyncio.gather(*(e.durable() for e in cluster.engines[1:]))
    assert set((await cluster.finished()).values()) == {"Completed"}
    records = await cluster.log()
    audit = audit_fences(records)
    assert audit.ok, audit.problems
    assert audit.takeovers >= len(lost) >= 5
    taken = {
        r.stream_id.removeprefix("vmss-"): r.occurred_at
        for r in records
        if r.type == "scaleset.lease_acquired" and r.occurred_at > killed_at
    }
    assert lost <= set(taken)  # every one of the victim's sets got a new owner ...
    assert max(taken[k] for k in lost) - killed_at <= timedelta(seconds=TTL + RENEW)  # ... soon
    assert not owned(victim)  # the dead engine drives nothing
    cluster.engines = cluster.engines[1:]
    await cluster.stop()


class PausingBoard(MemoryLeaseBoard):
    """A board on which one engine's lease steps hang for a while (a long GC pause)."""

    paused: str | None = None
    pause_s: float = 0.0
    clock: VirtualClock | None = None

    async def renew_and_claim(self, engine_id: str, *, claim: bool = True) -> Holdings:
        if engine_id == self.paused and self.clock is not None:
            self.paused = None
            await self.clock.sleep(self.pause_s)  # leases expire meanwhile
        return await super().renew_and_claim(engine_id, claim=claim)


async def test_an_engine_that_lost_its_lease_while_paused_is_fenced_off() -> None:
    cluster = Cluster(PausingBoard)
    board = cluster.board
    assert isinstance(board, PausingBoard)
    board.clock = cluster.clock
    await cluster.start(count=2, sets=4, capacity=20)
    _slow, _other = cluster.engines

    async def both_busy() -> bool:
        return all(any(w.upgrade is not None for w in e._workers.values()) for e in cluster.engines)

    await cluster.publish("1.1.0", boot_seconds=240)
    await cluster.run_until(both_busy)
    board.paused, board.pause_s = "engine-0", 40 * TTL  # long enough to write late

    async def all_done() -> bool:
        return len(await cluster.finished()) == 4

    with capture_logs() as logs:
        await cluster.run_until(all_done)
    assert any(e["event"] == "fenced off by a newer lease" for e in logs), logs[-20:]
    await asyncio.gather(*(e.durable() for e in cluster.engines))
    assert set((await cluster.finished()).values()) == {"Completed"}
    audit = audit_fences(await cluster.log())
    assert audit.ok, audit.problems
    assert audit.takeovers >= 2
    await cluster.stop()  # no WorkerCrashedError: being fenced off is not a crash


class FlakyBoard(MemoryLeaseBoard):
    """A board whose first lease steps fail, as a database restart would."""

    failures: int = 2

    async def renew_and_claim(self, engine_id: str, *, claim: bool = True) -> Holdings:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("the database went away")
        return await super().renew_and_claim(engine_id, claim=claim)


async def test_a_failing_lease_step_is_retried_on_the_next_round() -> None:
    cluster = Cluster(FlakyBoard)
    with capture_logs() as logs:
        await cluster.start(count=1, sets=3)

        async def driving() -> bool:
            return len(owned(cluster.engines[0])) == 3

        await cluster.run_until(driving)
    failed = [e for e in logs if e["event"] == "lease step failed"]
    assert len(failed) == 2 and "went away" in failed[0]["error"]
    # two failed rounds, one to join, then the claim
    assert cluster.clock.now() - T0 == timedelta(seconds=3 * RENEW)
    await cluster.stop()


async def test_a_stopping_engine_hands_its_sets_over_at_the_next_lease_step() -> None:
    cluster = Cluster()
    await cluster.start(count=2, sets=10)
    leaving, staying = cluster.engines

    async def leaving_mid_rollout() -> bool:
        return any(w.upgrade is not None for w in leaving._workers.values())

    await cluster.publish("1.1.0")
    await cluster.run_until(leaving_mid_rollout)
    handed = owned(leaving)
    stopped_at = cluster.clock.now()
    await leaving.stop()  # graceful: decided work committed, leases released

    async def all_done() -> bool:
        return len(await cluster.finished()) == 10

    await cluster.run_until(all_done)
    records = await cluster.log()
    taken = {
        r.stream_id.removeprefix("vmss-"): r.occurred_at
        for r in records
        if r.type == "scaleset.lease_acquired" and r.occurred_at >= stopped_at
    }
    assert handed and handed <= set(taken)
    assert max(taken[k] for k in handed) - stopped_at <= timedelta(seconds=RENEW)  # not TTL
    assert set((await cluster.finished()).values()) == {"Completed"}
    assert audit_fences(records).ok
    cluster.engines = [staying]
    await cluster.stop()


async def test_a_scale_set_deleted_and_created_again_is_driven_again_under_a_clean_audit() -> None:
    cluster = Cluster()
    await cluster.start(count=2, sets=2)

    def driver() -> Engine | None:
        return next((e for e in cluster.engines if e.drives(f"{SUB}/{RG}/set0".lower())), None)

    async def driven() -> bool:
        return driver() is not None

    await cluster.run_until(driven)
    owner = driver()
    assert owner is not None
    await owner.delete_scale_set(SUB, RG, "set0")
    await cluster.run_until(lambda: _not(driven))
    await cluster.admin.create_or_update_scale_set(spec("set0", 10))
    await cluster.run_until(driven)
    await cluster.publish("1.1.0")

    async def upgraded() -> bool:
        return (await cluster.finished()).get(f"{SUB}/{RG}/set0".lower()) == "Completed"

    await cluster.run_until(upgraded)
    log = await cluster.log()
    tokens = [r.data["token"] for r in log if r.type == "scaleset.lease_acquired"
              and r.stream_id == f"vmss-{SUB}/{RG}/set0".lower()]  # fmt: skip
    assert len(tokens) >= 2 and tokens == sorted(set(tokens))  # a new lifetime, a higher token
    audit = audit_fences(log)
    assert audit.ok, audit.problems[:5]
    await cluster.stop()


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()

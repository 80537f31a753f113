"""The clocks: virtual time moves only when every participant is parked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from engine.domain.model import UpgradeStatus
from engine.runtime.clock import RealClock, Signal, VirtualClock
from tests.engine.harness import RG, SUB, spec, world

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_autojump_runs_hours_instantly_in_timer_order() -> None:
    clock = VirtualClock(T0)
    seen: list[tuple[str, datetime]] = []

    async def sleeper(name: str, hours: float) -> None:
        async with clock.participant():
            await clock.sleep(hours * 3600)
            seen.append((name, clock.now()))

    await asyncio.gather(sleeper("late", 3), sleeper("early", 0.5), sleeper("mid", 1))
    assert seen == [
        ("early", T0 + timedelta(minutes=30)),
        ("mid", T0 + timedelta(hours=1)),
        ("late", T0 + timedelta(hours=3)),
    ]


async def test_time_stands_still_while_a_participant_is_busy() -> None:
    clock = VirtualClock(T0)
    gate = asyncio.Event()
    times: list[datetime] = []

    async def busy() -> None:
        async with clock.participant():
            await gate.wait()  # not a clock wait: this participant is busy, not parked
            times.append(clock.now())

    async def sleeper() -> None:
        async with clock.participant():
            await clock.sleep(60)
            times.append(clock.now())

    task = asyncio.gather(busy(), sleeper())
    for _ in range(5):
        await asyncio.sleep(0)
    assert clock.now() == T0  # the busy participant holds time
    gate.set()
    await task
    assert times == [T0, T0 + timedelta(seconds=60)]


async def test_a_signal_wakes_a_sleeper_early_and_keeps_the_count() -> None:
    clock = VirtualClock(T0, autojump=False)
    wake = clock.signal()

    async def sleeper() -> datetime:
        async with clock.participant():
            await clock.sleep_until(T0 + timedelta(hours=1), wake)
            return clock.now()

    task = asyncio.ensure_future(sleeper())
    await clock.wait_quiet()
    assert clock.busy == 0
    wake.set()
    assert await task == T0
    assert clock.next_timer() is None or clock.busy == 0


async def test_step_and_advance_without_autojump() -> None:
    clock = VirtualClock(T0, autojump=False)
    fired: list[datetime] = []

    async def sleeper(seconds: int) -> None:
        async with clock.participant():
            await clock.sleep(seconds)
            fired.append(clock.now())

    tasks = [asyncio.ensure_future(sleeper(s)) for s in (10, 20, 30)]
    await clock.wait_quiet()
    assert clock.now() == T0 and fired == []
    assert await clock.step()
    assert fired == [T0 + timedelta(seconds=10)]
    await clock.advance(15)  # to T0+25: fires the 20 s timer, not the 30 s one
    assert fired == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    assert clock.now() == T0 + timedelta(seconds=25)
    assert await clock.step()
    assert not await clock.step()
    await asyncio.gather(*tasks)
    assert fired[-1] == T0 + timedelta(seconds=30)


async def test_wait_stalled_returns_when_nothing_can_happen() -> None:
    clock = VirtualClock(T0)
    async with clock.participant():
        waiter = asyncio.ensure_future(clock.wait_stalled())
        await asyncio.sleep(0)
        assert not waiter.done()  # we are busy
    await waiter


async def test_set_time_never_goes_back_and_naive_starts_are_refused() -> None:
    clock = VirtualClock(T0)
    clock.set_time(T0 - timedelta(days=1))
    assert clock.now() == T0
    clock.set_time(T0 + timedelta(days=1))
    assert clock.now() == T0 + timedelta(days=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2026, 1, 1))


async def test_real_clock_runs_at_its_speed() -> None:
    clock = RealClock(speed=10_000, start=T0)
    first = clock.now()
    await clock.sleep(5)  # 5 engine seconds = 0.5 ms of wall time at this speed
    elapsed = clock.now() - first
    assert timedelta(seconds=5) <= elapsed < timedelta(hours=1)
    wake = clock.signal()
    wake.set()
    before = clock.now()
    await clock.sleep_until(before + timedelta(days=1), wake)  # returns at once
    assert clock.now() - before < timedelta(hours=1)
    with pytest.raises(ValueError, match="speed"):
        RealClock(speed=0)


class LateClock(VirtualClock):
    """Wakes timed sleepers 3 ms after the instant they asked for, as real clocks do."""

    async def sleep_until(self, when: datetime, wake: Signal | None = None) -> None:
        await super().sleep_until(when + timedelta(milliseconds=3), wake)


async def test_an_upgrade_completes_on_a_clock_that_wakes_late() -> None:
    # Health is observed on a grid of probe instants; a worker woken a little after one
    # must still observe it (it once waited for the next one, and the next, forever).
    async with world(clock=LateClock(T0, autojump=False)) as w:
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60)
        worker = w.engine.scale_set(SUB, RG, "web")
        await w.run_until(lambda: bool(worker.state.upgrades) and worker.upgrade is None, 20_000)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "web")
        assert upgrade.status == UpgradeStatus.COMPLETED

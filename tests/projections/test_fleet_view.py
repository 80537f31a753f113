"""The read side folded from real rollouts: shapes, counts, history window, as-of queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.domain.model import RollingUpgradePolicy
from projections.fleet_view import FleetView, fleet_as_of, months_before
from tests.engine.harness import RG, SUB, spec, world

KEY = f"{SUB}/{RG}/web".lower()


@pytest.mark.parametrize(
    ("now", "since"),
    [
        (datetime(2026, 5, 15, 12, tzinfo=UTC), datetime(2026, 3, 15, 12, tzinfo=UTC)),
        (datetime(2026, 4, 30, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2028, 4, 30, tzinfo=UTC), datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 1, 31, tzinfo=UTC), datetime(2025, 11, 30, tzinfo=UTC)),
    ],
)
def test_two_months_are_calendar_months(now: datetime, since: datetime) -> None:
    assert months_before(now, 2) == since


async def test_latest_and_history_have_azures_shape_and_counts_add_up() -> None:
    async with world() as w:
        await w.create(spec("web", 10, rolling=RollingUpgradePolicy(), use_rolling_policy=True))
        await w.publish("1.1.0", unhealthy_instance_percent=30, boot_seconds=60)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "web")
        view = await fleet_as_of(w.store)
        latest = view.latest(KEY)
        assert latest is not None
        props = latest["properties"]
        assert props["runningStatus"]["code"] == upgrade.status.value
        assert props["runningStatus"]["lastAction"] == "Start"
        assert sum(props["progress"].values()) == 10
        assert props["policy"]["maxBatchInstancePercent"] == 20
        assert props["policy"]["pauseTimeBetweenBatches"] == "PT0S"
        (item,) = view.history(KEY, w.clock.now())
        hist = item["properties"]
        assert item["type"] == "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
        assert hist["startedBy"] == "Platform"
        assert hist["targetImageReference"]["exactVersion"] == "1.1.0"
        assert "endTime" in hist["runningStatus"]
        assert "completedTime" not in hist["runningStatus"]
        rolled = sum(
            1 for t, _ in await w.events("upgrade-") if t == "upgrade.instance_rolled_back"
        )
        assert hist["rollbackInfo"]["successfullyRolledbackInstanceCount"] == rolled
        assert rolled > 0


async def test_progress_adds_up_after_every_event() -> None:
    async with world() as w:
        await w.create(spec("web", 7))
        await w.publish("1.1.0", unhealthy_instance_percent=20, boot_seconds=30)
        await w.engine.wait_for_upgrade(SUB, RG, "web")
        view = FleetView()
        seen_in_progress = False
        for event in await w.store.read_all(limit=100_000):
            view.apply(event)
            latest = view.latest(KEY)
            if latest is not None:
                progress = latest["properties"]["progress"]
                assert sum(progress.values()) == 7
                seen_in_progress |= progress["inProgressInstanceCount"] > 0
        assert seen_in_progress


async def test_history_keeps_five_newest_first_within_two_months() -> None:
    async with world() as w:
        await w.create(spec("web", 2, automatic=False))
        starts = []
        for n in range(7):  # one manual upgrade every three weeks
            await w.publish(f"1.{n + 1}.0", boot_seconds=0)
            upgrade_id = await w.engine.start_os_upgrade(SUB, RG, "web")
            done = await w.engine.wait_for_upgrade(SUB, RG, "web", upgrade_id)
            starts.append(done.started_at)
            await w.clock.advance(21 * 24 * 3600)
        now = w.clock.now()
        history = (await fleet_as_of(w.store)).history(KEY, now)
        times = [
            datetime.fromisoformat(h["properties"]["runningStatus"]["startTime"]) for h in history
        ]
        # now is 147 days after the first start: 21 days after the last one, 42 after the
        # one before; the one 63 days back is outside the two calendar months (61 days)
        assert now - starts[4] > timedelta(days=62) > now - starts[5]
        assert times == [starts[6], starts[5]]  # the window, not the count, limits it here
        then = starts[5] + timedelta(seconds=1)  # as of just after the sixth one started
        wide = (await fleet_as_of(w.store, time=then)).history(KEY, then)
        assert [
            datetime.fromisoformat(h["properties"]["runningStatus"]["startTime"]) for h in wide
        ] == [starts[5], starts[4], starts[3]]


async def test_as_of_positions_match_the_view_as_it_was() -> None:
    async with world() as w:
        await w.create(spec("web", 10))
        await w.create(spec("api", 5))
        await w.publish("1.1.0", unhealthy_instance_percent=25, boot_seconds=45)
        await w.engine.wait_for_upgrade(SUB, RG, "web")
        await w.engine.wait_for_upgrade(SUB, RG, "api")
        log = await w.store.read_all(limit=100_000)
        checkpoints = {log[(len(log) - 1) * k // 11].position for k in range(12)}
        live = FleetView()
        captured = {}
        for event in log:
            live.apply(event)
            if event.position in checkpoints:
                captured[event.position] = (live.latest(KEY), live.latest(f"{SUB}/{RG}/api"))
        assert len(captured) == 12
        for position, expected in captured.items():
            past = await fleet_as_of(w.store, position=position)
            assert (past.latest(KEY), past.latest(f"{SUB}/{RG}/api")) == expected
        middle = log[len(log) // 2].occurred_at
        as_of_time = await fleet_as_of(w.store, time=middle)
        then = [e for e in log if e.occurred_at <= middle]
        assert len(then) < len(log)  # a moment in the middle of the rollouts
        assert as_of_time.position == then[-1].position
        past = FleetView()
        for event in then:
            past.apply(event)
        assert as_of_time.latest(KEY) == past.latest(KEY)
        assert as_of_time.latest(KEY) != live.latest(KEY)


async def test_history_keeps_at_most_five() -> None:
    async with world() as w:
        await w.create(spec("web", 2, automatic=False))
        starts = []
        for n in range(7):  # seven upgrades within a week
            await w.publish(f"2.{n}.0", boot_seconds=0)
            done = await w.engine.wait_for_upgrade(
                SUB, RG, "web", await w.engine.start_os_upgrade(SUB, RG, "web")
            )
            starts.append(done.started_at)
            await w.clock.advance(24 * 3600)
        history = (await fleet_as_of(w.store)).history(KEY, w.clock.now())
        times = [
            datetime.fromisoformat(h["properties"]["runningStatus"]["startTime"]) for h in history
        ]
        assert times == sorted(starts, reverse=True)[:5]

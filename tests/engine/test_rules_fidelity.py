"""Rules of the source documents that were partial or wrong (issue 15), in virtual time.

Each test drives the engine through the embedding API the way a user or the platform
would, and checks the rule as the source documents state it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from engine.domain.events import (
    AutomaticUpgradeScheduled,
    BatchCompleted,
    BatchStarted,
    HealthWaitStarted,
    PauseStarted,
    UpgradeCancelled,
)
from engine.domain.model import Health, RollingUpgradePolicy, UpgradeStatus
from engine.domain.upgrade import BEFORE, DURING, UPGRADED, UpgradeState
from projections.fleet_view import fleet_as_of
from tests.engine.harness import RG, SUB, World, spec, world


def key(name: str) -> str:
    return f"{SUB}/{RG}/{name}"


async def schedules(w: World, name: str) -> list[AutomaticUpgradeScheduled]:
    return [
        e
        for _, e in await w.events(f"vmss-{key(name)}")
        if isinstance(e, AutomaticUpgradeScheduled)
    ]


async def batches(w: World) -> list[tuple[str, ...]]:
    return [e.members for _, e in await w.events("upgrade-") if isinstance(e, BatchStarted)]


# -- rule 1: an empty scale set -------------------------------------------------------


async def test_manual_upgrade_of_an_empty_scale_set_completes_with_nothing_to_do() -> None:
    async with world() as w:
        await w.create(spec("empty", 0, automatic=False))
        await w.publish("1.1.0")
        upgrade_id = await w.engine.start_os_upgrade(SUB, RG, "empty")
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "empty", upgrade_id)
        assert upgrade.status == UpgradeStatus.COMPLETED
        assert upgrade.request is not None and upgrade.request.target.version == "1.1.0"
        assert upgrade.instances == {}
        assert upgrade.started_at == upgrade.ended_at  # nothing to wait for


# -- rule 2: later rollouts are timed from the version's publication --------------------


async def next_started(w: World, name: str, after: str | None = None) -> str:
    """Step (``autojump=False``) until the set has an upgrade after upgrade ``after``
    (after all it has had, if None) and return that one's id."""
    worker = w.engine.scale_set(SUB, RG, name)
    ids = worker.state.upgrades
    index = len(ids) if after is None else ids.index(after) + 1
    await w.run_until(lambda: len(worker.state.upgrades) > index)
    return worker.state.upgrades[index]


async def next_upgrade(w: World, name: str, after: str | None = None) -> UpgradeState:
    """The set's next upgrade (after ``after``), once it has finished."""
    return await w.finish(name, await next_started(w, name, after))


async def first_rollout(w: World, name: str, **kwargs: Any) -> UpgradeState:
    await w.create(spec(name, 10, **kwargs))
    await w.publish("1.1.0", boot_seconds=0)
    first = await next_upgrade(w, name)
    assert first.status == UpgradeStatus.COMPLETED
    return first


async def test_a_version_published_during_a_rollout_is_timed_from_its_publication() -> None:
    # A 10-minute rollout (5 batches of 2, booting 120 s each) is running when 1.3.0 comes.
    async with world(autojump=False) as w:
        await first_rollout(w, "a")
        await w.publish("1.2.0", boot_seconds=120)
        running = await next_started(w, "a")
        await w.publish("1.3.0", boot_seconds=0)
        published = w.clock.now()
        running = await w.finish("a", running)
        assert running.request is not None and running.request.target.version == "1.2.0"
        assert running.ended_at is not None and running.ended_at - published < timedelta(minutes=30)
        later = await next_upgrade(w, "a", after=running.request.upgrade_id)
        assert later.request is not None and later.request.target.version == "1.3.0"
        (timer,) = [s for s in await schedules(w, "a") if s.target_version == "1.3.0"]
        assert timer.due_at == published + timedelta(seconds=timer.delay_s)
        assert later.started_at == timer.due_at
        assert timedelta(minutes=30) <= later.started_at - published < timedelta(minutes=60)


async def test_a_version_whose_window_passed_during_a_rollout_starts_when_it_ends() -> None:
    # A rollout of over an hour (5 batches, 10-minute pauses, 4-minute boots).
    slow = RollingUpgradePolicy(pause_time_between_batches_s=600)
    async with world(autojump=False) as w:
        await first_rollout(w, "b", rolling=slow, use_rolling_policy=True)
        await w.publish("1.2.0", boot_seconds=240)
        running_id = await next_started(w, "b")
        await w.publish("1.3.0", boot_seconds=0)
        published = w.clock.now()
        running = await w.finish("b", running_id)
        assert running.ended_at is not None and running.ended_at - published >= timedelta(hours=1)
        later = await next_upgrade(w, "b", after=running_id)
        assert later.request is not None and later.request.target.version == "1.3.0"
        assert later.started_at == running.ended_at  # its window had passed: at once


async def test_a_newer_version_in_the_window_keeps_the_time_already_chosen() -> None:
    async with world(autojump=False) as w:
        await first_rollout(w, "n")
        await w.publish("1.2.0", boot_seconds=0)
        await w.clock.wait_quiet()
        timer = (await schedules(w, "n"))[-1]
        assert timer.target_version == "1.2.0"
        await w.clock.advance(10 * 60)  # still inside the 30-60 minute window
        await w.publish("1.3.0", boot_seconds=0)
        await w.clock.wait_quiet()
        newer = (await schedules(w, "n"))[-1]
        assert (newer.target_version, newer.due_at) == ("1.3.0", timer.due_at)
        second = await next_upgrade(w, "n")
        assert second.request is not None and second.request.target.version == "1.3.0"
        assert second.started_at == timer.due_at


# -- rule 3: the whole set is checked before every batch, the first included ----------


async def test_the_whole_set_is_checked_before_the_first_batch_too() -> None:
    async with world() as w:
        await w.create(spec("d", 10, deferral=True))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.advance(6 * 3600)
        worker = w.engine.scale_set(SUB, RG, "d")
        assert worker.upgrade is not None and worker.upgrade.prechecked
        for i in range(5):  # half the set goes down while the upgrade waits for approval
            w.fleet.force_health(key("d"), str(i), Health.UNHEALTHY)
        await w.engine.approve_upgrade(SUB, RG, "d")
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "d")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error is not None and upgrade.error.code == DURING
        error = upgrade.error
        assert (error.numerator, error.denominator, error.limit_percent) == (5, 10, 20)
        assert error.message == (
            "50% of the scale set's instances are unhealthy (5 of 10) - more than the "
            "threshold of 20%."
        )
        assert await batches(w) == []


async def test_approval_waits_are_not_checked_only_the_batch_start_is() -> None:
    async with world() as w:
        await w.create(spec("d", 10, deferral=True))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.advance(6 * 3600)
        for i in range(5):  # down for a while, but healthy again before the approval
            w.fleet.force_health(key("d"), str(i), Health.UNHEALTHY)
        await w.clock.advance(600)
        for i in range(5):
            w.fleet.force_health(key("d"), str(i), Health.HEALTHY)
        await w.engine.approve_upgrade(SUB, RG, "d")
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "d")
        assert upgrade.status == UpgradeStatus.COMPLETED


# -- rule 4: upgraded instances that fail later still count ---------------------------


async def test_upgraded_instances_unhealthy_after_their_wait_count_towards_the_threshold() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("t", 10))
        await w.publish("1.1.0", boot_seconds=60)
        worker = w.engine.scale_set(SUB, RG, "t")
        await w.run_until(
            lambda: worker.upgrade is not None and worker.upgrade.batches_started == 2
        )
        first = (await batches(w))[0]
        assert all(worker.upgrade.instances[i].phase == "healthy" for i in first)
        for instance_id in first:  # they passed their health wait, then went down
            w.fleet.force_health(key("t"), instance_id, Health.UNHEALTHY)
        upgrade = await w.finish("t")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error is not None and upgrade.error.code == UPGRADED
        assert (upgrade.error.numerator, upgrade.error.denominator) == (2, 4)
        assert upgrade.error.message == (
            "50% of the upgraded instances are unhealthy (2 of 4) - more than the threshold of 20%."
        )
        done = [e for _, e in await w.events("upgrade-") if isinstance(e, BatchCompleted)]
        assert done[1].unhealthy_after_upgrade == first  # the inputs of the decision
        assert len(await batches(w)) == 2


async def test_upgraded_instances_that_recover_are_not_counted() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("r", 10))
        await w.publish("1.1.0", boot_seconds=60)
        worker = w.engine.scale_set(SUB, RG, "r")
        await w.run_until(
            lambda: worker.upgrade is not None and worker.upgrade.batches_started == 2
        )
        first = (await batches(w))[0]
        for instance_id in first:
            w.fleet.force_health(key("r"), instance_id, Health.UNHEALTHY)
        await w.clock.advance(30)
        for instance_id in first:  # back before the batch ends
            w.fleet.force_health(key("r"), instance_id, Health.HEALTHY)
        upgrade = await w.finish("r")
        assert upgrade.status == UpgradeStatus.COMPLETED


# -- rule 5: the first rollout's one-time spread --------------------------------------


async def test_the_first_rollout_is_spread_even_when_the_version_comes_long_after() -> None:
    names = [f"s{i}" for i in range(6)]
    async with world() as w:
        for name in names:
            await w.create(spec(name, 2))
        await w.clock.advance(10 * 3600)  # enabled ten hours ago, nothing newer yet
        await w.publish("1.1.0", boot_seconds=0)
        published = w.clock.now()
        starts = {}
        for name in names:
            upgrade = await w.engine.wait_for_upgrade(SUB, RG, name)
            (timer,) = await schedules(w, name)
            assert timer.reason == "first rollout after enabling"
            assert upgrade.started_at == published + timedelta(seconds=timer.delay_s)
            starts[name] = upgrade.started_at - published
        assert all(timedelta(0) <= d < timedelta(hours=3) for d in starts.values())
        assert len(set(starts.values())) > 1  # spread, not all at once
        assert max(starts.values()) > timedelta(minutes=10)


async def test_a_version_already_there_when_enabling_starts_within_three_hours() -> None:
    async with world() as w:
        await w.create(spec("late", 3, automatic=False))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.advance(10 * 3600)
        enabled = w.clock.now()
        await w.engine.create_or_update_scale_set(spec("late", 3))
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "late")
        (timer,) = await schedules(w, "late")
        assert upgrade.started_at == enabled + timedelta(seconds=timer.delay_s)


# -- rule 10: a manual upgrade supersedes the pending automatic one -------------------


async def test_a_manual_upgrade_supersedes_the_pending_automatic_one() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("m", 4))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.wait_quiet()
        (timer,) = await schedules(w, "m")
        assert timer.due_at > w.clock.now()  # the automatic upgrade is still pending
        manual = await w.finish("m", await w.engine.start_os_upgrade(SUB, RG, "m"))
        assert manual.request is not None
        assert manual.status == UpgradeStatus.COMPLETED
        await w.clock.advance(4 * 3600)
        state = w.engine.scale_set(SUB, RG, "m").state
        assert state.upgrades == [manual.request.upgrade_id]
        assert state.scheduled is None
        history = (await fleet_as_of(w.store)).history(key("m"), w.clock.now())
        assert [h["properties"]["startedBy"] for h in history] == ["User"]


async def test_a_failed_manual_upgrade_leaves_the_automatic_one_to_do_the_work() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("f", 4))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.wait_quiet()
        manual_id = await w.engine.start_os_upgrade(SUB, RG, "f")
        await w.engine.cancel_upgrade(SUB, RG, "f")
        manual = await w.finish("f", manual_id)
        assert manual.status == UpgradeStatus.CANCELLED
        platform = await next_upgrade(w, "f", after=manual_id)
        assert platform.request is not None and platform.request.started_by == "Platform"
        assert platform.status == UpgradeStatus.COMPLETED
        assert platform.instances  # the instances the cancel left behind


# -- rule 11: history order for equal start times -------------------------------------


async def test_history_entries_with_equal_start_times_come_newest_first() -> None:
    async with world() as w:
        await w.create(spec("h", 2, automatic=False))
        await w.publish("1.1.0", boot_seconds=0)
        ids = []
        for _ in range(3):
            upgrade_id = await w.engine.start_os_upgrade(SUB, RG, "h")
            await w.engine.wait_for_upgrade(SUB, RG, "h", upgrade_id)
            ids.append(upgrade_id)
        await w.engine.durable()
        view = await fleet_as_of(w.store)
        listed = view.history_views(key("h"), w.clock.now())
        assert listed[0].start_time == listed[1].start_time  # the two with nothing to do
        assert [v.upgrade_id for v in listed] == ids[::-1]


# -- tests that could not fail before ---------------------------------------------------


@pytest.mark.parametrize("signal", [Health.UNKNOWN, Health.UNHEALTHY, Health.INITIALIZING])
async def test_unknown_counts_as_unhealthy_in_the_precheck(signal: Health) -> None:
    async with world() as w:
        await w.create(spec("u", 10))
        for i in range(3):
            w.fleet.force_health(key("u"), str(i), signal)
        await w.publish("1.1.0")
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "u")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error is not None and upgrade.error.code == BEFORE


async def test_unknown_counts_as_unhealthy_in_the_check_between_batches() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("k", 10))
        await w.publish("1.1.0", boot_seconds=60)
        await w.in_batch("k")
        for i in ("6", "7", "8"):
            w.fleet.force_health(key("k"), i, Health.UNKNOWN)
        upgrade = await w.finish("k")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error is not None and upgrade.error.code == DURING
        assert len(await batches(w)) == 1


async def test_a_cancel_counts_what_succeeded_failed_and_never_started() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("c", 10))
        await w.publish("1.1.0", boot_seconds=60, unhealthy_instance_percent=100)
        await w.in_batch("c")
        await w.engine.cancel_upgrade(SUB, RG, "c")
        cancelled_at = w.clock.now()
        upgrade = await w.finish("c")
        assert upgrade.status == UpgradeStatus.CANCELLED
        assert (upgrade.last_action, upgrade.last_action_time) == ("Cancel", cancelled_at)
        (end,) = [e for _, e in await w.events("upgrade-") if isinstance(e, UpgradeCancelled)]
        assert (end.succeeded, end.failed, end.not_started) == (0, 2, 8)


async def test_batches_are_numbered_in_order_and_pause_only_when_asked() -> None:
    async with world() as w:
        await w.create(spec("b", 12))
        await w.publish("1.1.0", boot_seconds=0)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "b")
        events = [e for _, e in await w.events("upgrade-")]
        started = [e for e in events if isinstance(e, BatchStarted)]
        completed = [e.index for e in events if isinstance(e, BatchCompleted)]
        assert [e.index for e in started] == completed == [0, 1, 2, 3, 4, 5]
        # instance ids are numbers: "10" comes after "9", not after "1"
        assert [e.members for e in started] == [(str(i), str(i + 1)) for i in range(0, 12, 2)]
        assert {e.batch_size for e in started} == {2}
        waits = [e.instances for e in events if isinstance(e, HealthWaitStarted)]
        assert waits == [e.members for e in started]
        assert not any(isinstance(e, PauseStarted) for e in events)  # PT0S: no pause at all
        assert all(p.health == Health.HEALTHY for p in upgrade.instances.values())


async def test_one_update_domain_is_one_batch() -> None:
    async with world() as w:
        one = spec("sf", 4, service_fabric=True, service_fabric_durability="Gold", update_domains=1)
        await w.create(one)
        await w.publish("1.1.0", boot_seconds=0)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "sf")
        assert upgrade.status == UpgradeStatus.COMPLETED
        assert await batches(w) == [("0", "1", "2", "3")]


async def test_upgrade_ids_are_24_hex_digits_fixed_by_the_set_and_its_log() -> None:
    ids = []
    for _ in range(2):
        async with world() as w:
            await w.create(spec("m", 2, automatic=False))
            ids.append(await w.engine.start_os_upgrade(SUB, RG, "m"))
    assert ids[0] == ids[1]  # a replayed log names its upgrades the same
    assert re.fullmatch(r"[0-9a-f]{24}", ids[0])

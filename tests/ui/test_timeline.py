"""The timeline answers every position exactly as a fold from position 0 would.

A real rollout on the engine (sets that complete, one that faults, one cancelled, one
scaled out and one deleted) makes the log. At every position the timeline's tally (from
a snapshot folded forward, in random order, so the cache of recent moments is used
backwards and forwards) must equal a tally folded from 0, and every set's status and
phase counts must match the canonical read model (``FleetView``) at that position.
"""

from __future__ import annotations

import random

import pytest

from engine.domain.model import RollingUpgradePolicy
from engine.ui import timeline as timeline_module
from engine.ui.tally import NO_UPGRADE, FleetTally
from engine.ui.timeline import Timeline
from events import EventStore, RecordedEvent
from projections.fleet_view import FleetView
from tests.engine.harness import RG, SUB, World, spec, world

Summary = tuple[dict[str, object], dict[str, int], list[int]]


def summary(tally: FleetTally) -> Summary:
    return dict(tally.sets), dict(tally.status_counts), list(tally.phase_counts)


async def rollout(w: World) -> None:
    """Several upgrades that end every way an upgrade can end."""
    rolling = RollingUpgradePolicy(max_batch_instance_percent=34)
    for name, capacity in (("web", 9), ("api", 6), ("batch", 5), ("gone", 3)):
        await w.create(spec(name, capacity, automatic=False, rolling=rolling))
    await w.publish("1.1.0", boot_seconds=60)
    web = await w.engine.start_os_upgrade(SUB, RG, "web")
    batch = await w.engine.start_os_upgrade(SUB, RG, "batch")
    await w.in_batch("batch")
    await w.engine.cancel_upgrade(SUB, RG, "batch")
    await w.finish("web", web)
    await w.finish("batch", batch)
    await w.create(spec("web", 12, automatic=False, rolling=rolling))
    await w.engine.delete_scale_set(SUB, RG, "gone")
    await w.publish("1.2.0", boot_seconds=60, unhealthy_instance_percent=100)
    api = await w.engine.start_os_upgrade(SUB, RG, "api")
    assert (await w.finish("api", api)).status.value == "Faulted"


async def log_of(store: EventStore) -> list[RecordedEvent]:
    return await store.read_all(limit=1_000_000)


def check_against_fleet_view(tally: FleetTally, view: FleetView) -> None:
    """The tally's rows say what the canonical read model says."""
    assert set(tally.sets) == set(view.instances)
    for key, row in tally.sets.items():
        latest = view.latest_view(key)
        if latest is None:
            assert row.status == NO_UPGRADE
            assert row.phases == (len(view.instances[key]), 0, 0, 0, 0)
            continue
        progress = latest.progress
        assert row.status == latest.code
        assert row.phases == (
            0,
            progress["pendingInstanceCount"],
            progress["inProgressInstanceCount"],
            progress["successfulInstanceCount"],
            progress["failedInstanceCount"],
        )


async def test_every_position_matches_a_fold_from_zero_and_the_read_model() -> None:
    async with world(autojump=False) as w:
        await rollout(w)
        events = await log_of(w.store)
        expected: dict[int, Summary] = {0: summary(FleetTally())}
        tally, view = FleetTally(), FleetView()
        for event in events:
            tally.apply(event)
            view.apply(event)
            check_against_fleet_view(tally, view)
            expected[event.position] = summary(tally)
        statuses = {row.status for row in tally.sets.values()}
        assert statuses == {"Completed", "Cancelled", "Faulted"}

        timeline = Timeline(w.store, every=7)
        await timeline.start()
        assert timeline.head == events[-1].position
        assert timeline.snapshot_count > 5
        positions = list(expected)
        random.Random(3).shuffle(positions)
        for position in positions:
            assert summary(await timeline.at(position)) == expected[position], position
        assert summary(timeline.live) == expected[events[-1].position]
        await timeline.stop()


async def test_snapshots_thin_out_on_a_long_log_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timeline_module, "MAX_SNAPSHOTS", 8)
    async with world(autojump=False) as w:
        await rollout(w)
        events = await log_of(w.store)
        timeline = Timeline(w.store, every=1)
        await timeline.start()
        assert timeline.snapshot_count <= 8
        assert timeline.every > 1
        reference = FleetTally()
        for event in events:
            reference.apply(event)
            assert summary(await timeline.at(event.position)) == summary(reference)
        await timeline.stop()


async def test_the_timeline_follows_new_events_and_maps_times_to_positions() -> None:
    async with world(autojump=False) as w:
        rolling = RollingUpgradePolicy()
        await w.create(spec("web", 5, automatic=False, rolling=rolling))
        timeline = Timeline(w.store)
        await timeline.start()
        before = timeline.head
        assert await timeline.wait_beyond(before, 0.01) == before  # nothing new: times out
        await w.publish("1.1.0", boot_seconds=60)
        upgrade = await w.engine.start_os_upgrade(SUB, RG, "web")
        await w.finish("web", upgrade)
        head = await w.store.head()
        assert await timeline.wait_beyond(before, 5) > before
        await w.store.until(head)
        while timeline.head < head:  # bounded by the log: each wait returns a larger head
            await timeline.wait_beyond(timeline.head, 5)
        assert timeline.live.sets[f"{SUB}/{RG}/web".lower()].status == "Completed"
        events = await log_of(w.store)
        for event in events:
            found = timeline.position_at(timeline.time_at(event.position) or 0)
            assert timeline.time_at(found) == timeline.time_at(event.position)
            assert found >= event.position
        assert timeline.position_at(0) == 0
        assert timeline.time_at(0) is None
        await timeline.stop()

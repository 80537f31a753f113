"""Per-instance events stored as groups fold exactly as the events one by one would."""

from __future__ import annotations

from datetime import timedelta

from engine.domain.events import (
    DOMAIN_EVENTS,
    BatchStarted,
    InstanceEvents,
    InstanceHealthChanged,
    InstanceHealthy,
    InstanceReimaged,
)
from engine.domain.grouping import decode_all, expand, pack
from engine.domain.model import Health, UpgradeStatus
from engine.domain.upgrade import UpgradeState
from events import InMemoryEventStore
from projections.upgrade_view import UpgradeView
from tests.engine.harness import RG, SUB, T0, spec, world


def test_pack_groups_runs_of_one_kind_and_keeps_everything_else_in_order() -> None:
    started = BatchStarted(0, ("1", "2"), 2, "next 2", 0, 10)
    events = [
        started,
        InstanceHealthy("1"),
        InstanceHealthy("2"),
        InstanceHealthChanged("3", Health.UNHEALTHY),
        InstanceHealthy("4"),
        InstanceReimaged("5", "1.1.0", ("ext",)),
        InstanceReimaged("6", "1.1.0"),
    ]
    packed = pack(events)
    assert [type(e) for e in packed] == [
        BatchStarted,
        InstanceEvents,
        InstanceHealthChanged,
        InstanceHealthy,
        InstanceEvents,
    ]
    assert [e for p in packed for e in expand(p)] == events


async def test_a_group_survives_the_log_with_its_items_typed() -> None:
    events = [
        InstanceHealthChanged("3", Health.INITIALIZING),
        InstanceHealthChanged("4", Health.UNHEALTHY),
    ]
    [group] = pack(events)
    store = InMemoryEventStore()
    await store.append("upgrade-x", [DOMAIN_EVENTS.to_new_event(group)], 0)
    [recorded] = await store.read_stream("upgrade-x")
    assert recorded.type == "upgrade.instance_events"
    assert decode_all(recorded) == events


async def test_a_grouped_upgrade_stream_folds_like_its_events_one_by_one() -> None:
    async with world() as w:
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60, unhealthy_instance_percent=30)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "web")
        assert upgrade.request is not None
        stream = f"upgrade-{upgrade.request.upgrade_id}"
        grouped = await w.store.read_stream(stream)
    assert any(r.type == "upgrade.instance_events" for r in grouped)

    # The same history written one record per event, at the same times.
    single = InMemoryEventStore()
    for recorded in grouped:
        for event in decode_all(recorded):
            new = DOMAIN_EVENTS.to_new_event(event, occurred_at=recorded.occurred_at)
            await single.append(stream, [new], await _version(single, stream))
    ungrouped = await single.read_stream(stream)
    assert len(ungrouped) > len(grouped)

    folded = UpgradeState()
    for recorded in grouped:
        folded.apply(DOMAIN_EVENTS.decode(recorded), recorded.occurred_at)
    one_by_one = UpgradeState()
    for recorded in ungrouped:
        one_by_one.apply(DOMAIN_EVENTS.decode(recorded), recorded.occurred_at)
    assert folded.version == len(grouped)  # the stream version counts records
    folded.version = one_by_one.version
    assert folded == one_by_one
    assert folded.status in (UpgradeStatus.COMPLETED, UpgradeStatus.FAULTED)

    views = [UpgradeView(upgrade.request.upgrade_id) for _ in range(2)]
    for view, records in zip(views, (grouped, ungrouped), strict=True):
        for recorded in records:
            view.apply(recorded)
    assert views[0].latest() == views[1].latest()
    assert views[0].history_item() == views[1].history_item()
    assert views[0].end_time is not None and views[0].end_time > T0 + timedelta(minutes=1)


async def _version(store: InMemoryEventStore, stream: str) -> int:
    return len(await store.read_stream(stream))

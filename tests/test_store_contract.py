"""The EventStore contract: every backend must pass every test in this file."""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from events import (
    ConcurrencyError,
    DuplicateEventIdError,
    EventRegistry,
    EventTooLargeError,
    FixedClock,
    InvalidEventError,
    InvalidExpectedVersionError,
    InvalidStreamNameError,
    Metadata,
    NewEvent,
    StoreClosedError,
)
from tests.backends import Backend, opened

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def ev(n: int = 0, kind: str = "test.happened", **extra: Any) -> NewEvent:
    return NewEvent(kind, {"n": n, **extra})


async def test_append_assigns_versions_and_positions(store: Any) -> None:
    assert await store.append("a", [ev(1), ev(2)], 0) == [1, 2]
    assert await store.append("b", [ev(3)], 0) == [3]
    assert await store.append("a", [ev(4)], 2) == [4]
    events = await store.read_stream("a")
    assert [(e.stream_version, e.position, e.data["n"]) for e in events] == [
        (1, 1, 1),
        (2, 2, 2),
        (3, 4, 4),
    ]
    assert await store.head() == 4
    assert await store.stream_version("a") == 3
    assert await store.stream_version("never-written") == 0


async def test_envelope_round_trips(backend: Backend, tmp_path: Path) -> None:
    clock = FixedClock(T0)
    async with opened(backend, tmp_path, clock=clock) as store:
        event = NewEvent(
            "upgrade.started",
            {"nested": {"b": [1, 2.5, None, True]}, "text": "ü"},
            schema_version=3,
            metadata=Metadata(correlation_id="c-1", causation_id="e-0", actor="User"),
            occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        )
        await store.append("upgrade-1", [event], 0)
        (got,) = await store.read_stream("upgrade-1")
    assert got.event_id == event.event_id
    assert got.type == "upgrade.started"
    assert got.schema_version == 3
    assert got.data == {"nested": {"b": [1, 2.5, None, True]}, "text": "ü"}
    assert got.metadata == Metadata(correlation_id="c-1", causation_id="e-0", actor="User")
    assert got.occurred_at == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert got.recorded_at == T0


async def test_occurred_at_defaults_to_the_store_clock(backend: Backend, tmp_path: Path) -> None:
    async with opened(backend, tmp_path, clock=FixedClock(T0)) as store:
        await store.append("s", [ev()], 0)
        (got,) = await store.read_stream("s")
    assert got.occurred_at == T0


async def test_wrong_expected_version_raises_and_writes_nothing(store: Any) -> None:
    await store.append("s", [ev(1)], 0)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s", [ev(2), ev(3)], 0)
    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("s", 0, 1)
    with pytest.raises(ConcurrencyError) as ahead:
        await store.append("s", [ev(2)], 5)
    assert (ahead.value.expected, ahead.value.actual) == (5, 1)
    assert await store.head() == 1
    assert [e.data["n"] for e in await store.read_stream("s")] == [1]


async def test_expected_version_none_appends_at_any_version(store: Any) -> None:
    await store.append("s", [ev(1)], None)
    await store.append("s", [ev(2)], None)
    assert [e.stream_version for e in await store.read_stream("s")] == [1, 2]


async def test_concurrent_appends_at_the_same_version_only_one_wins(store: Any) -> None:
    results = await asyncio.gather(
        *(store.append("s", [ev(i)], 0) for i in range(10)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, list)]
    losers = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert await store.stream_version("s") == 1


async def test_retry_with_same_event_ids_returns_original_positions(store: Any) -> None:
    await store.append("other", [ev(0)], 0)
    batch = [ev(1), ev(2)]
    first = await store.append("s", batch, 0)
    await store.append("other", [ev(3)], 1)
    again = await store.append("s", batch, 0)  # stale expected version: still a retry
    also = await store.append("s", batch, None)
    assert first == again == also == [2, 3]
    assert await store.head() == 4
    assert await store.stream_version("s") == 2


async def test_concurrent_retries_of_one_append_write_it_once(store: Any) -> None:
    batch = [ev(1), ev(2), ev(3)]
    results = await asyncio.gather(*(store.append("s", batch, None) for _ in range(5)))
    assert all(r == [1, 2, 3] for r in results)
    assert await store.head() == 3


async def test_reusing_some_ids_is_refused_whole(store: Any) -> None:
    batch = [ev(1), ev(2)]
    await store.append("s", batch, 0)
    with pytest.raises(DuplicateEventIdError):
        await store.append("s", [batch[0], ev(9)], None)
    with pytest.raises(DuplicateEventIdError):
        await store.append("t", batch, None)  # same ids, other stream
    changed = [NewEvent(b.type, {"n": 99}, event_id=b.event_id) for b in batch]
    with pytest.raises(DuplicateEventIdError):
        await store.append("s", changed, None)  # same ids, other content
    assert await store.head() == 2


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"x": {1, 2}}, InvalidEventError),
        ({"x": object()}, InvalidEventError),
        ({"x": math.nan}, InvalidEventError),
        ({"deep": [{"x": math.inf}]}, InvalidEventError),
        ({1: "non-string key"}, InvalidEventError),
        ({"x": b"bytes"}, InvalidEventError),
        ({"x": "y" * (1024 * 1024)}, EventTooLargeError),
    ],
)
async def test_a_bad_event_rejects_the_whole_batch(
    store: Any, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await store.append("s", [ev(1), NewEvent("test.bad", bad), ev(3)], 0)
    assert await store.head() == 0
    assert await store.stream_version("s") == 0


@pytest.mark.parametrize(
    "events",
    [
        [],
        "not events",
        NewEvent("single.event", {}),
        [{"type": "dict", "data": {}}],
        [NewEvent("", {})],
        [NewEvent("has space", {})],
        [NewEvent("9starts.with.digit", {})],
        [NewEvent("ok", ["not", "an", "object"])],  # type: ignore[arg-type]
        [NewEvent("ok", {}, schema_version=0)],
        [NewEvent("ok", {}, occurred_at=datetime(2026, 1, 1))],  # naive datetime
        [NewEvent("ok", {}, metadata=Metadata(actor=object()))],  # type: ignore[arg-type]
    ],
)
async def test_malformed_events_are_refused(store: Any, events: Any) -> None:
    with pytest.raises(InvalidEventError):
        await store.append("s", events, None)
    assert await store.head() == 0


async def test_duplicate_ids_inside_one_batch_are_refused(store: Any) -> None:
    event = ev(1)
    with pytest.raises(InvalidEventError):
        await store.append("s", [event, event], 0)
    assert await store.head() == 0


async def test_an_event_just_under_the_size_limit_is_stored(store: Any) -> None:
    big = {"x": "y" * (1024 * 1024 - 100)}
    await store.append("s", [NewEvent("test.big", big)], 0)
    (got,) = await store.read_stream("s")
    assert got.data == big


@pytest.mark.parametrize(
    "name",
    ["", " ", "a b", "tab\there", "ü\u00a0x", "zero\u200bwidth", "\ud800", "x" * 513, "ü" * 513,
     None, 7],
)  # fmt: skip
async def test_bad_stream_names_are_refused(store: Any, name: Any) -> None:
    with pytest.raises(InvalidStreamNameError):
        await store.append(name, [ev()], None)
    assert await store.head() == 0


@pytest.mark.parametrize("name", ["vmss-s/grüße/web", "vmss-s/\u212aelvin/w", "g/\u0663" * 100])
async def test_unicode_stream_names_are_stored_and_verified(store: Any, name: str) -> None:
    await store.append(name, [ev()], 0)
    (got,) = await store.read_stream(name)
    assert got.stream_id == name
    assert await store.stream_version(name) == 1
    assert (await store.verify()).ok


@pytest.mark.parametrize("expected", [-1, "0", 1.0, True])
async def test_bad_expected_versions_are_refused(store: Any, expected: Any) -> None:
    with pytest.raises(InvalidExpectedVersionError):
        await store.append("s", [ev()], expected)
    assert await store.head() == 0


async def test_read_stream_version_range(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(1, 11)], 0)
    middle = await store.read_stream("s", from_version=3, to_version=5)
    assert [e.stream_version for e in middle] == [3, 4, 5]
    assert [e.stream_version for e in await store.read_stream("s", from_version=9)] == [9, 10]
    assert await store.read_stream("s", from_version=11) == []
    assert await store.read_stream("missing") == []


async def test_read_all_pages_filters_and_bounds(store: Any) -> None:
    for i in range(10):
        await store.append(f"s{i % 3}", [ev(i, kind="even" if i % 2 == 0 else "odd")], None)
    assert [e.position for e in await store.read_all(after=3, limit=4)] == [4, 5, 6, 7]
    evens = await store.read_all(types=["even"])
    assert [e.data["n"] for e in evens] == [0, 2, 4, 6, 8]
    assert [e.position for e in await store.read_all(after=2, up_to=5)] == [3, 4, 5]
    assert await store.read_all(types=[]) == []
    assert await store.read_all(after=10) == []


async def test_read_results_are_copies(store: Any) -> None:
    await store.append("s", [ev(1)], 0)
    (first,) = await store.read_stream("s")
    first.data["n"] = 666
    (second,) = await store.read_stream("s")
    assert second.data["n"] == 1


async def test_two_writers_never_interleave_within_a_batch(store: Any) -> None:
    """The eventsourcing race test: 2 writers x 1000 events, batches stay contiguous."""
    batches: dict[str, list[list[int]]] = {"w1": [], "w2": []}

    async def writer(name: str) -> None:
        version = 0
        for _ in range(100):
            positions = await store.append(name, [ev(i) for i in range(10)], version)
            version += 10
            batches[name].append(positions)

    await asyncio.gather(writer("w1"), writer("w2"))
    every = sorted(p for written in batches.values() for batch in written for p in batch)
    assert every == list(range(1, 2001))
    for written in batches.values():
        for batch in written:
            assert batch == list(range(batch[0], batch[0] + 10))
    log = await store.read_all(limit=5000)
    assert [e.position for e in log] == list(range(1, 2001))
    for name in batches:  # stream order equals global (commit) order
        versions = [e.stream_version for e in log if e.stream_id == name]
        assert versions == list(range(1, 1001))


async def test_subscriber_sees_history_then_live_events_without_gaps(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(5)], 0)
    subscription = store.subscribe(after=0, batch_size=7)
    seen: list[int] = []

    async def consume(total: int) -> None:
        async for event in subscription:
            seen.append(event.position)
            if len(seen) == total:
                return

    async def produce() -> None:
        for i in range(50):
            await store.append(f"p{i % 4}", [ev(i), ev(i)], None)

    await asyncio.gather(consume(105), produce())
    assert seen == list(range(1, 106))
    assert subscription.position == 105


async def test_filtered_subscription_advances_past_other_types(store: Any) -> None:
    await store.append("s", [ev(1, kind="other")] * 1, 0)
    await store.append("s", [ev(2, kind="wanted"), ev(3, kind="other")], 1)
    subscription = store.subscribe(after=0, types=["wanted"])
    first = await anext(subscription)
    assert first.data["n"] == 2
    waiter = asyncio.ensure_future(anext(subscription))
    await store.append("s", [ev(4, kind="other")], 3)
    await store.until(4)
    assert not waiter.done()
    await store.append("s", [ev(5, kind="wanted")], 4)
    second = await waiter
    assert (second.data["n"], second.position) == (5, 5)


async def test_subscription_batches_cover_everything_once(store: Any) -> None:
    for i in range(30):
        await store.append("s", [ev(i)], i)
    seen: list[int] = []
    subscription = store.subscribe(after=10, batch_size=8)
    async for page in subscription.batches():
        seen.extend(e.position for e in page)
        if seen[-1] == 30:
            break
    assert seen == list(range(11, 31))
    assert subscription.position == 30


async def test_until_waits_for_a_position(store: Any) -> None:
    waiter = asyncio.ensure_future(store.until(3))
    await store.append("s", [ev(1)], 0)
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.append("s", [ev(2), ev(3)], 1)
    assert await waiter >= 3
    assert await store.until(1) >= 3  # already reached: returns at once


async def test_upcasters_turn_old_schemas_current_on_read(backend: Backend, tmp_path: Path) -> None:
    registry = EventRegistry()

    @registry.register("instance.reimaged", version=3)
    @dataclass(frozen=True)
    class InstanceReimaged:
        instance_id: str
        image_version: str
        zone: str

    @registry.upcaster("instance.reimaged", 1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"instance_id": data["instance"], "image_version": data["version"]}

    @registry.upcaster("instance.reimaged", 2)
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "zone": "none"}

    async with opened(backend, tmp_path, registry=registry) as store:
        await store.append(
            "vmss-1",
            [
                NewEvent("instance.reimaged", {"instance": "0", "version": "1.0"}, 1),
                NewEvent("instance.reimaged", {"instance_id": "1", "image_version": "2.0"}, 2),
                registry.to_new_event(InstanceReimaged("2", "3.0", "1")),
            ],
            0,
        )
        events = await store.read_stream("vmss-1")
        live = await anext(store.subscribe(after=0))
        report = await store.verify()
    assert [e.schema_version for e in events] == [3, 3, 3]
    assert [registry.decode(e) for e in events] == [
        InstanceReimaged("0", "1.0", "none"),
        InstanceReimaged("1", "2.0", "none"),
        InstanceReimaged("2", "3.0", "1"),
    ]
    assert live.schema_version == 3
    assert report.ok  # the stored (old) bytes are untouched


async def test_verify_accepts_an_untouched_log(store: Any) -> None:
    for i in range(20):
        await store.append(f"s{i % 3}", [ev(i), ev(i + 100)], None)
    report = await store.verify()
    assert report.ok
    assert report.checked == 40
    assert report.first_bad_position is None


async def _fill(store: Any) -> None:
    for i in range(10):
        await store.append(f"s{i % 2}", [ev(i)], None)


async def test_verify_finds_an_edited_event(store: Any, backend: Backend) -> None:
    await _fill(store)
    await backend.edit_data(store, 6, b'{"n":666}')
    report = await store.verify()
    assert not report.ok
    assert report.first_bad_position == 6
    assert report.checked == 5


async def test_verify_finds_a_deleted_event(store: Any, backend: Backend) -> None:
    await _fill(store)
    await backend.delete_row(store, 4)
    report = await store.verify()
    assert (report.ok, report.first_bad_position) == (False, 4)


async def test_verify_finds_two_swapped_events(store: Any, backend: Backend) -> None:
    await _fill(store)
    await backend.swap_rows(store, 3, 8)
    report = await store.verify()
    assert (report.ok, report.first_bad_position) == (False, 3)


async def test_verify_reports_progress(store: Any) -> None:
    await _fill(store)
    calls: list[tuple[int, int]] = []
    await store.verify(progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (10, 10)


async def test_a_closed_store_refuses_work(backend: Backend, tmp_path: Path) -> None:
    async with opened(backend, tmp_path) as store:
        await store.append("s", [ev()], 0)
        waiter = asyncio.ensure_future(store.until(99))
        await asyncio.sleep(0)
    with pytest.raises(StoreClosedError):
        await waiter
    with pytest.raises(StoreClosedError):
        await store.append("s", [ev()], None)
    with pytest.raises(StoreClosedError):
        await store.read_all()


async def test_event_ids_are_client_generated_uuid7(store: Any) -> None:
    event = ev()
    await store.append("s", [event], 0)
    (got,) = await store.read_stream("s")
    assert got.event_id == event.event_id
    assert got.event_id.version == 7
    assert isinstance(got.event_id, uuid.UUID)

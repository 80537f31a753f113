"""Ids, clocks, the head watch and the hash: the small pieces the stores are built from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from events import FixedClock, StoreClosedError, uuid7
from events.clock import from_micros, to_micros
from events.hashing import GENESIS_HASH, event_hash
from events.head_watch import HeadWatch


def test_uuid7_layout_and_order() -> None:
    fixed = uuid7(unix_ms=1_700_000_000_000, random_bytes=bytes(range(10)))
    assert fixed.version == 7
    assert fixed.variant == "specified in RFC 4122"
    assert fixed == uuid7(unix_ms=1_700_000_000_000, random_bytes=bytes(range(10)))
    assert int(fixed.hex[:12], 16) == 1_700_000_000_000
    earlier, later = uuid7(unix_ms=1000), uuid7(unix_ms=1001)
    assert earlier.bytes < later.bytes  # byte order follows time: index-friendly
    assert len({uuid7() for _ in range(10_000)}) == 10_000
    with pytest.raises(ValueError, match="10 bytes"):
        uuid7(random_bytes=b"short")
    with pytest.raises(ValueError, match="48 bits"):
        uuid7(unix_ms=-1)


def test_micros_round_trip_and_naive_times_are_refused() -> None:
    when = datetime(2026, 11, 22, 18, 46, 33, 123456, tzinfo=UTC)
    assert from_micros(to_micros(when)) == when
    assert from_micros(to_micros(when - timedelta(days=20_000))) == when - timedelta(days=20_000)
    with pytest.raises(ValueError, match="timezone-aware"):
        to_micros(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        FixedClock(datetime(2026, 1, 1))


def test_the_hash_covers_every_field() -> None:
    fields = (1, "s", 1, b"\x01" * 16, "t", 1, 10, 20, b"{}", b"{}")
    base = event_hash(GENESIS_HASH, *fields)
    for index in range(len(fields)):
        changed = list(fields)
        value = changed[index]
        changed[index] = (
            value + 1
            if isinstance(value, int)
            else value + (b"x" if isinstance(value, bytes) else "x")
        )
        assert event_hash(GENESIS_HASH, *changed) != base, f"field {index} is not covered"
    assert event_hash(b"\x01" * 32, *fields) != base
    # length prefixes: moving a byte from one field to the next changes the hash
    assert event_hash(GENESIS_HASH, 1, "ab", 1, b"", "c", 1, 1, 1, b"", b"") != event_hash(
        GENESIS_HASH, 1, "a", 1, b"", "bc", 1, 1, 1, b"", b""
    )


async def test_head_watch_wakes_waiters_once_per_advance() -> None:
    watch = HeadWatch(head=5)
    assert await watch.wait_until(5) == 5
    first = asyncio.ensure_future(watch.wait_beyond(5))
    second = asyncio.ensure_future(watch.wait_until(8))
    await asyncio.sleep(0)
    watch.advance(6)
    assert await first == 6
    await asyncio.sleep(0)
    assert not second.done()
    watch.advance(4)  # going back is ignored
    assert watch.head == 6
    watch.advance(9)
    assert await second == 9
    closed = asyncio.ensure_future(watch.wait_until(100))
    await asyncio.sleep(0)
    watch.close()
    with pytest.raises(StoreClosedError):
        await closed

"""An in-memory ``EventStore`` with exactly the semantics of the durable backends.

Fast and dependency-free for unit tests; it keeps the same hash chain, so tamper
detection and ``verify`` behave identically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

import orjson

from events.append_rules import StoredId, check_expected, retry_positions
from events.clock import Clock, SystemClock, to_micros
from events.encoding import EncodedEvent, check_expected_version, check_stream_name, encode_batch
from events.envelope import NewEvent, RecordedEvent
from events.errors import StoreClosedError
from events.fencing import Fence, check_fence, check_scope, fence_refusal, record
from events.hashing import GENESIS_HASH, event_hash
from events.head_watch import HeadWatch
from events.registry import EventRegistry
from events.store import ProgressCallback
from events.subscription import Subscription
from events.verify import ChainVerifier, StoredRow, VerifyReport


class InMemoryEventStore:
    """Holds the log in Python lists; nothing survives the process."""

    def __init__(
        self, *, clock: Clock | None = None, registry: EventRegistry | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self._registry = registry
        self._rows: list[StoredRow] = []
        self._events: list[RecordedEvent] = []
        self._streams: dict[str, list[int]] = {}
        self._ids: dict[bytes, int] = {}
        self._fences: dict[str, int] = {}  # scope -> highest fencing token appended with
        self._watch = HeadWatch()
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> InMemoryEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the event store is closed")

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        fence: Fence | None = None,
    ) -> list[int]:
        """See ``EventStore.append``."""
        self._check_open()
        check_stream_name(stream_id)
        expected = check_expected_version(expected_version)
        fence = check_fence(fence)
        batch = encode_batch(events)
        async with self._lock:
            found = {
                e.event_id: self._stored_id(self._ids[e.event_id])
                for e in batch
                if e.event_id in self._ids
            }
            original = retry_positions(stream_id, batch, found)
            if original is not None:
                return original
            refusal = fence_refusal(fence, self._fences)
            if refusal is not None:
                raise refusal
            versions = self._streams.setdefault(stream_id, [])
            check_expected(stream_id, expected, len(versions))
            positions = [
                self._store(stream_id, len(versions) + 1 + i, e) for i, e in enumerate(batch)
            ]
            versions.extend(positions)
            record(fence, self._fences)
        self._watch.advance(positions[-1])
        return positions

    async def fence_token(self, scope: str) -> int:
        """See ``EventStore.fence_token``."""
        self._check_open()
        return self._fences.get(check_scope(scope), 0)

    def _stored_id(self, position: int) -> StoredId:
        row = self._rows[position - 1]
        return StoredId(row[1], row[2], row[0], row[4], row[8])

    def _store(self, stream_id: str, version: int, event: EncodedEvent) -> int:
        position = len(self._rows) + 1
        recorded = to_micros(self._clock.now())
        occurred = recorded if event.occurred_us is None else event.occurred_us
        prev = self._rows[-1][10] if self._rows else GENESIS_HASH
        fields = (
            position,
            stream_id,
            version,
            event.event_id,
            event.type,
            event.schema_version,
            occurred,
            recorded,
            event.data,
            event.metadata,
        )
        digest = event_hash(prev, *fields)
        self._rows.append((*fields, digest))
        self._ids[event.event_id] = position
        self._events.append(self._to_event((*fields, digest)))
        return position

    def _to_event(self, row: StoredRow) -> RecordedEvent:
        return RecordedEvent(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
            orjson.loads(row[8]), row[9],
        )  # fmt: skip

    def _out(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        # Hand out fresh copies so callers mutating ``data`` cannot change the log.
        copies = [self._to_event(self._rows[e.position - 1]) for e in events]
        if self._registry is None:
            return copies
        return [self._registry.upcast(e) for e in copies]

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        """See ``EventStore.read_stream``."""
        self._check_open()
        check_stream_name(stream_id)
        positions = self._streams.get(stream_id, [])
        stop = len(positions) if to_version is None else max(0, min(to_version, len(positions)))
        start = max(from_version, 1) - 1
        return self._out([self._events[p - 1] for p in positions[start:stop]])

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Collection[str] | None = None,
        up_to: int | None = None,
    ) -> list[RecordedEvent]:
        """See ``EventStore.read_all``."""
        self._check_open()
        return self._read_page(after, limit, frozenset(types) if types is not None else None, up_to)

    def _read_page(
        self, after: int, limit: int, types: frozenset[str] | None, up_to: int | None
    ) -> list[RecordedEvent]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        end = len(self._events) if up_to is None else min(up_to, len(self._events))
        picked: list[RecordedEvent] = []
        for event in self._events[max(after, 0) : max(end, 0)]:
            if types is None or event.type in types:
                picked.append(event)
                if len(picked) == limit:
                    break
        return self._out(picked)

    async def _page(
        self, after: int, limit: int, types: frozenset[str] | None, up_to: int
    ) -> list[RecordedEvent]:
        self._check_open()
        return self._read_page(after, limit, types, up_to)

    async def head(self) -> int:
        """See ``EventStore.head``."""
        self._check_open()
        return len(self._rows)

    async def stream_version(self, stream_id: str) -> int:
        """See ``EventStore.stream_version``."""
        self._check_open()
        return len(self._streams.get(check_stream_name(stream_id), []))

    def subscribe(
        self, *, after: int = 0, types: Collection[str] | None = None, batch_size: int = 1000
    ) -> Subscription:
        """See ``EventStore.subscribe``."""
        self._check_open()
        return Subscription(
            self._page, self._watch, after=after, types=types, batch_size=batch_size
        )

    async def until(self, position: int) -> int:
        """See ``EventStore.until``."""
        self._check_open()
        return await self._watch.wait_until(position)

    async def verify(self, progress: ProgressCallback | None = None) -> VerifyReport:
        """See ``EventStore.verify``."""
        self._check_open()
        verifier = ChainVerifier()
        verifier.feed(self._rows)
        if progress is not None:
            progress(verifier.checked, len(self._rows))
        return verifier.report()

    async def close(self) -> None:
        """Close the store; waiting subscribers get ``StoreClosedError``."""
        self._closed = True
        self._watch.close()

    # Test support: deliberate tampering, so the contract suite can prove detection.

    def tamper_replace_row(self, position: int, row: StoredRow) -> None:
        """Overwrite the stored row at ``position`` (tests only)."""
        self._rows[position - 1] = row
        self._events[position - 1] = self._to_event(row)

    def tamper_delete_row(self, position: int) -> None:
        """Remove the row at ``position`` without renumbering (tests only)."""
        del self._rows[position - 1]
        del self._events[position - 1]

    def raw_row(self, position: int) -> StoredRow:
        """Return the row at ``position`` exactly as stored (tests only)."""
        return self._rows[position - 1]

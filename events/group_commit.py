"""Group commit, shared by the durable backends: what one transaction of appends writes.

The SQLite and PostgreSQL stores both queue concurrent appends and commit them together.
How they reach the database differs; what a group writes does not: each append gets
its rows (positions, versions, hash chain) or its own error, decided here without I/O,
so both backends give every caller exactly the same answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from events.append_rules import StoredId, check_expected, retry_positions
from events.encoding import EncodedEvent, check_expected_version, check_stream_name, encode_batch
from events.envelope import NewEvent
from events.errors import EventStoreError
from events.fencing import Fence, check_fence, fence_refusal, record
from events.hashing import event_hash

Row = tuple[int, int, int, bytes, str, int, int, int, bytes, bytes, bytes]
"""(position, stream_key, stream_version, event_id, type, schema_version, occurred_us,
recorded_us, data, metadata, hash): one events row as the durable backends store it."""


@dataclass(slots=True)
class Append:
    """One caller's append waiting for the writer."""

    stream_id: str
    batch: list[EncodedEvent]
    expected: int | None
    future: asyncio.Future[list[int]]
    fence: Fence | None = None


@dataclass(slots=True)
class GroupPlan:
    """What one group transaction will write, decided before anything is written.

    ``versions`` maps each stream name to ``(stream_key, version)``; key 0 means the
    stream is not stored yet and gets ``next_key`` when it is first written.
    ``fences`` holds the recorded token of every scope the group's fences name (0 if
    none), as read when planning; ``plan_group`` raises them as it accepts appends, so a
    later append of the group sees an earlier one's raise. ``fence_writes`` then says
    what the transaction must record.
    """

    head: int
    last_hash: bytes
    next_key: int
    versions: dict[str, tuple[int, int]]
    rows: list[Row] = field(default_factory=list)
    new_streams: list[tuple[int, str]] = field(default_factory=list)
    results: dict[int, list[int] | BaseException] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    fences_read: dict[str, int] = field(default_factory=dict)
    fenced_scopes: set[str] = field(default_factory=set)

    def fence_writes(self) -> list[tuple[str, int, int]]:
        """``(scope, token read, token after)`` for each scope of an accepted fenced append.

        The read token lets a backend check, in the writing transaction, that the
        fence it planned from is still the recorded one.
        """
        return [(s, self.fences_read.get(s, 0), self.fences[s]) for s in sorted(self.fenced_scopes)]


class AppendQueue:
    """The appends waiting for a store's one writer task, and that task's loop.

    Callers queue their (validated, encoded) append and wait; the writer takes as many
    queued appends as fit in a group and commits them together. If the writer stops,
    every caller still waiting gets the store's error instead of waiting forever.
    """

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._pending: deque[Append] = deque()
        self._wakeup = asyncio.Event()

    async def put(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        fence: Fence | None = None,
    ) -> list[int]:
        """Queue one append; return its positions once its group has committed."""
        check_stream_name(stream_id)
        expected = check_expected_version(expected_version)
        fence = check_fence(fence)
        batch = encode_batch(events)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append(Append(stream_id, batch, expected, future, fence))
        self._wakeup.set()
        return await future

    def wake(self) -> None:
        """Make an idle writer look at ``keep_going`` again (the store is closing)."""
        self._wakeup.set()

    async def run_writer(
        self,
        commit: Callable[[list[Append]], Awaitable[None]],
        keep_going: Callable[[], bool],
        stopped: Callable[[BaseException], EventStoreError],
    ) -> None:
        """Commit groups until the queue is empty and ``keep_going()`` is false.

        On any failure (or cancellation) ``stopped`` gives the error every waiting
        caller receives; it is called inside the ``except`` block, so it can log.
        """
        group: list[Append] = []
        try:
            while True:
                if not self._pending:
                    if not keep_going():
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                group = take_group(self._pending, self.max_events)
                if group:
                    await commit(group)
        except BaseException as exc:
            error = stopped(exc)
            for item in [*group, *self._pending]:
                settle(item.future, error)
            self._pending.clear()
            raise


def take_group(pending: deque[Append], max_events: int) -> list[Append]:
    """Pop queued appends (skipping cancelled ones) up to ``max_events`` events.

    A single append larger than the limit still forms a group of its own.
    """
    group: list[Append] = []
    size = 0
    while pending and (not group or size + len(pending[0].batch) <= max_events):
        item = pending.popleft()
        if item.future.cancelled():
            continue
        group.append(item)
        size += len(item.batch)
    return group


def conflicts(group: list[Append], versions: dict[str, tuple[int, int]]) -> bool:
    """True if an append expects another version than the group would leave it at.

    Walks the group in order, so a caller may queue several appends to one stream
    (each expecting the version the previous one produces) and still take the fast path.
    """
    current = {name: version for name, (_, version) in versions.items()}
    for item in group:
        actual = current[item.stream_id]
        if item.expected is not None and item.expected != actual:
            return True
        current[item.stream_id] = actual + len(item.batch)
    return False


def fence_scopes(group: list[Append]) -> set[str]:
    """The scopes the group's fences name (empty for an unfenced group: nothing to read)."""
    return {item.fence.scope for item in group if item.fence is not None}


def fenced_out(group: list[Append], fences: dict[str, int]) -> bool:
    """True if an append's token is below the recorded one or one raised before it.

    Walks the group in order, as ``conflicts`` does. A refusal sends the group to the
    careful path: the append may be a retry of one committed while its token was
    current, and only looked-up ids can tell.
    """
    if not fences:
        return False
    current = dict(fences)
    for item in group:
        if fence_refusal(item.fence, current) is not None:
            return True
        record(item.fence, current)
    return False


def plan_group(
    plan: GroupPlan, group: list[Append], found: dict[bytes, StoredId], recorded: int
) -> GroupPlan:
    """Decide what each append of ``group`` gets, rows or an error, and fill ``plan``.

    ``found`` holds the already stored ids of the group (looked up only on the careful
    path); an append whose ids are all stored, as the same append, is a retry and gets
    its original positions. Then the fence is checked (against ``plan.fences``, raised
    by the appends accepted before), then the expected version.
    """
    plan.fences_read = dict(plan.fences)
    for index, item in enumerate(group):
        try:
            if found:
                mine = {e.event_id: found[e.event_id] for e in item.batch if e.event_id in found}
                original = retry_positions(item.stream_id, item.batch, mine)
                if original is not None:
                    plan.results[index] = original
                    continue
            refusal = fence_refusal(item.fence, plan.fences)
            if refusal is not None:
                raise refusal
            key, version = plan.versions[item.stream_id]
            if item.expected is not None and item.expected != version:
                check_expected(item.stream_id, item.expected, version)
        except EventStoreError as exc:
            plan.results[index] = exc
            continue
        plan.results[index] = _add_rows(plan, item, key, version, recorded)
        if item.fence is not None:
            record(item.fence, plan.fences)
            plan.fenced_scopes.add(item.fence.scope)
    return plan


def _add_rows(plan: GroupPlan, item: Append, key: int, version: int, recorded: int) -> list[int]:
    if key == 0:
        key = plan.next_key
        plan.next_key += 1
        plan.new_streams.append((key, item.stream_id))
    positions = []
    prev = plan.last_hash
    position = plan.head
    for event in item.batch:
        position += 1
        version += 1
        occurred = recorded if event.occurred_us is None else event.occurred_us
        digest = event_hash(
            prev, position, item.stream_id, version, event.event_id, event.type,
            event.schema_version, occurred, recorded, event.data, event.metadata,
        )  # fmt: skip
        plan.rows.append(
            (position, key, version, event.event_id, event.type, event.schema_version,
             occurred, recorded, event.data, event.metadata, digest)
        )  # fmt: skip
        positions.append(position)
        prev = digest
    plan.head, plan.last_hash = position, prev
    plan.versions[item.stream_id] = (key, version)
    return positions


def settle(future: asyncio.Future[list[int]], result: list[int] | BaseException) -> None:
    """Hand one caller its positions or its error (unless it stopped waiting)."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)

"""Catch-up subscriptions: history first, then live events, never skipping one.

The subscription reads pages from the durable log and only uses ``HeadWatch`` as a
wake-up; a missed wake-up costs latency, never an event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from events.envelope import RecordedEvent
from events.head_watch import HeadWatch

PageReader = Callable[[int, int, frozenset[str] | None, int], Awaitable[list[RecordedEvent]]]
"""``read(after, limit, types, up_to)``: one page of the global log."""


class Subscription:
    """An async iterator over the log from a position on, for as long as it is used.

    ``position`` is how far the log has been scanned and delivered; a consumer that
    stores it with its own state can resume exactly there.
    """

    def __init__(
        self,
        read_page: PageReader,
        watch: HeadWatch,
        *,
        after: int,
        types: Collection[str] | None,
        batch_size: int,
    ) -> None:
        if after < 0:
            raise ValueError("after must be >= 0")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._read_page = read_page
        self._watch = watch
        self._cursor = after
        self._types = frozenset(types) if types is not None else None
        self._batch_size = batch_size
        self._buffer: deque[RecordedEvent] = deque()
        self._delivered = after

    @property
    def position(self) -> int:
        """The position up to which every (matching) event has been delivered."""
        return self._cursor if not self._buffer else self._delivered

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RecordedEvent:
        while not self._buffer:
            await self._fill()
        event = self._buffer.popleft()
        self._delivered = event.position
        return event

    async def batches(self) -> AsyncIterator[list[RecordedEvent]]:
        """Yield whole pages instead of single events (cheaper for bulk consumers).

        After a page is yielded, ``position`` covers it, including filtered-out events.
        """
        while True:
            if self._buffer:
                page = list(self._buffer)
                self._buffer.clear()
            else:
                page = await self._next_page()
            if page:
                self._delivered = page[-1].position
                yield page

    async def _fill(self) -> None:
        self._buffer.extend(await self._next_page())

    async def _next_page(self) -> list[RecordedEvent]:
        head = self._watch.head
        if head <= self._cursor:
            head = await self._watch.wait_beyond(self._cursor)
        page = await self._read_page(self._cursor, self._batch_size, self._types, head)
        if len(page) == self._batch_size:
            self._cursor = page[-1].position
        else:
            self._cursor = head  # everything matching up to head has been read
        return page

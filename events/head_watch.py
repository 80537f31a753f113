"""Wake-ups for readers waiting on new commits, without polling.

A store calls ``advance`` after each commit; subscribers and ``until`` waiters sleep on
an ``asyncio.Event`` that is replaced each time, so one commit wakes every waiter once.
"""

from __future__ import annotations

import asyncio

from events.errors import StoreClosedError


class HeadWatch:
    """The highest committed position, and a way to wait for it to move."""

    def __init__(self, head: int = 0) -> None:
        self._head = head
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def head(self) -> int:
        """The highest position known to be committed and readable."""
        return self._head

    def advance(self, head: int) -> None:
        """Record a new committed head and wake everyone waiting."""
        if head > self._head:
            self._head = head
            self._wake()

    def close(self) -> None:
        """Wake all waiters with ``StoreClosedError``; later waits fail at once."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_beyond(self, position: int) -> int:
        """Return the head as soon as it is greater than ``position``."""
        return await self.wait_until(position + 1)

    async def wait_until(self, position: int) -> int:
        """Return the head as soon as it is at least ``position``."""
        while self._head < position:
            if self._closed:
                raise StoreClosedError("the event store was closed while waiting")
            await self._changed.wait()
        return self._head

"""A fleet-wide limit on concurrent upgrades, fair (first come, first served) and
aware of the virtual clock, so waiting for a slot never stops simulated time."""

from __future__ import annotations

from collections import deque

from engine.runtime.clock import EngineClock, Signal


class UpgradeSlots:
    """At most ``limit`` holders at once; ``None`` means no limit."""

    def __init__(self, clock: EngineClock, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("max_concurrent_upgrades must be >= 1")
        self._clock = clock
        self._limit = limit
        self._holders: set[str] = set()
        self._queue: deque[tuple[str, Signal]] = deque()

    async def acquire(self, holder: str) -> None:
        """Wait for a slot for ``holder`` (re-entrant: a holder already in passes)."""
        if holder in self._holders:
            return
        if self._limit is None or (len(self._holders) < self._limit and not self._queue):
            self._holders.add(holder)
            return
        signal = self._clock.signal()
        self._queue.append((holder, signal))
        await signal.wait()

    def release(self, holder: str) -> None:
        """Give the slot back and hand it to the next in line."""
        self._holders.discard(holder)
        while self._queue and (self._limit is None or len(self._holders) < self._limit):
            nxt, signal = self._queue.popleft()
            self._holders.add(nxt)
            signal.set()

"""The log's fleet at any position, fast: snapshots every N events, folded forward.

Folding a large log from position 0 for every moment the dashboard asks about is far too
slow (tens of thousands of events a second). The ``Timeline`` folds the log once, follows
it through one catch-up subscription, and keeps a ``FleetTally`` snapshot every
``every`` events. A past moment is the nearest snapshot at or before it (or a recently
answered moment, which makes stepping cheap) folded forward through at most ``every``
events read from the store. When snapshots grow past ``MAX_SNAPSHOTS`` every other one is
dropped and the spacing doubles, which bounds memory on any log length.

It also keeps each position's engine time (as a running maximum, so time order follows
log order) to turn a time into a position and back.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from bisect import bisect_right
from collections import OrderedDict

import structlog

from engine.ui.tally import FleetTally
from events import EventStore, RecordedEvent
from events.errors import StoreClosedError

log = structlog.get_logger("osupgrade.ui")

SNAPSHOT_EVERY = 2000
MAX_SNAPSHOTS = 256
RECENT_MOMENTS = 16
PAGE = 5000


class Timeline:
    """The fleet tally now, at snapshots, and at any past position on request."""

    def __init__(self, store: EventStore, *, every: int = SNAPSHOT_EVERY) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.store = store
        self.every = every
        self.live = FleetTally()
        self._snapshots: list[FleetTally] = [self.live.snapshot()]
        self._snapshot_positions: list[int] = [0]
        self._since_snapshot = 0
        self._positions = array("q")
        self._times = array("q")  # running maximum of occurred_us, one per position
        self._recent: OrderedDict[int, FleetTally] = OrderedDict()
        self._changed = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.folded = 0

    @property
    def head(self) -> int:
        """The last position folded into the live tally."""
        return self.live.position

    @property
    def snapshot_count(self) -> int:
        """How many snapshots are kept (for the docs' measurements)."""
        return len(self._snapshots)

    async def start(self) -> None:
        """Follow the log from position 0; returns once the log as it is now is folded."""
        if self._task is None:
            target = await self.store.head()
            self._task = asyncio.create_task(self._follow(target), name="ui-timeline")
        waiter = asyncio.ensure_future(self._caught_up.wait())
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            self._task.result()  # the follower failed before catching up: say why
            raise RuntimeError("the timeline stopped before it caught up with the log")

    async def stop(self) -> None:
        """Stop following the log."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, target: int) -> None:
        if target == 0:
            self._caught_up.set()
        try:
            async for page in self.store.subscribe(after=0, batch_size=PAGE).batches():
                self._fold(page)
                if self.head >= target:
                    self._caught_up.set()
        except StoreClosedError:
            log.info("the log closed; the dashboard stops following it", head=self.head)

    def _fold(self, page: list[RecordedEvent]) -> None:
        live = self.live
        for event in page:
            live.apply(event)
            self._positions.append(event.position)
            self._times.append(live.time_us)
            self._since_snapshot += 1
            if self._since_snapshot >= self.every:
                self._snapshot()
        self.folded += len(page)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _snapshot(self) -> None:
        self._snapshots.append(self.live.snapshot())
        self._snapshot_positions.append(self.live.position)
        self._since_snapshot = 0
        if len(self._snapshots) > MAX_SNAPSHOTS:
            self._snapshots = self._snapshots[::2]
            self._snapshot_positions = self._snapshot_positions[::2]
            self.every *= 2

    async def wait_beyond(self, position: int, within: float) -> int:
        """The head once it passes ``position``, or the head as it is after ``within`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.head <= position:
                    await self._changed.wait()
        return self.head

    async def at(self, position: int) -> FleetTally:
        """The fleet as of ``position`` (clamped to the head). Never mutate the result."""
        if position >= self.head:
            return self.live
        cached = self._recent.get(position)
        if cached is not None:
            self._recent.move_to_end(position)
            return cached
        tally = self._base(position).snapshot()
        after = tally.position
        while after < position:
            page = await self.store.read_all(after=after, limit=PAGE, up_to=position)
            if not page:
                break
            for event in page:
                tally.apply(event)
            after = page[-1].position
        tally.position = position
        self._remember(position, tally)
        return tally

    def _base(self, position: int) -> FleetTally:
        """The nearest snapshot or recent moment at or before ``position``."""
        index = bisect_right(self._snapshot_positions, position) - 1
        best = self._snapshots[max(index, 0)]
        for moment, tally in self._recent.items():
            if best.position < moment <= position:
                best = tally
        return best

    def _remember(self, position: int, tally: FleetTally) -> None:
        self._recent[position] = tally
        while len(self._recent) > RECENT_MOMENTS:
            self._recent.popitem(last=False)

    def time_at(self, position: int) -> int | None:
        """The engine time (µs) the log had reached at ``position``; None before any."""
        index = bisect_right(self._positions, position) - 1
        return self._times[index] if index >= 0 else None

    def position_at(self, time_us: int) -> int:
        """The last position whose engine time is at or before ``time_us`` (0 if none)."""
        index = bisect_right(self._times, time_us) - 1
        return self._positions[index] if index >= 0 else 0

    def first_time(self) -> int | None:
        """The engine time of the first event, if any."""
        return self._times[0] if self._times else None

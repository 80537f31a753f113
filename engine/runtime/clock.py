"""The engine's clocks: one injectable notion of time for every decision and timer.

``VirtualClock`` runs hours of rollout in milliseconds and deterministically: time moves
only when every *participant* (a worker, a command in flight) is parked on something the
clock knows about - a timer, or a ``Signal`` that another participant will set. Then it
jumps straight to the next due timer (trio's ``MockClock`` with ``autojump_threshold=0``,
made safe for thread-backed I/O such as aiosqlite: a participant awaiting the database
is not parked, so time cannot move under it).

``RealClock`` follows the wall clock, optionally sped up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

log = structlog.get_logger("osupgrade.clock")


class EngineClock(Protocol):
    """What the engine needs from a clock."""

    def now(self) -> datetime:
        """The current engine time (aware UTC)."""
        ...

    async def sleep_until(self, when: datetime, wake: Signal | None = None) -> None:
        """Return once the engine time is at least ``when``, or earlier if ``wake`` is set."""
        ...

    def signal(self) -> Signal:
        """A one-shot wake-up that participants can wait on without stopping time."""
        ...

    def participant(self) -> AbstractAsyncContextManager[None]:
        """Context manager marking the current task as doing engine work."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of engine time."""
        ...


class Signal:
    """A resettable wake-up; waiting on it parks the waiter (time may move meanwhile)."""

    def __init__(self, clock: VirtualClock | None) -> None:
        self._clock = clock
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        """True if set and not cleared since."""
        return self._set

    def set(self) -> None:
        """Wake every waiter; they count as busy from this moment on."""
        self._set = True
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            _wake(future, self._clock)

    def clear(self) -> None:
        """Reset so that the next ``wait`` blocks again."""
        self._set = False

    def _add(self, future: asyncio.Future[None]) -> None:
        self._waiters.append(future)

    async def wait(self) -> None:
        """Wait until set; the caller is parked meanwhile."""
        if self._set:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await _parked(future, self._clock)


def _wake(future: asyncio.Future[None], clock: VirtualClock | None) -> None:
    """Resolve a parked waiter exactly once, counting it busy again."""
    if not future.done():
        future.set_result(None)
        if clock is not None:
            clock._unpark(1)


async def _parked(future: asyncio.Future[None], clock: VirtualClock | None) -> None:
    if clock is not None:
        clock._park()
    try:
        await future
    except BaseException:
        # Cancelled while parked (asyncio cancels the awaited future too): undo the
        # accounting, unless a wake-up got there first (it unparked already).
        if not future.done() or future.cancelled():
            future.cancel()
            if clock is not None:
                clock._unpark(1)
        raise


class Participation:
    """One participant's registration; released once, on exit or by ``release()``."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock: VirtualClock | None = clock
        clock._enter()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Stop counting as a participant (idempotent)."""
        if self._clock is not None:
            clock, self._clock = self._clock, None
            clock._exit()


class VirtualClock:
    """Simulated time that jumps to the next timer whenever all participants are parked."""

    def __init__(self, start: datetime, *, autojump: bool = True) -> None:
        if start.tzinfo is None:
            raise ValueError("VirtualClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._timers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._participants = 0
        self._parked = 0
        self._autojump = autojump
        self._jump_scheduled = False
        self._quiet = asyncio.Event()
        self._activity = asyncio.Event()

    def now(self) -> datetime:
        """The simulated current time."""
        return self._now

    def signal(self) -> Signal:
        """A wake-up that keeps the parked/busy accounting exact."""
        return Signal(self)

    def participant(self) -> Participation:
        """Mark work as engine work: time stands still while it runs (not parked).

        It counts from this call on, not from ``async with``: a task created now but
        not yet running must already hold time still.
        """
        return Participation(self)

    def _enter(self) -> None:
        self._participants += 1
        self._quiet.clear()
        self._activity.set()

    def _exit(self) -> None:
        self._participants -= 1
        self._check_quiet()

    @property
    def autojump(self) -> bool:
        """Whether time jumps by itself when everything is parked."""
        return self._autojump

    @property
    def busy(self) -> int:
        """How many participants are running (not parked)."""
        return self._participants - self._parked

    def next_timer(self) -> datetime | None:
        """When the earliest pending timer is due, if any."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    async def sleep_until(self, when: datetime, wake: Signal | None = None) -> None:
        """Park until the simulated time reaches ``when`` or ``wake`` is set."""
        if when <= self._now or (wake is not None and wake.is_set()):
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (when, next(self._seq), future))
        if wake is not None:
            wake._add(future)
        await _parked(future, self)

    async def sleep(self, seconds: float) -> None:
        """Park for ``seconds`` of simulated time."""
        await self.sleep_until(self._now + timedelta(seconds=seconds))

    async def wait_quiet(self) -> None:
        """Wait until every participant is parked (the engine has nothing to do now)."""
        while True:
            while self.busy > 0:
                self._quiet.clear()
                await self._quiet.wait()
            await asyncio.sleep(0)  # let a just-scheduled jump or wake-up land
            if self.busy <= 0:
                return

    async def wait_stalled(self) -> None:
        """Return when nothing can ever happen again: all parked and no timer pending.

        Lets a test fail fast instead of hanging when it waits for something that the
        engine will never do.
        """
        while True:
            await self.wait_quiet()
            if self.busy <= 0 and self.next_timer() is None:
                return
            self._activity.clear()
            await self._activity.wait()

    async def step(self) -> bool:
        """Wait until quiet, then fire the earliest due timers; False if there are none.

        With ``autojump=False`` this is how a test walks through a rollout one timer at
        a time and looks at (or changes) the world in between.
        """
        await self.wait_quiet()
        due = self.next_timer()
        if due is None:
            return False
        self._fire_due(due)
        await self.wait_quiet()
        return True

    async def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds``, firing every timer due on the way in order.

        After each step it waits until the engine is quiet again, so everything due by
        the new time has been done when this returns. (With autojump on, time may run
        further by itself; ``advance`` then only guarantees "at least".)
        """
        target = self._now + timedelta(seconds=seconds)
        while True:
            await self.wait_quiet()
            due = self.next_timer()
            if due is None or due > target:
                break
            self._fire_due(due)
        self._now = max(self._now, target)
        return self._now

    def set_time(self, when: datetime) -> None:
        """Resume at ``when`` (e.g. the last time recorded in the log); never goes back."""
        self._now = max(self._now, when.astimezone(UTC))

    # -- accounting ----------------------------------------------------------------

    def _park(self) -> None:
        self._parked += 1
        self._check_quiet()

    def _unpark(self, count: int) -> None:
        self._parked -= count
        self._activity.set()

    def _check_quiet(self) -> None:
        if self.busy > 0:
            return
        self._quiet.set()
        if self._autojump and not self._jump_scheduled:
            self._jump_scheduled = True
            asyncio.get_running_loop().call_soon(self._jump)

    def _jump(self) -> None:
        self._jump_scheduled = False
        if self.busy > 0 or self._participants == 0:
            return
        due = self.next_timer()
        if due is not None:
            self._fire_due(due)

    def _fire_due(self, due: datetime) -> None:
        self._now = max(self._now, due)
        while self._timers and self._timers[0][0] <= due:
            _, _, future = heapq.heappop(self._timers)
            _wake(future, self)

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)


class RealClock:
    """Wall-clock time from a start point, optionally running ``speed`` times faster.

    ``origin_wall`` (a ``time.time()`` value) says when ``start`` was: processes given
    the same start, origin and speed agree on the time, so engines in several processes
    can take over each other's work. Without it the origin is this process's start.
    """

    def __init__(
        self,
        *,
        speed: float = 1.0,
        start: datetime | None = None,
        origin_wall: float | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._speed = speed
        self._origin = (start or datetime.now(UTC)).astimezone(UTC)
        # one monotonic origin, shifted by how long ago the shared wall origin was
        ago = 0.0 if origin_wall is None else time.time() - origin_wall
        self._origin_mono = time.monotonic() - ago

    def now(self) -> datetime:
        """The current (possibly sped-up) time."""
        elapsed = (time.monotonic() - self._origin_mono) * self._speed
        return self._origin + timedelta(seconds=elapsed)

    def signal(self) -> Signal:
        """A plain wake-up (no accounting is needed in real time)."""
        return Signal(None)

    @asynccontextmanager
    async def participant(self) -> AsyncIterator[None]:
        """Nothing to account for in real time."""
        yield

    async def sleep_until(self, when: datetime, wake: Signal | None = None) -> None:
        """Sleep until ``when`` in this clock's time, or until ``wake`` is set."""
        while (left := (when - self.now()).total_seconds()) > 0:
            if wake is None:
                await asyncio.sleep(left / self._speed)
                continue
            if wake.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), left / self._speed)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        await self.sleep_until(self.now() + timedelta(seconds=seconds))

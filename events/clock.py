"""The clock the event log reads ``recorded_at`` (and defaults ``occurred_at``) from.

It lives in the lowest layer so that the store and the engine share one notion of
time: the engine injects its virtual or real clock and the log records that time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Clock(Protocol):
    """Anything that can tell the current time as an aware UTC datetime."""

    def now(self) -> datetime:
        """Return the current time (timezone-aware, UTC)."""
        ...


class SystemClock:
    """Wall-clock time; the default when nothing else is injected."""

    def now(self) -> datetime:
        """Return the operating system's current UTC time."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still until told to move; for tests and replays."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = start

    def now(self) -> datetime:
        """Return the time last set."""
        return self._now

    def set(self, when: datetime) -> None:
        """Move the clock to ``when`` (any direction; the caller decides)."""
        if when.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = when


def to_micros(when: datetime) -> int:
    """Encode an aware datetime as integer microseconds since the Unix epoch.

    Integers keep the stored form exact and cheap to compare and hash.
    """
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return (when - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """Decode integer microseconds since the epoch back into an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)

"""Typed errors of the event log.

Every failure a caller can act on has its own class, so callers catch what they mean
(a concurrency conflict is retried, bad input is reported) instead of parsing messages.
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Base class of every error raised by the event log."""


class InvalidEventError(EventStoreError, ValueError):
    """An event cannot be stored as given (bad type name, non-JSON data, ...)."""


class EventTooLargeError(InvalidEventError):
    """An event's encoded data and metadata exceed the size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes encoded; the limit is {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidStreamNameError(EventStoreError, ValueError):
    """A stream name is empty, too long or contains characters we do not allow."""


class InvalidExpectedVersionError(EventStoreError, ValueError):
    """``expected_version`` is neither ``None`` nor a non-negative integer."""


class ConcurrencyError(EventStoreError):
    """The stream is not at the version the caller expected; nothing was written.

    Carries both versions so a caller can decide to reload and retry.
    """

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected version {expected}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventIdError(EventStoreError):
    """Some event ids of an append are already stored, but not as this same append.

    A true retry (the same ids, in the same order, on the same stream) returns the
    original positions instead; anything else reusing ids is refused whole.
    """

    def __init__(self, stream_id: str, detail: str) -> None:
        super().__init__(f"append to {stream_id!r} reuses stored event ids: {detail}")
        self.stream_id = stream_id


class InvalidFenceError(EventStoreError, ValueError):
    """A ``Fence`` has an empty or too long scope, or a token that is not an int >= 0."""


class FencedError(EventStoreError):
    """A higher fencing token was already used for the scope; nothing was written.

    The caller's lease was taken over: it must stop acting for the scope at once,
    not reload and retry as after a ``ConcurrencyError``.
    """

    def __init__(self, scope: str, token: int, current: int) -> None:
        super().__init__(
            f"append to scope {scope} with fencing token {token} refused: "
            f"token {current} already used"
        )
        self.scope = scope
        self.token = token
        self.current = current


class StoreClosedError(EventStoreError):
    """The store was closed (or never opened) when it was used."""


class StoreUnavailableError(EventStoreError):
    """The database server cannot be reached, or refused the connection.

    Transient: whoever gets it backs off and tries again; nothing was written (or, for
    an unknown ``COMMIT`` outcome, a retry with the same event ids is safe).
    """


class StoreFullError(StoreUnavailableError):
    """The database has no room left (SQLite's ``SQLITE_FULL``, a full disk, PostgreSQL's
    ``disk_full``); nothing was written.

    A kind of unavailability, so everything that retries an unreachable log retries
    this too; appends succeed again, on the same connections, once space is freed.
    """


class NotAnEventStoreError(EventStoreError):
    """The database file exists but is not an osupgrade event log."""


class CorruptStoreError(EventStoreError):
    """The database file is damaged or was written by an incompatible schema."""


class UnknownEventTypeError(EventStoreError, LookupError):
    """A stored type name has no registered class."""


class UpcastError(EventStoreError):
    """A stored event could not be brought to the current schema version."""

"""osupgrade's durable, tamper-evident, async event log.

The public surface: the ``EventStore`` protocol, three backends (``InMemoryEventStore``,
``SQLiteEventStore`` and ``PostgresEventStore``), the envelope types, the registry of typed
events and the errors. Nothing here knows about scale sets or upgrades.
"""

from events.clock import Clock, FixedClock, SystemClock
from events.envelope import Metadata, NewEvent, RecordedEvent
from events.errors import (
    ConcurrencyError,
    CorruptStoreError,
    DuplicateEventIdError,
    EventStoreError,
    EventTooLargeError,
    FencedError,
    InvalidEventError,
    InvalidExpectedVersionError,
    InvalidFenceError,
    InvalidStreamNameError,
    NotAnEventStoreError,
    StoreClosedError,
    StoreFullError,
    StoreUnavailableError,
    UnknownEventTypeError,
    UpcastError,
)
from events.fencing import Fence
from events.ids import uuid7
from events.memory import InMemoryEventStore
from events.postgres import PostgresEventStore
from events.registry import EventRegistry
from events.sqlite import SQLiteEventStore
from events.store import EventStore
from events.subscription import Subscription
from events.verify import VerifyReport

__all__ = [
    "Clock",
    "ConcurrencyError",
    "CorruptStoreError",
    "DuplicateEventIdError",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "EventTooLargeError",
    "Fence",
    "FencedError",
    "FixedClock",
    "InMemoryEventStore",
    "InvalidEventError",
    "InvalidExpectedVersionError",
    "InvalidFenceError",
    "InvalidStreamNameError",
    "Metadata",
    "NewEvent",
    "NotAnEventStoreError",
    "PostgresEventStore",
    "RecordedEvent",
    "SQLiteEventStore",
    "StoreClosedError",
    "StoreFullError",
    "StoreUnavailableError",
    "Subscription",
    "SystemClock",
    "UnknownEventTypeError",
    "UpcastError",
    "VerifyReport",
    "uuid7",
]

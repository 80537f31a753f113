"""Validation and canonical encoding of events before they are stored.

Both backends call ``encode_batch``, so what counts as bad input (and the error it gets)
is decided in one place, and nothing is written when any event of a batch is bad.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from events.clock import to_micros
from events.envelope import NO_METADATA, NewEvent
from events.errors import (
    EventTooLargeError,
    InvalidEventError,
    InvalidExpectedVersionError,
    InvalidStreamNameError,
)

MAX_EVENT_BYTES = 1024 * 1024
"""Largest encoded ``data`` + ``metadata`` of one event (1 MiB)."""

MAX_STREAM_NAME = 512
_STREAM_NAME = re.compile(r"[\x21-\x7e]{1,512}")
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")
_JSON_OPTIONS = orjson.OPT_SORT_KEYS
_EMPTY_OBJECT = b"{}"


class EncodedEvent(NamedTuple):
    """An event reduced to the exact bytes and numbers the log stores and hashes.

    A NamedTuple, not a dataclass: one is built per appended event, on the hot path.
    """

    event_id: bytes
    type: str
    schema_version: int
    occurred_us: int | None
    data: bytes
    metadata: bytes


_known_good: dict[str, None] = {}  # recently validated names and types: skip the regex
_KNOWN_GOOD_LIMIT = 50_000


def _remember(name: str) -> None:
    if len(_known_good) >= _KNOWN_GOOD_LIMIT:
        _known_good.clear()
    _known_good[name] = None


def check_stream_name(stream_id: object) -> str:
    """Return ``stream_id`` if it is a usable stream name, else raise.

    Names are 1..512 printable characters without spaces or other white space: one
    word in logs and on a command line. Beyond ASCII they may hold any printable
    Unicode character (a resource group may be named ``grüße``); the hash chain and
    both databases store them as UTF-8.
    """
    if type(stream_id) is str and stream_id in _known_good:
        return stream_id
    if not isinstance(stream_id, str):
        raise InvalidStreamNameError(f"stream name must be a str, not {type(stream_id).__name__}")
    if not _valid_stream_name(stream_id):
        raise InvalidStreamNameError(
            f"stream name {stream_id[:80]!r} is invalid: use 1..{MAX_STREAM_NAME} printable "
            "characters without spaces"
        )
    _remember(stream_id)
    return stream_id


def _valid_stream_name(name: str) -> bool:
    if name.isascii():
        return _STREAM_NAME.fullmatch(name) is not None
    return (
        len(name) <= MAX_STREAM_NAME and name.isprintable() and not any(c.isspace() for c in name)
    )


def check_expected_version(expected: object) -> int | None:
    """Return ``expected`` if it is ``None`` (any version) or an int >= 0, else raise."""
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise InvalidExpectedVersionError(
            f"expected_version must be None or an integer >= 0, not {expected!r}"
        )
    return expected


def canonical_json(value: Mapping[str, Any], what: str) -> bytes:
    """Encode a JSON object with sorted keys; refuse anything JSON cannot represent."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidEventError(
            f"{what} must be a JSON object (a mapping), not {type(value).__name__}"
        )
    try:
        raw = orjson.dumps(value, option=_JSON_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidEventError(f"{what} is not JSON-serialisable: {exc}") from None
    if b"null" in raw:  # orjson writes NaN and infinities as null; find them only then
        _reject_non_finite(value, what)
    return raw


def _reject_non_finite(value: object, what: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEventError(f"{what} contains {value!r}, which JSON cannot represent")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_non_finite(item, what)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_finite(item, what)


def encode_event(event: NewEvent) -> EncodedEvent:
    """Validate one event and return its stored form."""
    if type(event) is not NewEvent and not isinstance(event, NewEvent):
        raise InvalidEventError(f"expected a NewEvent, got {type(event).__name__}")
    if not (type(event.type) is str and "@" + event.type in _known_good):
        if not isinstance(event.type, str) or not _TYPE_NAME.fullmatch(event.type):
            raise InvalidEventError(
                f"event type {event.type!r} is invalid: start with a letter, then up to 127 "
                "letters, digits or _ . : -"
            )
        _remember("@" + event.type)
    if type(event.schema_version) is not int or event.schema_version < 1:
        raise InvalidEventError("schema_version must be an integer >= 1")
    if type(event.event_id) is not uuid.UUID and not isinstance(event.event_id, uuid.UUID):
        raise InvalidEventError("event_id must be a uuid.UUID")
    occurred: int | None = None
    if event.occurred_at is not None:
        try:
            occurred = to_micros(event.occurred_at)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidEventError(f"occurred_at: {exc}") from None
    data = canonical_json(event.data, f"data of {event.type}")
    metadata = (
        _EMPTY_OBJECT
        if event.metadata is NO_METADATA
        else canonical_json(event.metadata.to_dict(), f"metadata of {event.type}")
    )
    size = len(data) + len(metadata)
    if size > MAX_EVENT_BYTES:
        raise EventTooLargeError(size, MAX_EVENT_BYTES)
    return EncodedEvent(
        event.event_id.bytes, event.type, event.schema_version, occurred, data, metadata
    )


def encode_batch(events: object) -> list[EncodedEvent]:
    """Validate a whole batch; one bad event rejects all of it."""
    if isinstance(events, NewEvent):
        raise InvalidEventError("append takes a sequence of events; wrap a single event in a list")
    if not isinstance(events, Sequence) or isinstance(events, str | bytes):
        raise InvalidEventError("events must be a sequence of NewEvent")
    if not events:
        raise InvalidEventError("an append needs at least one event")
    encoded = [encode_event(event) for event in events]
    if len({item.event_id for item in encoded}) != len(encoded):
        raise InvalidEventError("the same event_id appears twice in one append")
    return encoded

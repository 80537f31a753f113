"""The rules every backend applies to an append, as pure functions.

Backends differ in how they find the current stream version and which event ids are
already stored; what those facts mean (conflict, retry, duplicate) is decided here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from events.encoding import EncodedEvent
from events.errors import ConcurrencyError, DuplicateEventIdError


@dataclass(frozen=True, slots=True)
class StoredId:
    """Where an already stored event id lives, and what it holds."""

    stream_id: str
    stream_version: int
    position: int
    type: str
    data: bytes


def retry_positions(
    stream_id: str, batch: Sequence[EncodedEvent], found: Mapping[bytes, StoredId]
) -> list[int] | None:
    """Return the original positions if ``batch`` repeats a stored append, else ``None``.

    ``found`` holds the ids of ``batch`` that are already stored. None stored means a
    fresh append. All stored, on the same stream, in the same order and with the same
    content means a retry. Anything in between is refused, because writing part of a
    batch or silently dropping changed content would both lose information.
    """
    if not found:
        return None
    if len(found) != len(batch):
        raise DuplicateEventIdError(
            stream_id, f"{len(found)} of the {len(batch)} event ids are already stored"
        )
    stored = [found[event.event_id] for event in batch]
    first = stored[0]
    for offset, (event, where) in enumerate(zip(batch, stored, strict=True)):
        if where.stream_id != stream_id:
            raise DuplicateEventIdError(stream_id, f"an id is stored on stream {where.stream_id!r}")
        if (
            where.stream_version != first.stream_version + offset
            or where.position != first.position + offset
        ):
            raise DuplicateEventIdError(stream_id, "the ids were stored in another order or batch")
        if where.type != event.type or where.data != event.data:
            raise DuplicateEventIdError(stream_id, "an id is stored with different content")
    return [where.position for where in stored]


def check_expected(stream_id: str, expected: int | None, actual: int) -> None:
    """Raise ``ConcurrencyError`` unless ``expected`` is ``None`` or equals ``actual``."""
    if expected is not None and expected != actual:
        raise ConcurrencyError(stream_id, expected, actual)

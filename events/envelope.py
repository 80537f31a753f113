"""The event envelope: what a caller appends and what the log hands back.

``NewEvent`` is the caller's side (no positions yet); ``RecordedEvent`` is the stored
side. ``RecordedEvent`` decodes ``data`` eagerly (everyone reads it) but turns ids and
timestamps into ``UUID``/``datetime`` objects only when asked, because building those
objects costs more than the rest of a replay step put together.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from events.clock import from_micros
from events.ids import uuid7

JSONObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Metadata:
    """Why an event happened: the request it belongs to, its cause and who acted."""

    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    fence: tuple[str, int] | None = None
    """(engine id, fencing token) of the engine that wrote the event, when engines share a log."""

    def to_dict(self) -> JSONObject:
        """Return the JSON form, leaving out unset fields to keep rows small."""
        out: JSONObject = {}
        if self.correlation_id is not None:
            out["correlation_id"] = self.correlation_id
        if self.causation_id is not None:
            out["causation_id"] = self.causation_id
        if self.actor is not None:
            out["actor"] = self.actor
        if self.fence is not None:
            out["fence"] = {"engine": self.fence[0], "token": self.fence[1]}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Metadata:
        """Rebuild metadata from its JSON form (unknown keys are ignored)."""
        return cls(
            correlation_id=raw.get("correlation_id"),
            causation_id=raw.get("causation_id"),
            actor=raw.get("actor"),
            fence=_fence(raw.get("fence")),
        )


def _fence(raw: object) -> tuple[str, int] | None:
    if isinstance(raw, dict) and isinstance(raw.get("engine"), str):
        token = raw.get("token")
        if isinstance(token, int):
            return raw["engine"], token
    return None


NO_METADATA = Metadata()


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: a stable type name, a JSON object and its metadata.

    ``event_id`` identifies the event forever; resending the same ids makes a retried
    append harmless. ``occurred_at`` is engine time; left ``None``, the store's clock
    fills it in at append time.
    """

    type: str
    data: Mapping[str, Any]
    schema_version: int = 1
    metadata: Metadata = NO_METADATA
    event_id: uuid.UUID = field(default_factory=uuid7)
    occurred_at: datetime | None = None


class RecordedEvent:
    """One stored event with its per-stream version and global position."""

    __slots__ = (
        "_event_id",
        "_metadata",
        "_occurred_us",
        "_recorded_us",
        "data",
        "position",
        "schema_version",
        "stream_id",
        "stream_version",
        "type",
    )

    def __init__(  # noqa: PLR0913 - a flat record, built on the hot replay path
        self,
        position: int,
        stream_id: str,
        stream_version: int,
        event_id: bytes,
        type: str,  # noqa: A002 - the envelope field is called "type"
        schema_version: int,
        occurred_us: int,
        recorded_us: int,
        data: JSONObject,
        metadata: bytes,
    ) -> None:
        self.position = position
        self.stream_id = stream_id
        self.stream_version = stream_version
        self._event_id = event_id
        self.type = type
        self.schema_version = schema_version
        self._occurred_us = occurred_us
        self._recorded_us = recorded_us
        self.data = data
        self._metadata = metadata

    @property
    def event_id(self) -> uuid.UUID:
        """The client-generated id of the event."""
        return uuid.UUID(bytes=self._event_id)

    @property
    def event_id_bytes(self) -> bytes:
        """The id as the 16 bytes stored in the log."""
        return self._event_id

    @property
    def occurred_at(self) -> datetime:
        """When the event happened, in engine time."""
        return from_micros(self._occurred_us)

    @property
    def occurred_us(self) -> int:
        """``occurred_at`` as microseconds since the epoch (cheap to compare)."""
        return self._occurred_us

    @property
    def recorded_at(self) -> datetime:
        """When the store committed the event, by the store's clock."""
        return from_micros(self._recorded_us)

    @property
    def recorded_us(self) -> int:
        """``recorded_at`` as microseconds since the epoch."""
        return self._recorded_us

    @property
    def metadata(self) -> Metadata:
        """Correlation id, causation id and actor."""
        if not self._metadata or self._metadata == b"{}":
            return NO_METADATA
        return Metadata.from_dict(orjson.loads(self._metadata))

    @property
    def metadata_bytes(self) -> bytes:
        """The canonical JSON bytes of the metadata, as stored and hashed."""
        return self._metadata

    def with_payload(self, type_name: str, schema_version: int, data: JSONObject) -> RecordedEvent:
        """Return a copy with another type, schema version and data (used by upcasting)."""
        return RecordedEvent(
            self.position,
            self.stream_id,
            self.stream_version,
            self._event_id,
            type_name,
            schema_version,
            self._occurred_us,
            self._recorded_us,
            data,
            self._metadata,
        )

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(position={self.position}, stream_id={self.stream_id!r}, "
            f"stream_version={self.stream_version}, type={self.type!r}, "
            f"schema_version={self.schema_version})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self.position == other.position and self._event_id == other._event_id

    def __hash__(self) -> int:
        return hash((self.position, self._event_id))

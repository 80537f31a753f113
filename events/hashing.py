"""The hash chain that makes the log tamper-evident.

Each event's hash covers the previous event's hash and the event's own canonical bytes,
including its global position, so editing, deleting or reordering any stored event
breaks every hash from that point on.
"""

from __future__ import annotations

import hashlib
import struct

GENESIS_HASH = bytes(32)
"""The "previous hash" of the first event in a log."""

_FIXED = struct.Struct(">qqqqqIIII")


def event_hash(  # noqa: PLR0913 - the hash covers every stored field, by design
    prev_hash: bytes,
    position: int,
    stream_id: str,
    stream_version: int,
    event_id: bytes,
    type_name: str,
    schema_version: int,
    occurred_us: int,
    recorded_us: int,
    data: bytes,
    metadata: bytes,
) -> bytes:
    """Return SHA-256 over the previous hash and this event's canonical bytes.

    Variable-length fields are length-prefixed so no two different events can produce
    the same byte string.
    """
    stream = stream_id.encode()
    kind = type_name.encode()
    header = _FIXED.pack(
        position,
        stream_version,
        schema_version,
        occurred_us,
        recorded_us,
        len(stream),
        len(kind),
        len(data),
        len(metadata),
    )
    return hashlib.sha256(
        b"".join((prev_hash, header, event_id, stream, kind, data, metadata))
    ).digest()

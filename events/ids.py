"""Time-ordered event ids (UUID version 7, RFC 9562).

Clients generate ids so a retried append can be recognised; the time prefix keeps the
unique index on ids append-mostly, which is what makes that index cheap to maintain.
"""

from __future__ import annotations

import random
import time
import uuid

_random = random.SystemRandom()
_fast_random = random.Random(_random.getrandbits(64))


def uuid7(unix_ms: int | None = None, random_bytes: bytes | None = None) -> uuid.UUID:
    """Return a UUIDv7 for ``unix_ms`` (default: now) with 74 random bits.

    Both inputs can be given so that simulations produce reproducible ids. The default
    random bits come from a PRNG seeded from the OS: ids need uniqueness, not secrecy,
    and a system call per event would cost more than the rest of building it.
    """
    if unix_ms is None and random_bytes is None:  # the hot path: no checks needed
        value = (time.time_ns() // 1_000_000) << 80 | _fast_random.getrandbits(80) & _RANDOM_MASK
        return _make(value | _VERSION_VARIANT)
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError("unix_ms must fit in 48 bits")
    if random_bytes is None:
        tail = _fast_random.getrandbits(80)
    elif len(random_bytes) != 10:
        raise ValueError("random_bytes must be 10 bytes")
    else:
        tail = int.from_bytes(random_bytes, "big")
    rand_a = (tail >> 68) & 0x0FFF  # 12 bits
    rand_b = tail & ((1 << 62) - 1)  # 62 bits
    return _make((ms << 80) | _VERSION_VARIANT | (rand_a << 64) | rand_b)


_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_MASK = (0x0FFF << 64) | ((1 << 62) - 1)  # rand_a (12 bits) and rand_b (62 bits)
_new = object.__new__
_set = object.__setattr__
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown


def _make(value: int) -> uuid.UUID:
    """Build a UUID without ``UUID.__init__``'s parsing (the value is known valid)."""
    result = _new(_UUID)
    _set(result, "int", value)
    _set(result, "is_safe", _UNKNOWN)
    return result

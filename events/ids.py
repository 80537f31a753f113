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
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    result = object.__new__(uuid.UUID)  # skips UUID.__init__'s parsing; value is valid
    object.__setattr__(result, "int", value)
    object.__setattr__(result, "is_safe", uuid.SafeUUID.unknown)
    return result

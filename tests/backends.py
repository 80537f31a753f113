"""Every EventStore backend, wrapped with what the contract suite needs from it.

To add a backend (PostgreSQL, say), add one ``Backend`` to ``BACKENDS``: the whole
contract suite then runs against it unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events import EventRegistry, InMemoryEventStore, SQLiteEventStore
from events.clock import Clock

Opener = Callable[..., Any]


@dataclass(frozen=True)
class Backend:
    """How to open a fresh store and how to tamper with its stored rows."""

    name: str
    open: Callable[[Path, Clock | None, EventRegistry | None], Any]
    edit_data: Callable[[Any, int, bytes], None]
    delete_row: Callable[[Any, int], None]
    swap_rows: Callable[[Any, int, int], None]


def _memory_open(tmp: Path, clock: Clock | None, registry: EventRegistry | None) -> Any:
    return InMemoryEventStore(clock=clock, registry=registry)


def _memory_edit(store: InMemoryEventStore, position: int, data: bytes) -> None:
    row = store.raw_row(position)
    store.tamper_replace_row(position, (*row[:8], data, *row[9:]))


def _memory_swap(store: InMemoryEventStore, a: int, b: int) -> None:
    row_a, row_b = store.raw_row(a), store.raw_row(b)
    store.tamper_replace_row(a, (a, *row_b[1:]))
    store.tamper_replace_row(b, (b, *row_a[1:]))


def _sqlite_open(tmp: Path, clock: Clock | None, registry: EventRegistry | None) -> Any:
    return SQLiteEventStore(tmp / "events.sqlite", clock=clock, registry=registry)


def _sqlite_exec(store: SQLiteEventStore, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _sqlite_edit(store: SQLiteEventStore, position: int, data: bytes) -> None:
    _sqlite_exec(store, ("UPDATE events SET data = ? WHERE position = ?", (data, position)))


def _sqlite_delete(store: SQLiteEventStore, position: int) -> None:
    _sqlite_exec(store, ("DELETE FROM events WHERE position = ?", (position,)))


def _sqlite_swap(store: SQLiteEventStore, a: int, b: int) -> None:
    # Move b out of the way, then exchange positions: the rows keep their content.
    _sqlite_exec(
        store,
        ("UPDATE events SET position = -1 WHERE position = ?", (b,)),
        ("UPDATE events SET position = ? WHERE position = ?", (b, a)),
        ("UPDATE events SET position = ? WHERE position = -1", (a,)),
    )


BACKENDS = [
    Backend(
        "memory",
        _memory_open,
        _memory_edit,
        lambda store, position: store.tamper_delete_row(position),
        _memory_swap,
    ),
    Backend("sqlite", _sqlite_open, _sqlite_edit, _sqlite_delete, _sqlite_swap),
]


@asynccontextmanager
async def opened(
    backend: Backend, tmp: Path, clock: Clock | None = None, registry: EventRegistry | None = None
) -> AsyncIterator[Any]:
    """Open a fresh store of ``backend`` under ``tmp`` and close it afterwards."""
    store = backend.open(tmp, clock, registry)
    async with store:
        yield store

"""Every EventStore backend, wrapped with what the contract suite needs from it.

To add a backend, add one ``Backend`` to ``BACKENDS``: the whole contract suite then
runs against it unchanged. PostgreSQL needs a server: its DSN comes from
``OSUPGRADE_TEST_PG_DSN`` (``.ci/run`` starts a throwaway one); without it the
PostgreSQL tests skip, except on CI (``CI=true``) where they fail.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events import EventRegistry, InMemoryEventStore, PostgresEventStore, SQLiteEventStore
from events.clock import Clock

PG_DSN_VAR = "OSUPGRADE_TEST_PG_DSN"

Opener = Callable[..., Any]


@dataclass(frozen=True)
class Backend:
    """How to open a fresh store and how to tamper with its stored rows."""

    name: str
    open: Callable[[Path, Clock | None, EventRegistry | None], Any]
    edit_data: Callable[[Any, int, bytes], Awaitable[None]]
    delete_row: Callable[[Any, int], Awaitable[None]]
    swap_rows: Callable[[Any, int, int], Awaitable[None]]
    dispose: Callable[[Any], Awaitable[None]] | None = None
    """Removes what ``open`` created outside ``tmp`` (PostgreSQL: the test's schema)."""


def _memory_open(tmp: Path, clock: Clock | None, registry: EventRegistry | None) -> Any:
    return InMemoryEventStore(clock=clock, registry=registry)


async def _memory_edit(store: InMemoryEventStore, position: int, data: bytes) -> None:
    row = store.raw_row(position)
    store.tamper_replace_row(position, (*row[:8], data, *row[9:]))


async def _memory_delete(store: InMemoryEventStore, position: int) -> None:
    store.tamper_delete_row(position)


async def _memory_swap(store: InMemoryEventStore, a: int, b: int) -> None:
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


async def _sqlite_edit(store: SQLiteEventStore, position: int, data: bytes) -> None:
    _sqlite_exec(store, ("UPDATE events SET data = ? WHERE position = ?", (data, position)))


async def _sqlite_delete(store: SQLiteEventStore, position: int) -> None:
    _sqlite_exec(store, ("DELETE FROM events WHERE position = ?", (position,)))


async def _sqlite_swap(store: SQLiteEventStore, a: int, b: int) -> None:
    # Move b out of the way, then exchange positions: the rows keep their content.
    _sqlite_exec(
        store,
        ("UPDATE events SET position = -1 WHERE position = ?", (b,)),
        ("UPDATE events SET position = ? WHERE position = ?", (b, a)),
        ("UPDATE events SET position = ? WHERE position = -1", (a,)),
    )


def pg_dsn() -> str:
    """The test server's DSN; skip without one, but fail on CI, where it must be set."""
    dsn = os.environ.get(PG_DSN_VAR)
    if dsn:
        return dsn
    reason = f"PostgreSQL tests need {PG_DSN_VAR} (bash .ci/run starts a throwaway server)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _pg_open(tmp: Path, clock: Clock | None, registry: EventRegistry | None) -> Any:
    # A fresh schema per test: as isolated as a new file, far cheaper than a database.
    schema = f"t_{uuid.uuid4().hex[:20]}"
    return PostgresEventStore(pg_dsn(), schema=schema, clock=clock, registry=registry)


async def _pg_exec(store: PostgresEventStore, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = await asyncpg.connect(store.dsn)
    try:
        async with conn.transaction():
            for sql, params in statements:
                await conn.execute(sql.replace("{s}", f'"{store.schema}"'), *params)
    finally:
        await conn.close()


async def _pg_edit(store: PostgresEventStore, position: int, data: bytes) -> None:
    await _pg_exec(store, ("UPDATE {s}.events SET data = $1 WHERE position = $2", (data, position)))


async def _pg_delete(store: PostgresEventStore, position: int) -> None:
    await _pg_exec(store, ("DELETE FROM {s}.events WHERE position = $1", (position,)))


async def _pg_swap(store: PostgresEventStore, a: int, b: int) -> None:
    await _pg_exec(
        store,
        ("UPDATE {s}.events SET position = -1 WHERE position = $1", (b,)),
        ("UPDATE {s}.events SET position = $1 WHERE position = $2", (b, a)),
        ("UPDATE {s}.events SET position = $1 WHERE position = -1", (a,)),
    )


async def pg_drop_schema(store: PostgresEventStore) -> None:
    """Drop a test store's schema (the throwaway server would go anyway; a shared one not)."""
    await _pg_exec(store, ("DROP SCHEMA IF EXISTS {s} CASCADE", ()))


BACKENDS = [
    Backend("memory", _memory_open, _memory_edit, _memory_delete, _memory_swap),
    Backend("sqlite", _sqlite_open, _sqlite_edit, _sqlite_delete, _sqlite_swap),
    Backend("postgres", _pg_open, _pg_edit, _pg_delete, _pg_swap, pg_drop_schema),
]


@asynccontextmanager
async def opened(
    backend: Backend, tmp: Path, clock: Clock | None = None, registry: EventRegistry | None = None
) -> AsyncIterator[Any]:
    """Open a fresh store of ``backend`` under ``tmp`` and close it afterwards."""
    store = backend.open(tmp, clock, registry)
    try:
        async with store:
            yield store
    finally:
        if backend.dispose is not None:
            await backend.dispose(store)

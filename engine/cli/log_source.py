"""The log a ``--db`` names, opened for reading without creating or changing anything.

Every read command takes a SQLite path or a PostgreSQL DSN. Opening a store creates a
log that is not there yet; for a read command that would turn a typo into a fresh empty
log that then "verifies" as intact. So the log's existence and identity are checked
first, with an answer that says what is wrong, and only then is the store opened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import asyncpg

from engine.api.service import is_postgres_dsn, redacted
from events import EventStore, EventStoreError, PostgresEventStore, SQLiteEventStore
from events.sqlite import APPLICATION_ID

EXIT_UNREADABLE = 2  # no log there, not ours, corrupt, or the server is unreachable
EXIT_NOT_FOUND = 3  # the log is fine but has no such scale set (or stream)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PG_TIMEOUT_S = 10.0


class LogSourceError(EventStoreError):
    """``--db`` names no readable osupgrade log (exit ``EXIT_UNREADABLE``)."""


@asynccontextmanager
async def open_log(db: str, pg_schema: str = "osupgrade") -> AsyncIterator[EventStore]:
    """The store of an existing log; ``LogSourceError`` if there is none at ``db``."""
    store: SQLiteEventStore | PostgresEventStore
    if is_postgres_dsn(db):
        await _check_postgres(db, pg_schema)
        store = PostgresEventStore(db, schema=pg_schema)
    else:
        await _check_sqlite(Path(db))
        store = SQLiteEventStore(Path(db))
    async with store:
        yield store


def describe(db: str, pg_schema: str = "osupgrade") -> str:
    """``db`` for messages: a DSN's password never appears."""
    return f"{redacted(db)} (schema {pg_schema})" if is_postgres_dsn(db) else db


def _check_file(path: Path) -> None:
    """A few local checks, before SQLite: it would take an empty file as an empty log."""
    if not path.exists():
        raise LogSourceError(f"{path} does not exist")
    if path.is_dir():
        raise LogSourceError(f"{path} is a directory, not an event log")
    with path.open("rb") as file:
        header = file.read(len(_SQLITE_MAGIC))
    if not header:
        raise LogSourceError(f"{path} is an empty file, not an event log")
    if header != _SQLITE_MAGIC:
        raise LogSourceError(f"{path} is not an SQLite database, so not an event log")


async def _check_sqlite(path: Path) -> None:
    _check_file(path)
    # Read-only, and through SQLite itself: a fresh log's header may still be in its WAL.
    try:
        async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = list(await conn.execute_fetchall("PRAGMA application_id"))
    except aiosqlite.Error as exc:
        raise LogSourceError(f"{path} cannot be read as an event log: {exc}") from exc
    if not rows or rows[0][0] != APPLICATION_ID:
        raise LogSourceError(f"{path} is an SQLite database but not an osupgrade event log")


async def _check_postgres(dsn: str, schema: str) -> None:
    if not await has_table(dsn, schema, "events"):
        raise LogSourceError(f"there is no osupgrade event log in {describe(dsn, schema)}")


async def has_table(db: str, schema: str, table: str) -> bool:
    """Whether the log's file (or schema) has ``table``: read-only, creates nothing."""
    if not is_postgres_dsn(db):
        async with aiosqlite.connect(f"file:{db}?mode=ro", uri=True) as lite:
            rows = await lite.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE name = ?", (table,)
            )
        return bool(list(rows))
    try:
        conn = await asyncpg.connect(db, timeout=_PG_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = describe(db, schema)
        raise LogSourceError(f"cannot connect to {where}: {exc or type(exc).__name__}") from exc
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
            schema, table,
        )  # fmt: skip
    finally:
        await conn.close()
    return bool(found)

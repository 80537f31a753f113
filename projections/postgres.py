"""The fleet projection's tables in PostgreSQL, beside the event log they fold.

The rows and the checkpoint of one page are written in one PostgreSQL transaction, so
after a crash the runner resumes from a checkpoint that matches the rows exactly, as
with SQLite. The tables live in the event store's schema (``osupgrade`` by default).
Several servers sharing the log may each run a runner on them: a write only moves the
checkpoint forward (see ``write``), so they never undo each other.

The connection is replaced whenever it is lost (a restart of the server,
``pg_terminate_backend``): a call on a lost connection raises ``StoreUnavailableError``
and the next call connects again, so the runner only has to back off and retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog

from events.postgres import CONNECTION_ERRORS, DEFAULT_SCHEMA, OPEN_ERRORS, redact, unavailable
from projections.fleet_view import FleetView
from projections.runner import NAME, SetRow, StoredRows, UpgradeRow, view_from_rows
from projections.sql_tables import (
    IMAGE_VERSIONS,
    INSTANCES,
    SCALE_SETS,
    SCHEMA_ROW,
    SCHEMA_VERSION,
    TABLES,
    UPGRADES,
    Record,
    TypedChanges,
    create_statements,
    upsert,
)

_SCHEMA = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.projection_checkpoints ("
    " name text PRIMARY KEY, position bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.projection_upgrades ("
    " upgrade_id text PRIMARY KEY, scale_set text NOT NULL, state bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.projection_scale_sets ("
    " key text PRIMARY KEY, upgrade_ids bytea NOT NULL, instances bytea NOT NULL)",
)


log = structlog.get_logger("osupgrade.projections")


class PostgresTables:
    """``ProjectionTables`` in a PostgreSQL schema (normally the event store's)."""

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self.dsn = dsn
        self.schema = schema
        self._s = f'"{schema}"'
        self._conn: asyncpg.Connection | None = None
        self._opened = False
        self._log = log.bind(db=f"{redact(dsn)} (schema {schema})")

    async def open(self) -> None:
        """See ``ProjectionTables.open``; creating the tables is idempotent."""
        self._opened = True
        async with self._session() as conn, conn.transaction():
            # Two runners starting together must not race on CREATE TABLE IF NOT EXISTS.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._s)
            for statement in _SCHEMA:
                await conn.execute(statement.format(s=self._s))
            for statement in create_statements("postgres", self._s):
                await conn.execute(statement)
            await self._migrate(conn)

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """Clear a projection stored in an older layout, so that it is folded again."""
        s = self._s
        stored = await conn.fetchval(
            f"SELECT position FROM {s}.projection_checkpoints WHERE name = $1", SCHEMA_ROW
        )
        stored = int(stored or 0)
        if stored >= SCHEMA_VERSION:
            return
        for table in ("projection_upgrades", "projection_scale_sets", *(t.name for t in TABLES)):
            await conn.execute(f"DELETE FROM {s}.{table}")
        await conn.execute(f"DELETE FROM {s}.projection_checkpoints WHERE name = $1", NAME)
        await conn.execute(
            f"INSERT INTO {s}.projection_checkpoints VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            SCHEMA_ROW,
            SCHEMA_VERSION,
        )
        if stored:
            self._log.info("projection tables of an older layout cleared; folding the log again",
                           stored=stored, current=SCHEMA_VERSION)  # fmt: skip

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection (a new one if the last was lost); a lost one is dropped and the
        error raised as ``StoreUnavailableError``."""
        if not self._opened:
            raise RuntimeError(f"projection tables at {redact(self.dsn)} are not open")
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._conn = await asyncpg.connect(self.dsn, timeout=10)
                self._log.info("projection tables connected")
            yield self._conn
        except CONNECTION_ERRORS as exc:
            self._drop()
            lost = unavailable(exc, f"projection tables at {redact(self.dsn)}")
            assert lost is not None
            raise lost from exc

    def _drop(self) -> None:
        """Forget the connection at once (no round trip: it may hang on a dead server)."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def load(self) -> tuple[FleetView, int]:
        """See ``ProjectionTables.load``; one snapshot, so rows and checkpoint agree."""
        async with (
            self._session() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            position = await conn.fetchval(
                f"SELECT position FROM {self._s}.projection_checkpoints WHERE name = $1", NAME
            )
            states = await conn.fetch(f"SELECT state FROM {self._s}.projection_upgrades")
            sets = await conn.fetch(
                f"SELECT key, upgrade_ids, instances FROM {self._s}.projection_scale_sets"
            )
            typed_sets = await conn.fetch(f"SELECT * FROM {self._s}.{SCALE_SETS.name}")
            images = await conn.fetch(f"SELECT * FROM {self._s}.{IMAGE_VERSIONS.name}")
        checkpoint = int(position or 0)
        rows = [(r[0], r[1], r[2]) for r in sets]
        states_ = [r[0] for r in states]
        view = view_from_rows(
            checkpoint, states_, rows, [tuple(r) for r in typed_sets],
            [tuple(r) for r in images], from_sqlite=False,
        )  # fmt: skip
        return view, checkpoint

    async def write(
        self,
        upgrades: list[UpgradeRow],
        sets: list[SetRow],
        gone: list[str],
        checkpoint: int,
        typed: TypedChanges | None = None,
    ) -> None:
        """See ``ProjectionTables.write``: one transaction for rows and checkpoint."""
        s = self._s
        async with self._session() as conn, conn.transaction():
            # Several servers may fold the same log into these tables. Rows at a
            # position at or before the stored checkpoint are already written (by
            # whoever got there first), and each writer's rows cover everything since
            # its previous checkpoint, so only a writer that moves the checkpoint
            # forward writes, one at a time (the row lock), and rows never go back.
            await conn.execute(
                f"INSERT INTO {s}.projection_checkpoints VALUES ($1, 0) ON CONFLICT DO NOTHING",
                NAME,
            )
            stored = await conn.fetchval(
                f"SELECT position FROM {s}.projection_checkpoints WHERE name = $1 FOR UPDATE",
                NAME,
            )
            if stored >= checkpoint:
                return
            if upgrades:
                await conn.executemany(
                    f"INSERT INTO {s}.projection_upgrades VALUES ($1, $2, $3)"
                    " ON CONFLICT (upgrade_id) DO UPDATE"
                    " SET scale_set = excluded.scale_set, state = excluded.state",
                    upgrades,
                )
            if sets:
                await conn.executemany(
                    f"INSERT INTO {s}.projection_scale_sets VALUES ($1, $2, $3)"
                    " ON CONFLICT (key) DO UPDATE"
                    " SET upgrade_ids = excluded.upgrade_ids, instances = excluded.instances",
                    sets,
                )
            if gone:
                await conn.execute(
                    f"DELETE FROM {s}.projection_scale_sets WHERE key = ANY($1::text[])", gone
                )
            if typed is not None:
                await self._write_typed(conn, typed)
            await conn.execute(
                f"UPDATE {s}.projection_checkpoints SET position = $2 WHERE name = $1",
                NAME,
                checkpoint,
            )

    async def _write_typed(self, conn: asyncpg.Connection, typed: TypedChanges) -> None:
        """The typed tables' share of one projection commit (inside its transaction)."""
        s = self._s
        doomed = [*typed.gone_sets, *typed.whole_sets]
        if doomed:
            await conn.execute(
                f"DELETE FROM {s}.{INSTANCES.name} WHERE scale_set = ANY($1::text[])", doomed
            )
        if typed.gone_sets:
            await conn.execute(
                f"DELETE FROM {s}.{SCALE_SETS.name} WHERE key = ANY($1::text[])", typed.gone_sets
            )
        for table, records in (
            (SCALE_SETS, typed.scale_sets),
            (INSTANCES, typed.instances),
            (UPGRADES, typed.upgrades),
            (IMAGE_VERSIONS, typed.image_versions),
        ):
            if records:
                await conn.executemany(
                    upsert(table, "postgres", s),
                    records,
                )

    async def clear(self) -> None:
        """See ``ProjectionTables.clear``."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                tables = ("projection_upgrades", "projection_scale_sets", *(t.name for t in TABLES))
                for table in tables:
                    await conn.execute(f"DELETE FROM {self._s}.{table}")
                await conn.execute(
                    f"DELETE FROM {self._s}.projection_checkpoints WHERE name = $1", NAME
                )
        finally:
            await conn.close()

    async def close(self) -> None:
        """See ``ProjectionTables.close``."""
        self._opened = False
        if self._conn is not None:
            try:
                await self._conn.close(timeout=5)
            except OPEN_ERRORS:
                self._drop()  # lost already: nothing to close politely
            self._conn = None

    async def rows(self) -> StoredRows:
        """See ``ProjectionTables.rows``."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                position = await conn.fetchval(
                    f"SELECT position FROM {self._s}.projection_checkpoints WHERE name = $1",
                    NAME,
                )
                upgrades = await conn.fetch(
                    f"SELECT upgrade_id, state FROM {self._s}.projection_upgrades"
                )
                sets = await conn.fetch(
                    f"SELECT key, upgrade_ids, instances FROM {self._s}.projection_scale_sets"
                )
        finally:
            await conn.close()
        return (
            int(position or 0),
            {r[0]: r[1] for r in upgrades},
            {r[0]: (r[1], r[2]) for r in sets},
        )

    async def typed_rows(self) -> tuple[int, dict[str, set[Record]]]:
        """See ``ProjectionTables.typed_rows``."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                position = await conn.fetchval(
                    f"SELECT position FROM {self._s}.projection_checkpoints WHERE name = $1",
                    NAME,
                )
                tables = {
                    t.name: {
                        tuple(r) for r in await conn.fetch(f"SELECT * FROM {self._s}.{t.name}")
                    }
                    for t in TABLES
                }
        finally:
            await conn.close()
        return int(position or 0), tables

"""The fleet projection's tables in PostgreSQL, beside the event log they fold.

The rows and the checkpoint of one page are written in one PostgreSQL transaction, so
after a crash the runner resumes from a checkpoint that matches the rows exactly, as
with SQLite. The tables live in the event store's schema (``osupgrade`` by default).
One runner per schema writes them: with several engines, the one holding the
projection's lease (see docs/POSTGRES.md) runs it; the others read.
"""

from __future__ import annotations

import asyncpg

from events.postgres import DEFAULT_SCHEMA, redact
from projections.fleet_view import FleetView
from projections.runner import NAME, SetRow, StoredRows, UpgradeRow, view_from_rows

_SCHEMA = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.projection_checkpoints ("
    " name text PRIMARY KEY, position bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.projection_upgrades ("
    " upgrade_id text PRIMARY KEY, scale_set text NOT NULL, state bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.projection_scale_sets ("
    " key text PRIMARY KEY, upgrade_ids bytea NOT NULL, instances bytea NOT NULL)",
)


class PostgresTables:
    """``ProjectionTables`` in a PostgreSQL schema (normally the event store's)."""

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self.dsn = dsn
        self.schema = schema
        self._s = f'"{schema}"'
        self._conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        """See ``ProjectionTables.open``; creating the tables is idempotent."""
        self._conn = await asyncpg.connect(self.dsn)
        async with self._conn.transaction():
            # Two runners starting together must not race on CREATE TABLE IF NOT EXISTS.
            await self._conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._s)
            for statement in _SCHEMA:
                await self._conn.execute(statement.format(s=self._s))

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError(f"projection tables at {redact(self.dsn)} are not open")
        return self._conn

    async def load(self) -> tuple[FleetView, int]:
        """See ``ProjectionTables.load``; one snapshot, so rows and checkpoint agree."""
        conn = self._connection()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            position = await conn.fetchval(
                f"SELECT position FROM {self._s}.projection_checkpoints WHERE name = $1", NAME
            )
            states = await conn.fetch(f"SELECT state FROM {self._s}.projection_upgrades")
            sets = await conn.fetch(
                f"SELECT key, upgrade_ids, instances FROM {self._s}.projection_scale_sets"
            )
        checkpoint = int(position or 0)
        rows = [(r[0], r[1], r[2]) for r in sets]
        return view_from_rows(checkpoint, [r[0] for r in states], rows), checkpoint

    async def write(
        self, upgrades: list[UpgradeRow], sets: list[SetRow], gone: list[str], checkpoint: int
    ) -> None:
        """See ``ProjectionTables.write``: one transaction for rows and checkpoint."""
        conn = self._connection()
        s = self._s
        async with conn.transaction():
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
            await conn.execute(
                f"UPDATE {s}.projection_checkpoints SET position = $2 WHERE name = $1",
                NAME,
                checkpoint,
            )

    async def clear(self) -> None:
        """See ``ProjectionTables.clear``."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                for table in ("projection_upgrades", "projection_scale_sets"):
                    await conn.execute(f"DELETE FROM {self._s}.{table}")
                await conn.execute(f"DELETE FROM {self._s}.projection_checkpoints")
        finally:
            await conn.close()

    async def close(self) -> None:
        """See ``ProjectionTables.close``."""
        if self._conn is not None:
            await self._conn.close()
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

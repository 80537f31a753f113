"""Leases of scale sets in PostgreSQL, for engines in different processes or machines.

Every expiry is computed by the database's ``clock_timestamp()``, never by an engine:
engines may run sped-up clocks, and real clocks drift. One transaction per step; claims
use ``FOR UPDATE SKIP LOCKED`` so engines claiming at the same moment never wait on,
or take, the same rows.

The tables live in a schema of their own beside the log's (the log refuses tables it
does not know in its schema): ``engines`` (heartbeats),
``leases`` (owner, fencing token, expiry) and ``engine_clock`` (the time origin that
engines with a sped-up clock share, so that every engine agrees on engine time).

The connections are a pool, which replaces a lost connection on its next use; a step
that meets a lost (or refused) connection raises ``StoreUnavailableError``, and the
engine's lease loop tries again at its next round.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Coroutine
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import structlog

from engine.runtime.clock import RealClock
from engine.scaleout.leases import Holdings, PeerAddress, fair_share
from events import StoreUnavailableError
from events.postgres import CONNECTION_ERRORS, redact, unavailable

log = structlog.get_logger("osupgrade.leases")

P = ParamSpec("P")
R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.engines (
    engine_id    text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
ALTER TABLE {s}.engines ADD COLUMN IF NOT EXISTS url text;
ALTER TABLE {s}.engines ADD COLUMN IF NOT EXISTS url_mac text;
CREATE TABLE IF NOT EXISTS {s}.leases (
    scale_set  text PRIMARY KEY,
    owner      text,
    token      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
-- A deleted set's row stays (not live) so that its token keeps growing if a set of the
-- same name is created again: the store refuses any token below one it has recorded.
ALTER TABLE {s}.leases ADD COLUMN IF NOT EXISTS live boolean NOT NULL DEFAULT true;
CREATE TABLE IF NOT EXISTS {s}.engine_clock (
    id            integer PRIMARY KEY CHECK (id = 1),
    origin_wall   double precision NOT NULL,
    origin_engine timestamptz NOT NULL,
    speed         double precision NOT NULL
);
"""


def _step(
    method: Callable[Concatenate[PostgresLeaseBoard, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[PostgresLeaseBoard, P], Coroutine[Any, Any, R]]:
    """One step of the board: a lost or refused connection comes out as
    ``StoreUnavailableError`` (the pool connects again on the next step)."""

    @functools.wraps(method)
    async def step(board: PostgresLeaseBoard, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(board, *args, **kwargs)
        except CONNECTION_ERRORS as exc:
            lost = unavailable(exc, f"lease board at {redact(board.dsn)}")
            assert lost is not None
            raise lost from exc

    return step


class PostgresLeaseBoard:
    """``LeaseBoard`` on a PostgreSQL schema (created if missing)."""

    def __init__(self, dsn: str, *, schema: str = "osupgrade_engines", ttl_s: float = 15.0) -> None:
        self.dsn = dsn
        self.schema = schema
        self.ttl_s = ttl_s
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> PostgresLeaseBoard:
        """Connect and create the tables if they are missing."""
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact(self.dsn)}: {exc or type(exc).__name__}"
            ) from exc
        async with self._pool.acquire() as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            async with conn.transaction():
                # one creator at a time: CREATE TABLE IF NOT EXISTS races otherwise
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.schema)
                await conn.execute(_SCHEMA.format(s=f'"{self.schema}"'))
        return self

    async def close(self) -> None:
        """Close the connections."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> PostgresLeaseBoard:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _t(self, table: str) -> str:
        return f'"{self.schema}".{table}'

    def _conn(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the lease board is not open")
        return self._pool

    @_step
    async def add(self, keys: Collection[str]) -> None:
        """Make sure a live lease exists for each key (new ones start free; one of a set
        deleted before keeps its token, so the next owner's is higher)."""
        if keys:
            await self._conn().execute(
                f"INSERT INTO {self._t('leases')} (scale_set) SELECT unnest($1::text[]) "
                "ON CONFLICT (scale_set) DO UPDATE SET live = true",
                list(keys),
            )

    @_step
    async def remove(self, keys: Collection[str]) -> None:
        """Retire the leases of deleted scale sets (their tokens are kept, see ``add``)."""
        if keys:
            await self._conn().execute(
                f"UPDATE {self._t('leases')} SET live = false, owner = NULL, "
                "expires_at = '-infinity' WHERE scale_set = ANY($1::text[])",
                list(keys),
            )

    @_step
    async def renew_and_claim(self, engine_id: str, *, claim: bool = True) -> Holdings:
        """Heartbeat, renew, then claim free or expired leases up to the fair share."""
        ttl = self.ttl_s
        leases, engines = self._t("leases"), self._t("engines")
        async with self._conn().acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {engines} (engine_id, heartbeat_at) VALUES ($1, clock_timestamp()) "
                "ON CONFLICT (engine_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                engine_id,
            )
            renewed = await conn.fetch(
                f"UPDATE {leases} SET expires_at = clock_timestamp() + $2 * interval '1 second' "
                "WHERE owner = $1 AND live AND expires_at > clock_timestamp() "
                "RETURNING scale_set, token",
                engine_id, ttl,
            )  # fmt: skip
            counts = await conn.fetchrow(
                f"SELECT (SELECT count(*) FROM {leases} WHERE live), "
                f"(SELECT count(*) FROM {engines} "
                "WHERE heartbeat_at > clock_timestamp() - $1 * interval '1 second')",
                ttl,
            )
            assert counts is not None
            share = fair_share(counts[0], counts[1])
            claimed = []
            if claim and share > len(renewed):
                claimed = await conn.fetch(
                    f"UPDATE {leases} l SET owner = $1, token = l.token + 1, "
                    "expires_at = clock_timestamp() + $2 * interval '1 second' "
                    f"WHERE l.scale_set IN (SELECT scale_set FROM {leases} "
                    "WHERE live AND (owner IS NULL OR expires_at <= clock_timestamp()) "
                    "ORDER BY scale_set LIMIT $3 FOR UPDATE SKIP LOCKED) "
                    "RETURNING scale_set, token",
                    engine_id, ttl, share - len(renewed),
                )  # fmt: skip
        held = {r["scale_set"]: r["token"] for r in [*renewed, *claimed]}
        return Holdings(held, share)

    @_step
    async def release(self, engine_id: str, keys: Collection[str]) -> None:
        """Give up leases still held by ``engine_id``."""
        if keys:
            await self._conn().execute(
                f"UPDATE {self._t('leases')} SET owner = NULL, expires_at = '-infinity' "
                "WHERE owner = $1 AND scale_set = ANY($2::text[])",
                engine_id, list(keys),
            )  # fmt: skip

    @_step
    async def leave(self, engine_id: str) -> None:
        """Release everything held and drop the heartbeat."""
        async with self._conn().acquire() as conn, conn.transaction():
            await conn.execute(
                f"UPDATE {self._t('leases')} SET owner = NULL, expires_at = '-infinity' "
                "WHERE owner = $1",
                engine_id,
            )
            await conn.execute(f"DELETE FROM {self._t('engines')} WHERE engine_id = $1", engine_id)

    @_step
    async def owners(self) -> dict[str, str | None]:
        """Every lease's current owner (None when free or expired)."""
        rows = await self._conn().fetch(
            f"SELECT scale_set, CASE WHEN expires_at > clock_timestamp() THEN owner END AS owner "
            f"FROM {self._t('leases')} WHERE live"
        )
        return {r["scale_set"]: r["owner"] for r in rows}

    @_step
    async def announce(self, engine_id: str, url: str, mac: str | None = None) -> None:
        """Say where this engine takes requests (kept across heartbeats)."""
        await self._conn().execute(
            f"INSERT INTO {self._t('engines')} (engine_id, heartbeat_at, url, url_mac) "
            "VALUES ($1, clock_timestamp(), $2, $3) "
            "ON CONFLICT (engine_id) DO UPDATE SET url = $2, url_mac = $3",
            engine_id, url, mac,
        )  # fmt: skip

    @_step
    async def owner_address(self, key: str) -> PeerAddress | None:
        """The announcement of the engine driving ``key`` now, if its heartbeat is live."""
        row = await self._conn().fetchrow(
            f"SELECT e.engine_id, e.url, e.url_mac FROM {self._t('leases')} l "
            f"JOIN {self._t('engines')} e ON e.engine_id = l.owner "
            "WHERE l.scale_set = $1 AND l.live AND l.expires_at > clock_timestamp() "
            "AND e.url IS NOT NULL "
            "AND e.heartbeat_at > clock_timestamp() - $2 * interval '1 second'",
            key, self.ttl_s,
        )  # fmt: skip
        return None if row is None else PeerAddress(row["engine_id"], row["url"], row["url_mac"])

    @_step
    async def shared_clock(self, speed: float, start: datetime) -> RealClock:
        """The engines' common clock: the first engine's origin, kept by every later one.

        With a sped-up clock, engine time depends on where each process started
        counting; engines that take over each other's scale sets must agree on it.
        """
        async with self._conn().acquire() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO {self._t('engine_clock')} VALUES (1, $1, $2, $3) "
                "ON CONFLICT (id) DO UPDATE SET id = 1 "
                "RETURNING origin_wall, origin_engine, speed",
                time.time(), start, speed,
            )  # fmt: skip
        assert row is not None
        if row["speed"] != speed:
            raise ValueError(
                f"the engines of this database run at --speed {row['speed']:g}; "
                f"all engines sharing it must use the same speed (got {speed:g})"
            )
        return RealClock(speed=speed, start=row["origin_engine"], origin_wall=row["origin_wall"])

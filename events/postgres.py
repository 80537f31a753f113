"""The durable ``EventStore`` on PostgreSQL through asyncpg.

Design, in the order it matters:

* **Commit-order positions (the gap problem).** A sequence hands out numbers in
  allocation order, not commit order, so a reader could move past a position whose
  transaction commits later and never see it. We use solution A of the reference notes
  (serialise appenders): every append transaction first takes one transaction-scoped
  advisory lock (``pg_advisory_xact_lock``), then reads the log's tail and numbers its
  rows ``tail + 1 ...``; the lock is released only after ``COMMIT`` is visible. So a
  position is never handed out while a smaller one is uncommitted, the committed log is
  always a gap-free prefix, and a rolled-back append leaves no hole (no sequence). The
  hash chain needs the previous hash anyway, which already demands one writer at a time.
* **Group commit.** Within a process, one writer task takes every append queued by
  concurrent tasks and commits them in one transaction (as the SQLite store does, with
  the planning code shared in ``events.group_commit``), so the lock is taken once per
  group, not per append. Several processes (several engines) on one database simply
  queue on the lock.
* **Wake-ups.** Each group transaction sends ``NOTIFY <schema>_events, '<head>'``,
  delivered at commit to every listening store; a poll of ``max(position)`` every
  ``poll_interval`` seconds is the fallback when a notification is lost (listener
  connection dropped). Readers always read the durable log; a wake-up only says when.
* **Schema.** Everything lives in one PostgreSQL schema (``osupgrade`` by default),
  created on first start, with a marker table naming the application and schema
  version: a foreign or newer schema is refused with a clear error, an older one is
  migrated. Data and metadata are stored as ``bytea``, the exact bytes the hash covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from collections.abc import AsyncIterator, Collection, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy

from events.append_rules import StoredId
from events.clock import Clock, SystemClock, to_micros
from events.encoding import check_stream_name
from events.envelope import NewEvent, RecordedEvent
from events.errors import (
    CorruptStoreError,
    EventStoreError,
    NotAnEventStoreError,
    StoreClosedError,
    StoreFullError,
    StoreUnavailableError,
)
from events.fencing import Fence, check_scope
from events.group_commit import (
    Append,
    AppendQueue,
    GroupPlan,
    conflicts,
    fence_scopes,
    fenced_out,
    plan_group,
    settle,
)
from events.hashing import GENESIS_HASH
from events.head_watch import HeadWatch
from events.registry import EventRegistry
from events.store import ProgressCallback
from events.subscription import Subscription
from events.verify import VerifyReport, verify_paged

APPLICATION = "osupgrade-event-log"
SCHEMA_VERSION = 2  # v2: fences, and append_group() checks and records them
LOCK_CLASS = 0x4F535550  # "OSUP": first key of every advisory lock we take
MAX_GROUP_EVENTS = 5000
DEFAULT_SCHEMA = "osupgrade"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,53}")  # leaves room for "_events" channel
_FAR = 2**62
_FAST_TRIES = 3  # one-round-trip attempts before the locked path, when others append

log = structlog.get_logger("osupgrade.events.postgres")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,
    asyncpg.InterfaceError,  # the connection is closed, or was left mid-operation
    asyncpg.InternalClientError,  # ... the same, noticed by asyncpg's protocol state
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57P0x: shutting down, crashed, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: disk full, too many connections
)
"""What a lost, refused or out-of-room database server raises: transient, retried."""
OPEN_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)
"""What connecting can raise (a wrong password or a missing database as well)."""


def unavailable(exc: BaseException, doing: str) -> StoreUnavailableError | None:
    """``exc`` as the typed error of an unreachable (or full) server; None if it is not one.

    Shared by everything that talks to the log's PostgreSQL (store, projection tables,
    leases), so that all of them back off and retry on the same conditions.
    """
    if isinstance(exc, StoreUnavailableError):
        return exc
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return StoreFullError(f"{doing}: the database server's disk is full ({exc})")
    if isinstance(exc, CONNECTION_ERRORS):
        return StoreUnavailableError(f"{doing}: {exc!r}")
    return None


# Schema v1's function, kept as it was so that migration 1 never changes.
_APPEND_GROUP_V1 = """

CREATE FUNCTION {s}.append_group(
    lock_class integer, lock_key integer, channel text, expected_tail bigint,
    expected_hash bytea, new_keys bigint[], new_names text[],
    positions bigint[], stream_keys bigint[], versions bigint[], ids bytea[], types text[],
    schema_versions integer[], occurred bigint[], recorded bigint[], datas bytea[],
    metas bytea[], hashes bytea[]
) RETURNS bigint LANGUAGE plpgsql AS $body$
-- One group of appends in one statement (one round trip, one implicit transaction).
-- Writes only if the log still ends at expected_tail with expected_hash, where the
-- client's plan (positions and hash chain) starts; returns the tail position it found,
-- or -1 if only the hash differs. The lock is held until the statement's transaction
-- commits, so positions commit in order.
DECLARE
    tail bigint;
    tail_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_class, lock_key);
    -- A volatile function takes a new snapshot per statement (READ COMMITTED), so
    -- this sees every append committed before the lock was granted.
    SELECT position, hash INTO tail, tail_hash FROM {s}.events
        ORDER BY position DESC LIMIT 1;
    tail := coalesce(tail, 0);
    IF tail <> expected_tail THEN
        RETURN tail;
    END IF;
    IF tail > 0 AND tail_hash IS DISTINCT FROM expected_hash THEN
        RETURN -1;
    END IF;
    INSERT INTO {s}.streams SELECT * FROM unnest(new_keys, new_names);
    INSERT INTO {s}.events SELECT * FROM unnest(positions, stream_keys, versions, ids,
        types, schema_versions, occurred, recorded, datas, metas, hashes);
    PERFORM pg_notify(channel, positions[array_length(positions, 1)]::text);
    RETURN tail;
END
$body$
"""

_APPEND_GROUP = """
CREATE FUNCTION {s}.append_group(
    lock_class integer, lock_key integer, channel text, expected_tail bigint,
    expected_hash bytea, new_keys bigint[], new_names text[],
    positions bigint[], stream_keys bigint[], versions bigint[], ids bytea[], types text[],
    schema_versions integer[], occurred bigint[], recorded bigint[], datas bytea[],
    metas bytea[], hashes bytea[], fence_scopes text[], fence_read bigint[], fence_new bigint[]
) RETURNS bigint LANGUAGE plpgsql AS $body$
-- One group of appends in one statement (one round trip, one implicit transaction).
-- Writes only if the log still ends at expected_tail with expected_hash, where the
-- client's plan (positions and hash chain) starts, and every fence the plan checked
-- (fence_scopes) still holds the token the client planned from (fence_read); records
-- fence_new for them. Returns the tail position it found, -1 if only the hash differs,
-- -2 if only a fence differs. The lock is held until the statement's transaction
-- commits, so positions commit in order.
DECLARE
    tail bigint;
    tail_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_class, lock_key);
    -- A volatile function takes a new snapshot per statement (READ COMMITTED), so
    -- this sees every append committed before the lock was granted.
    SELECT position, hash INTO tail, tail_hash FROM {s}.events
        ORDER BY position DESC LIMIT 1;
    tail := coalesce(tail, 0);
    IF tail <> expected_tail THEN
        RETURN tail;
    END IF;
    IF tail > 0 AND tail_hash IS DISTINCT FROM expected_hash THEN
        RETURN -1;
    END IF;
    IF cardinality(fence_scopes) > 0 THEN
        -- Fences change only with appends, which move the tail checked above; this
        -- also catches a fence changed any other way. Checked before any insert: a
        -- RETURN commits what was written.
        IF EXISTS (SELECT 1 FROM unnest(fence_scopes, fence_read) AS f(scope, token)
                   LEFT JOIN {s}.fences r ON r.scope = f.scope
                   WHERE coalesce(r.token, 0) <> f.token) THEN
            RETURN -2;
        END IF;
        INSERT INTO {s}.fences
            SELECT f.scope, f.token FROM unnest(fence_scopes, fence_read, fence_new)
                AS f(scope, seen, token) WHERE f.token > f.seen
            ON CONFLICT (scope) DO UPDATE SET token = excluded.token;
    END IF;
    INSERT INTO {s}.streams SELECT * FROM unnest(new_keys, new_names);
    INSERT INTO {s}.events SELECT * FROM unnest(positions, stream_keys, versions, ids,
        types, schema_versions, occurred, recorded, datas, metas, hashes);
    PERFORM pg_notify(channel, positions[array_length(positions, 1)]::text);
    RETURN tail;
END
$body$
"""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # version -> statements that bring the schema from version - 1 to version
    1: (
        "CREATE TABLE {s}.osupgrade_meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE {s}.streams (
            stream_key bigint PRIMARY KEY,
            name text NOT NULL UNIQUE
        )""",
        """CREATE TABLE {s}.events (
            position bigint PRIMARY KEY,
            stream_key bigint NOT NULL,
            stream_version bigint NOT NULL,
            event_id bytea NOT NULL,
            type text NOT NULL,
            schema_version integer NOT NULL,
            occurred_us bigint NOT NULL,
            recorded_us bigint NOT NULL,
            data bytea NOT NULL,
            metadata bytea NOT NULL,
            hash bytea NOT NULL
        )""",
        "CREATE UNIQUE INDEX events_by_stream ON {s}.events (stream_key, stream_version)",
        "CREATE UNIQUE INDEX events_by_id ON {s}.events (event_id)",
        _APPEND_GROUP_V1,
        f"INSERT INTO {{s}}.osupgrade_meta VALUES ('application', '{APPLICATION}'),"
        " ('schema_version', '0')",
    ),
    2: (
        """CREATE TABLE {s}.fences (
            scope text PRIMARY KEY,
            token bigint NOT NULL
        )""",
        "DROP FUNCTION {s}.append_group(integer, integer, text, bigint, bytea, bigint[],"
        " text[], bigint[], bigint[], bigint[], bytea[], text[], integer[], bigint[], bigint[],"
        " bytea[], bytea[], bytea[])",
        _APPEND_GROUP,
    ),
}


class _Sql:
    """Every statement of the store, with the schema name filled in once."""

    def __init__(self, schema: str, lock_key: int) -> None:
        s = f'"{schema}"'
        self.channel = f"{schema}_events"
        self.begin_locked = (
            "BEGIN ISOLATION LEVEL READ COMMITTED;"
            f" SELECT pg_advisory_xact_lock({LOCK_CLASS}, {lock_key})"
        )
        self.tail = f"SELECT position, hash FROM {s}.events ORDER BY position DESC LIMIT 1"
        self.next_key = f"SELECT coalesce(max(stream_key), 0) + 1 FROM {s}.streams"
        self.tail_and_next_key = (  # one round trip, no lock: a hint to plan again from
            f"SELECT t.position, t.hash, ({self.next_key}) FROM (SELECT 1) AS one "
            f"LEFT JOIN LATERAL ({self.tail}) AS t ON true"
        )
        self.head = f"SELECT coalesce(max(position), 0) FROM {s}.events"
        self.append_group = (
            f"SELECT {s}.append_group({LOCK_CLASS}, {lock_key}, '{self.channel}', $1, $2,"
            " $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],"
            " $8::bytea[], $9::text[], $10::integer[], $11::bigint[], $12::bigint[],"
            " $13::bytea[], $14::bytea[], $15::bytea[], $16::text[], $17::bigint[],"
            " $18::bigint[])"
        )
        self.fences = f"SELECT scope, token FROM {s}.fences WHERE scope = ANY($1::text[])"
        self.fence_token = f"SELECT token FROM {s}.fences WHERE scope = $1"
        self.write_fences = (  # under the lock, from tokens read under it
            f"INSERT INTO {s}.fences SELECT * FROM unnest($1::text[], $2::bigint[])"
            f" ON CONFLICT (scope) DO UPDATE SET token = greatest({s}.fences.token,"
            " excluded.token)"
        )
        self.versions = (
            f"SELECT s.name, s.stream_key, (SELECT coalesce(max(e.stream_version), 0)"
            f" FROM {s}.events e WHERE e.stream_key = s.stream_key)"
            f" FROM {s}.streams s WHERE s.name = ANY($1::text[])"
        )
        self.lookup_ids = (
            f"SELECT e.event_id, s.name, e.stream_version, e.position, e.type, e.data"
            f" FROM {s}.events e JOIN {s}.streams s ON s.stream_key = e.stream_key"
            f" WHERE e.event_id = ANY($1::bytea[])"
        )
        self.insert_streams = (
            f"INSERT INTO {s}.streams SELECT * FROM unnest($1::bigint[], $2::text[])"
        )
        self.insert_events = (
            f"INSERT INTO {s}.events SELECT * FROM unnest($1::bigint[], $2::bigint[],"
            " $3::bigint[], $4::bytea[], $5::text[], $6::integer[], $7::bigint[],"
            " $8::bigint[], $9::bytea[], $10::bytea[], $11::bytea[])"
        )
        select = (
            "SELECT e.position, s.name, e.stream_version, e.event_id, e.type,"
            " e.schema_version, e.occurred_us, e.recorded_us, e.data, e.metadata"
            f" FROM {s}.events e JOIN {s}.streams s ON s.stream_key = e.stream_key "
        )
        self.read_stream = (
            select + "WHERE e.stream_key = (SELECT stream_key FROM "
            f"{s}.streams WHERE name = $1) AND e.stream_version BETWEEN $2 AND $3"
            " ORDER BY e.stream_version"
        )
        self.read_all = (
            select + "WHERE e.position > $1 AND e.position <= $2 ORDER BY e.position LIMIT $3"
        )
        self.read_types = (
            select + "WHERE e.position > $1 AND e.position <= $2 AND e.type = ANY($4::text[])"
            " ORDER BY e.position LIMIT $3"
        )
        self.stream_version = (
            f"SELECT coalesce(max(e.stream_version), 0) FROM {s}.streams s"
            f" JOIN {s}.events e ON e.stream_key = s.stream_key WHERE s.name = $1"
        )
        self.raw = (
            "SELECT e.position, coalesce(s.name, ''), e.stream_version, e.event_id, e.type,"
            " e.schema_version, e.occurred_us, e.recorded_us, e.data, e.metadata, e.hash"
            f" FROM {s}.events e LEFT JOIN {s}.streams s ON s.stream_key = e.stream_key"
            " WHERE e.position > $1 ORDER BY e.position LIMIT 5000"
        )

    def commit(self, head: int | None) -> str:
        """``COMMIT``, announcing the new head to listeners when rows were written."""
        return "COMMIT" if head is None else f"NOTIFY \"{self.channel}\", '{head}'; COMMIT"


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def schema_lock_key(schema: str) -> int:
    """The second advisory-lock key: one lock per schema, so two logs never contend."""
    return zlib.crc32(schema.encode()) - 2**31  # a signed int4


class PostgresEventStore:
    """An event log in one PostgreSQL schema; open it with ``async with``."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        clock: Clock | None = None,
        registry: EventRegistry | None = None,
        readers: int = 2,
        max_group_events: int = MAX_GROUP_EVENTS,
        poll_interval: float = 1.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        if readers < 1:
            raise ValueError("readers must be >= 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.dsn = dsn
        self.schema = schema
        self.where = f"{redact(dsn)} (schema {schema})"
        self._sql = _Sql(schema, schema_lock_key(schema))
        self._clock = clock or SystemClock()
        self._registry = registry
        self._reader_count = readers
        self._poll_interval = poll_interval
        self._connect_timeout = connect_timeout
        self._writer: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._queue = AppendQueue(max_group_events)
        self._tasks: list[asyncio.Task[None]] = []
        self._watch = HeadWatch()
        self._versions: dict[str, tuple[int, int]] = {}  # name -> (stream_key, version)
        self._fences: dict[str, int] = {}  # scope -> recorded token, as of our last commit
        self._head = 0
        self._last_hash = GENESIS_HASH
        self._next_key = 1
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._log = log.bind(db=self.where)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> PostgresEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> PostgresEventStore:
        """Connect, create or migrate the schema (refusing foreign ones), start the writer."""
        if self._state != "new":
            raise EventStoreError("a store can be opened only once")
        try:
            self._writer = await self._connect()
            try:
                await self._prepare_schema(self._writer)
                await self._refresh_tail(self._writer)
            except asyncpg.PostgresError as exc:  # e.g. no CREATE privilege on the database
                message = f"cannot prepare the event log in {self.where}: {exc}"
                raise EventStoreError(message) from exc
            self._pool = await self._create_pool()
            await self._listen()
        except BaseException:
            await self._close_connections()
            raise
        self._watch.advance(self._head)
        self._state = "open"
        self._tasks = [
            asyncio.create_task(self._run_writer(), name="pg-event-store-writer"),
            asyncio.create_task(self._poll_head(), name="pg-event-store-poll"),
        ]
        self._log.info("event store opened", head=self._head)
        return self

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self.dsn, timeout=self._connect_timeout, server_settings=_SETTINGS
            )
        except OPEN_ERRORS as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact(self.dsn)}: {exc or type(exc).__name__}"
            ) from exc

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                self.dsn,
                min_size=self._reader_count,
                max_size=self._reader_count,
                timeout=self._connect_timeout,
                server_settings=_SETTINGS,
            )
        except OPEN_ERRORS as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact(self.dsn)}: {exc}"
            ) from exc

    async def _prepare_schema(self, conn: asyncpg.Connection) -> None:
        """Create, migrate or refuse the schema, under a lock so engines starting together
        do not race to create it."""
        s = f'"{self.schema}"'
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0)")
            tables = await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'm', 'p', 'f')",
                self.schema,
            )
            names = {r[0] for r in tables}
            if not names:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                version = 0
            elif "osupgrade_meta" not in names:
                raise NotAnEventStoreError(
                    f"{self.where} holds tables {sorted(names)[:5]} but is not an osupgrade "
                    "event log; use another schema or database"
                )
            else:
                version = await self._stored_version(conn)
            if version > SCHEMA_VERSION:
                raise CorruptStoreError(
                    f"{self.where} has event log schema v{version}; this code reads "
                    f"v{SCHEMA_VERSION} - upgrade osupgrade"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    await conn.execute(statement.format(s=s))
                await conn.execute(
                    f"UPDATE {s}.osupgrade_meta SET value = $1 WHERE key = 'schema_version'",
                    str(target),
                )
                self._log.info("event store schema migrated", schema_version=target)

    async def _stored_version(self, conn: asyncpg.Connection) -> int:
        query = f'SELECT key, value FROM "{self.schema}".osupgrade_meta'
        rows: dict[str, str] = {r[0]: r[1] for r in await conn.fetch(query)}
        if rows.get("application") != APPLICATION or "schema_version" not in rows:
            raise NotAnEventStoreError(
                f"{self.where} has an osupgrade_meta table that is not an osupgrade event log's"
            )
        try:
            return int(rows["schema_version"])
        except ValueError:
            raise CorruptStoreError(
                f"{self.where}: unreadable schema version {rows['schema_version']!r}"
            ) from None

    async def close(self) -> None:
        """Commit every append already queued, then close all connections."""
        if self._state in ("closing", "closed"):
            return
        was_open = self._state == "open"
        self._state = "closing"
        self._queue.wake()
        if self._tasks:
            self._tasks[1].cancel()
            for task in self._tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        await self._close_connections()
        self._watch.close()
        self._state = "closed"
        if was_open:
            self._log.info("event store closed", head=self._head)

    async def _close_connections(self) -> None:
        for conn in (self._listener, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.close()
        self._listener = self._writer = self._pool = None

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreClosedError(f"the event store at {self.where} is {self._state}")

    # -- wake-ups --------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """A commit anywhere on this log (any process): wake readers up to its head."""
        with contextlib.suppress(ValueError, TypeError):
            self._watch.advance(int(str(payload)))

    async def _listen(self) -> None:
        """Open the LISTEN connection (again, after it was lost)."""
        listener = await self._connect()
        await listener.add_listener(self._sql.channel, self._on_notify)
        self._listener = listener

    async def _poll_head(self) -> None:
        """The fallback when a notification is lost: look at the head now and then, and
        listen again once the LISTEN connection is back (a server restart drops it)."""
        while True:
            await asyncio.sleep(self._poll_interval)
            if self._state != "open":
                return
            try:
                if self._listener is None or self._listener.is_closed():
                    self._listener = None
                    await self._listen()
                    self._log.info("listening for commits again")
                await self.head()  # after re-listening, so no commit falls in between
            except Exception as exc:  # noqa: BLE001 - a fallback must outlive server trouble
                self._log.warning("polling the head failed; retrying", error=repr(exc))

    # -- appending -------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        fence: Fence | None = None,
    ) -> list[int]:
        """See ``EventStore.append``; returns after the group's ``COMMIT``."""
        self._check_open()
        return await self._queue.put(stream_id, events, expected_version, fence)

    async def fence_token(self, scope: str) -> int:
        """See ``EventStore.fence_token`` (read from the database: sees every engine's raises)."""
        check_scope(scope)
        async with self._reader() as conn:
            token = await conn.fetchval(self._sql.fence_token, scope)
        return int(token or 0)

    async def _run_writer(self) -> None:
        await self._queue.run_writer(
            partial(self._commit_group, careful=False),
            lambda: self._state == "open",
            self._writer_stopped,
        )

    def _writer_stopped(self, exc: BaseException) -> StoreClosedError:
        """The store can take no more appends; what its waiting callers are told."""
        self._state = "closing"
        if not isinstance(exc, asyncio.CancelledError):
            self._log.exception("event store writer stopped")
        return StoreClosedError(f"the writer of {self.where} stopped: {exc!r}")

    async def _commit_group(
        self, group: list[Append], *, careful: bool, retry: bool = True
    ) -> None:
        """Write one group atomically and settle every caller's future.

        The fast path is one round trip: ``append_group`` takes the lock, checks that
        the log still ends where our cache says, and inserts. If another process
        appended meanwhile it writes nothing, and the group is planned again by
        ``_locked_plan`` from what is read under the lock. A reused event id makes the
        insert fail; the group is then redone one append at a time with ids looked
        up, so one bad append cannot fail the others. A lost connection is retried
        once, on a new one, with ids looked up: an append that did commit is then
        recognised as a retry, so the caller never sees an unknown outcome.
        """
        committing = False
        try:
            conn = await self._writer_connection()
            plan = None if careful else await self._fast_commit(conn, group)
            if plan is None:
                plan = await self._locked_plan(conn, group, careful=careful)
                await self._write(conn, plan)
                committing = True
                await conn.execute(self._sql.commit(plan.head if plan.rows else None))
        except Exception as exc:  # noqa: BLE001 - every failure is handed to the callers
            await self._rollback()
            self._versions.clear()  # the cache may reflect a transaction that did not commit
            self._fences.clear()
            if retry and self._writer_lost():
                self._log.warning("writer connection lost; retrying the group", error=repr(exc))
                await self._commit_group(group, careful=True, retry=False)
                return
            if isinstance(exc, asyncpg.UniqueViolationError) and (len(group) > 1 or not careful):
                for item in group:
                    await self._commit_group([item], careful=True)
                return
            error = self._translate(exc, committing=committing)
            passing = isinstance(error, StoreUnavailableError)  # retried by the callers
            report = self._log.warning if passing else self._log.error
            report("append group failed", error=str(error), appends=len(group))
            for item in group:
                settle(item.future, error)
            return
        self._after_commit(plan)
        for index, item in enumerate(group):
            settle(item.future, plan.results[index])

    async def _fast_commit(self, conn: asyncpg.Connection, group: list[Append]) -> GroupPlan | None:
        """Plan from the caches and commit in one statement; ``None`` if that cannot work.

        Versions and fences missing from the cache are read without the lock: if anyone
        appends after that read, the log's tail moves and ``append_group`` refuses the
        plan. Fences change only with appends, so cached ones are exact whenever the
        tail is; ``append_group`` checks them anyway, under the lock, before writing.

        When another process appended meanwhile (engines sharing the log), the new tail
        is read without the lock and the group planned again, up to ``_FAST_TRIES``
        times, instead of taking the locked path (about seven round trips with the lock
        held). The caches are kept: leases keep engines on their own streams, and a
        version that is stale after all fails on the unique ``(stream, version)`` index,
        after which the group is redone on the careful path.
        """
        for _ in range(_FAST_TRIES):
            outcome = await self._try_fast(conn, group)
            if outcome == "locked path":
                return None
            if outcome != "moved":
                return outcome
            await self._refresh_tail(conn)
        return None

    async def _try_fast(
        self, conn: asyncpg.Connection, group: list[Append]
    ) -> GroupPlan | Literal["moved", "locked path"]:
        """One attempt: the committed plan, or why there is none."""
        versions = await self._load_versions(conn, {item.stream_id for item in group})
        fences = await self._load_fences(conn, fence_scopes(group), fresh=False)
        if conflicts(group, versions) or fenced_out(group, fences):
            return "locked path"  # real, a retry or a stale cache: only it can tell
        plan = self._plan(group, versions, fences, {})
        keys, names = zip(*plan.new_streams, strict=True) if plan.new_streams else ((), ())
        columns = [list(column) for column in zip(*plan.rows, strict=True)]
        writes = plan.fence_writes()
        scopes, read, new = (list(c) for c in zip(*writes, strict=True)) if writes else ([], [], [])
        tail = await conn.fetchval(
            self._sql.append_group, self._head, self._last_hash, list(keys), list(names),
            *columns, scopes, read, new,
        )  # fmt: skip
        if tail == -2:
            self._log.warning("fences changed without an append; planning under the lock")
            self._fences.clear()
            return "locked path"
        if tail == -1:
            return "locked path"  # same position, other hash: only it can tell why
        if tail != self._head:
            self._log.debug("log advanced by another writer", ours=self._head, found=tail)
            return "moved"
        return plan

    async def _refresh_tail(self, conn: asyncpg.Connection) -> None:
        """Plan from the log's current end next time (one round trip; no lock needed:
        ``append_group`` checks the tail again under it)."""
        row = await conn.fetchrow(self._sql.tail_and_next_key)
        assert row is not None
        position, digest, next_key = row
        self._head = 0 if position is None else position
        self._last_hash = GENESIS_HASH if position is None else digest
        self._next_key = int(next_key)

    async def _locked_plan(
        self, conn: asyncpg.Connection, group: list[Append], *, careful: bool
    ) -> GroupPlan:
        """Open a transaction, take the lock and plan from what the database holds."""
        await conn.execute(self._sql.begin_locked)
        await self._sync_tail(conn)
        versions = await self._load_versions(conn, {item.stream_id for item in group})
        fences = await self._load_fences(conn, fence_scopes(group), fresh=True)
        # a conflict or a refusal may be a retry
        careful = careful or conflicts(group, versions) or fenced_out(group, fences)
        found = await self._lookup_ids(conn, group) if careful else {}
        return self._plan(group, versions, fences, found)

    def _plan(
        self,
        group: list[Append],
        versions: dict[str, tuple[int, int]],
        fences: dict[str, int],
        found: dict[bytes, StoredId],
    ) -> GroupPlan:
        start = GroupPlan(self._head, self._last_hash, self._next_key, versions, fences=fences)
        return plan_group(start, group, found, to_micros(self._clock.now()))

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer's connection, reconnecting once it was lost (server restart)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            self._writer = await self._connect()
            self._log.info("writer reconnected")
        return self._writer

    def _writer_lost(self) -> bool:
        return self._writer is None or self._writer.is_closed()

    async def _write(self, conn: asyncpg.Connection, plan: GroupPlan) -> None:
        if plan.new_streams:
            keys, names = zip(*plan.new_streams, strict=True)
            await conn.execute(self._sql.insert_streams, list(keys), list(names))
        if plan.rows:
            await conn.execute(
                self._sql.insert_events, *(list(c) for c in zip(*plan.rows, strict=True))
            )
        raised = [(scope, new) for scope, read, new in plan.fence_writes() if new > read]
        if raised:
            scopes, tokens = zip(*raised, strict=True)
            await conn.execute(self._sql.write_fences, list(scopes), list(tokens))

    async def _sync_tail(self, conn: asyncpg.Connection) -> None:
        """Notice appends made by another process since our last commit (under the lock)."""
        ours = self._head
        await self._refresh_tail(conn)
        if self._head != ours:
            self._log.debug("log advanced by another writer", ours=ours, found=self._head)
            self._versions.clear()
            self._fences.clear()

    async def _load_versions(
        self, conn: asyncpg.Connection, names: set[str]
    ) -> dict[str, tuple[int, int]]:
        versions: dict[str, tuple[int, int]] = {}
        missing = []
        for name in names:
            known = self._versions.get(name)
            if known is None:
                missing.append(name)
            else:
                versions[name] = known
        if missing:
            for name, key, version in await conn.fetch(self._sql.versions, missing):
                versions[name] = (key, version)
            for name in missing:
                versions.setdefault(name, (0, 0))  # key 0: not stored yet
        return versions

    async def _load_fences(
        self, conn: asyncpg.Connection, scopes: set[str], *, fresh: bool
    ) -> dict[str, int]:
        """The recorded token of each scope (0 if none): from the cache unless ``fresh``
        (the locked path reads them all under the lock)."""
        if not scopes:
            return {}
        fences = {} if fresh else {s: self._fences[s] for s in scopes if s in self._fences}
        missing = [s for s in scopes if s not in fences]
        if missing:
            fences.update((r[0], r[1]) for r in await conn.fetch(self._sql.fences, missing))
            for scope in missing:
                fences.setdefault(scope, 0)
        return fences

    async def _lookup_ids(
        self, conn: asyncpg.Connection, items: list[Append]
    ) -> dict[bytes, StoredId]:
        ids = [event.event_id for item in items for event in item.batch]
        rows = await conn.fetch(self._sql.lookup_ids, ids)
        return {r[0]: StoredId(r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def _after_commit(self, plan: GroupPlan) -> None:
        if len(self._versions) > 200_000:
            self._versions.clear()
        for name, (key, version) in plan.versions.items():
            if key != 0:
                self._versions[name] = (key, version)
        if len(self._fences) > 200_000:
            self._fences.clear()
        self._fences.update(plan.fences)  # read under this commit's lock or checked by it
        self._head, self._last_hash, self._next_key = plan.head, plan.last_hash, plan.next_key
        self._watch.advance(plan.head)

    async def _rollback(self) -> None:
        conn = self._writer
        if conn is None or conn.is_closed():
            return
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection is replaced on next use
            with contextlib.suppress(Exception):
                conn.terminate()

    def _translate(self, exc: BaseException, *, committing: bool) -> EventStoreError:
        if isinstance(exc, EventStoreError):
            return exc
        if committing and not isinstance(exc, asyncpg.exceptions.DiskFullError):
            return StoreUnavailableError(
                f"append to {self.where}: the outcome of COMMIT is unknown ({exc!r}); "
                "retry with the same events (a retry never writes them twice)"
            )
        lost = unavailable(exc, f"append to {self.where} failed, nothing was written")
        if lost is not None:
            return lost
        return EventStoreError(f"append to {self.where} failed, nothing was written: {exc!r}")

    # -- reading ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        self._check_open()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except CONNECTION_ERRORS:
                    with contextlib.suppress(asyncpg.InterfaceError):  # released if closed
                        conn.terminate()  # the pool connects a new one on next use
                    # A lost connection mostly means the server restarted: its idle
                    # siblings are dead too, so the next read must not meet one of them.
                    await self._pool.expire_connections()
                    raise
        except CONNECTION_ERRORS as exc:
            lost = unavailable(exc, f"read from {self.where} failed")
            assert lost is not None
            raise lost from exc

    async def _fetch(self, sql: str, *params: object) -> list[RecordedEvent]:
        async with self._reader() as conn:
            rows = await conn.fetch(sql, *params)
        loads = orjson.loads
        events = [
            RecordedEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], loads(r[8]), r[9])
            for r in rows
        ]
        if self._registry is None:
            return events
        return [self._registry.upcast(e) for e in events]

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        """See ``EventStore.read_stream``."""
        check_stream_name(stream_id)
        upper = to_version if to_version is not None else _FAR
        return await self._fetch(self._sql.read_stream, stream_id, from_version, upper)

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Collection[str] | None = None,
        up_to: int | None = None,
    ) -> list[RecordedEvent]:
        """See ``EventStore.read_all``."""
        return await self._page(
            after, limit, frozenset(types) if types is not None else None, up_to
        )

    async def _page(
        self, after: int, limit: int, types: frozenset[str] | None, up_to: int | None
    ) -> list[RecordedEvent]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        upper = up_to if up_to is not None else _FAR
        if types is None:
            return await self._fetch(self._sql.read_all, after, upper, limit)
        if not types:
            self._check_open()
            return []
        return await self._fetch(self._sql.read_types, after, upper, limit, sorted(types))

    async def head(self) -> int:
        """See ``EventStore.head`` (also sees commits made by other processes)."""
        async with self._reader() as conn:
            head = int(await conn.fetchval(self._sql.head))
        self._watch.advance(head)
        return head

    async def stream_version(self, stream_id: str) -> int:
        """See ``EventStore.stream_version``."""
        check_stream_name(stream_id)
        async with self._reader() as conn:
            return int(await conn.fetchval(self._sql.stream_version, stream_id))

    def subscribe(
        self, *, after: int = 0, types: Collection[str] | None = None, batch_size: int = 1000
    ) -> Subscription:
        """See ``EventStore.subscribe``."""
        self._check_open()
        return Subscription(
            self._page, self._watch, after=after, types=types, batch_size=batch_size
        )

    async def until(self, position: int) -> int:
        """See ``EventStore.until``."""
        self._check_open()
        return await self._watch.wait_until(position)

    async def verify(self, progress: ProgressCallback | None = None) -> VerifyReport:
        """See ``EventStore.verify``; reads the raw rows in pages of 5,000."""

        async def page(after: int) -> list[Any]:
            async with self._reader() as conn:
                return [tuple(r) for r in await conn.fetch(self._sql.raw, after)]

        report = await verify_paged(page, await self.head(), progress)
        self._log.info("hash chain verified", ok=report.ok, checked=report.checked,
                       first_bad_position=report.first_bad_position)  # fmt: skip
        return report


_SETTINGS = {
    "application_name": "osupgrade",
    # Both append paths rely on a fresh snapshot per statement after the lock is taken.
    "default_transaction_isolation": "read committed",
}

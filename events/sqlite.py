"""The durable ``EventStore`` on SQLite through aiosqlite.

Design, in the order it matters:

* WAL journal; every append goes through **one writer task** that takes all appends
  queued by concurrent tasks and commits them in one ``BEGIN IMMEDIATE`` transaction
  (group commit). A caller's ``append`` returns only after that ``COMMIT``, so an
  acknowledged event survives a crash of the process.
* SQLite has one writer at a time, so positions (``rowid``) are handed out in commit
  order; readers can never skip an event that commits late.
* Reads use their own connections, so a long replay never blocks appends.
* The schema keeps the per-event indexes narrow: streams are interned to integer
  keys, which keeps ``(stream_key, stream_version)`` small enough to stay in cache
  when thousands of streams are written interleaved.

Durability: ``durability="full"`` (default) sets ``synchronous=FULL`` - a committed
append survives power loss. ``"normal"`` sets ``synchronous=NORMAL`` - it survives a
killed process but the last commits may be lost on power loss. With group commit the
two cost about the same; see docs/EVENTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson
import structlog

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

APPLICATION_ID = 0x4F535550  # "OSUP": marks a database file as an osupgrade event log
SCHEMA_VERSION = 2  # v2: the fences table
MAX_GROUP_EVENTS = 5000
_PARAMS_PER_QUERY = 500  # stays far below SQLite's bound-parameter limit
_STREAM_CACHE_LIMIT = 200_000

Durability = Literal["full", "normal"]

_CREATE_FENCES = """CREATE TABLE fences (
        scope TEXT PRIMARY KEY,
        token INTEGER NOT NULL
    ) WITHOUT ROWID"""

_SCHEMA = (
    """CREATE TABLE streams (
        stream_key INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream_key INTEGER NOT NULL,
        stream_version INTEGER NOT NULL,
        event_id BLOB NOT NULL,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        occurred_us INTEGER NOT NULL,
        recorded_us INTEGER NOT NULL,
        data BLOB NOT NULL,
        metadata BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    "CREATE UNIQUE INDEX events_by_stream ON events (stream_key, stream_version)",
    "CREATE UNIQUE INDEX events_by_id ON events (event_id)",
    _CREATE_FENCES,
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # version -> statements that bring a log from version - 1 to version
    2: (_CREATE_FENCES,),
}

# Records a fence only if the scope still holds the token the plan was made from (the
# fast path's cache may be stale): executemany's rowcount then falls short, and the
# group is redone under the lock. Scopes of accepted appends only, so never on the
# unfenced path.
_WRITE_FENCE = (
    "INSERT INTO fences (scope, token) SELECT ?1, ?3"
    " WHERE coalesce((SELECT token FROM fences WHERE scope = ?1), 0) = ?2"
    " ON CONFLICT (scope) DO UPDATE SET token = excluded.token"
)

_SELECT = (  # stream names are resolved from a cache: a join costs more per row
    "SELECT position, stream_key, stream_version, event_id, type, schema_version, "
    "occurred_us, recorded_us, data, metadata FROM events "
)
_RAW_SELECT = (  # every stored column, exactly as stored, for audits
    "SELECT e.position, coalesce(s.name, ''), e.stream_version, e.event_id, e.type, "
    "e.schema_version, e.occurred_us, e.recorded_us, e.data, e.metadata, e.hash "
    "FROM events e LEFT JOIN streams s ON s.stream_key = e.stream_key "
)
_INSERT_EVENT = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)"

log = structlog.get_logger("osupgrade.events.sqlite")


class SQLiteEventStore:
    """An event log in one SQLite file; open it with ``async with``."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = "full",
        clock: Clock | None = None,
        registry: EventRegistry | None = None,
        readers: int = 2,
        max_group_events: int = MAX_GROUP_EVENTS,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        if readers < 1:
            raise ValueError("readers must be >= 1")
        self.path = Path(path)
        self._durability = durability
        self._clock = clock or SystemClock()
        self._registry = registry
        self._reader_count = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._queue = AppendQueue(max_group_events)
        self._writer_task: asyncio.Task[None] | None = None
        self._watch = HeadWatch()
        self._versions: dict[str, tuple[int, int]] = {}  # name -> (stream_key, version)
        self._fences: dict[str, int] = {}  # scope -> recorded token, as of our last commit
        self._names: dict[int, str] = {}  # stream_key -> name, for decoding reads
        self._head = 0
        self._last_hash = GENESIS_HASH
        self._next_key = 1
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._log = log.bind(db=str(self.path))

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> SQLiteEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> SQLiteEventStore:
        """Open (creating if needed) the log; refuse files that are not ours."""
        if self._state != "new":
            raise EventStoreError("a store can be opened only once")
        if self.path.is_dir():
            raise NotAnEventStoreError(f"{self.path} is a directory, not an event log")
        try:
            self._writer = await self._connect(writer=True)
            await self._prepare_schema(self._writer)
            for _ in range(self._reader_count):
                reader = await self._connect()
                await reader.execute("PRAGMA query_only = 1")
                self._all_readers.append(reader)
                self._readers.put_nowait(reader)
            await self._load_tail(self._writer)
        except BaseException:
            await self._close_connections()
            raise
        self._watch.advance(self._head)
        self._state = "open"
        self._writer_task = asyncio.create_task(self._run_writer(), name="event-store-writer")
        self._log.info("event store opened", head=self._head, durability=self._durability)
        return self

    async def _connect(self, *, writer: bool = False) -> aiosqlite.Connection:
        # The writer lets the driver open ``BEGIN IMMEDIATE`` implicitly before the
        # first INSERT, which saves a round trip per group; readers run in autocommit.
        isolation: Literal["IMMEDIATE"] | None = "IMMEDIATE" if writer else None
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=isolation)
        except sqlite3.Error as exc:
            raise NotAnEventStoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute("PRAGMA cache_size = -65536")
            await conn.execute(f"PRAGMA synchronous = {self._durability.upper()}")
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise _foreign_or_corrupt(self.path, exc) from exc
        return conn

    async def _prepare_schema(self, conn: aiosqlite.Connection) -> None:
        try:
            app_id = await _scalar(conn, "PRAGMA application_id")
            version = await _scalar(conn, "PRAGMA user_version")
            tables = await _scalar(conn, "SELECT count(*) FROM sqlite_master")
        except sqlite3.DatabaseError as exc:
            raise _foreign_or_corrupt(self.path, exc) from exc
        if app_id == 0 and tables == 0:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                await conn.execute(statement)
            await conn.execute("COMMIT")
            self._log.info("event store created", schema_version=SCHEMA_VERSION)
            return
        if app_id != APPLICATION_ID:
            raise NotAnEventStoreError(
                f"{self.path} is an SQLite database but not an osupgrade event log"
            )
        if not 1 <= version <= SCHEMA_VERSION:
            raise CorruptStoreError(
                f"{self.path} has event log schema v{version}; this code reads v{SCHEMA_VERSION}"
            )
        mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
        if mode != "wal":
            raise CorruptStoreError(f"{self.path}: cannot switch to WAL (got {mode})")
        if version < SCHEMA_VERSION:
            await self._migrate(conn)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        """Bring an older log to ``SCHEMA_VERSION`` in one transaction; the version is read
        again under the write lock, so two processes opening it together migrate once."""
        await conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(await _scalar(conn, "PRAGMA user_version"))
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {target}")
                self._log.info("event store schema migrated", schema_version=target)
            await conn.execute("COMMIT")
        except BaseException:
            await self._rollback(conn)
            raise

    async def _load_tail(self, conn: aiosqlite.Connection) -> None:
        try:
            cursor = await conn.execute(
                "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
            )
            last = await cursor.fetchone()
            next_key = await _scalar(conn, "SELECT coalesce(max(stream_key), 0) + 1 FROM streams")
        except sqlite3.DatabaseError as exc:
            raise _foreign_or_corrupt(self.path, exc) from exc
        self._head, self._last_hash = (last[0], last[1]) if last else (0, GENESIS_HASH)
        self._next_key = int(next_key)

    async def close(self) -> None:
        """Commit every append already queued, then close all connections."""
        if self._state in ("closing", "closed"):
            return
        was_open = self._state == "open"
        self._state = "closing"
        self._queue.wake()
        if self._writer_task is not None:
            with contextlib.suppress(Exception):
                await self._writer_task
        await self._close_connections()
        self._watch.close()
        self._state = "closed"
        if was_open:
            self._log.info("event store closed", head=self._head)

    async def _close_connections(self) -> None:
        for conn in [*self._all_readers, *([self._writer] if self._writer else [])]:
            with contextlib.suppress(Exception):
                await conn.close()
        self._all_readers.clear()
        self._writer = None

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreClosedError(f"the event store at {self.path} is {self._state}")

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
        """See ``EventStore.fence_token`` (read from the file: sees other processes' raises)."""
        check_scope(scope)
        async with self._reader() as conn:
            token = await _scalar(conn, "SELECT token FROM fences WHERE scope = ?", (scope,))
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
        return StoreClosedError(f"the writer of {self.path} stopped: {exc!r}")

    async def _commit_group(self, group: list[Append], *, careful: bool) -> None:
        """Write one group in one transaction and settle every caller's future.

        The fast path costs two round trips to the database thread: ``executemany``
        (which opens the ``BEGIN IMMEDIATE`` transaction implicitly) and ``COMMIT``.
        It trusts the cached stream versions, fences and our own head; if another
        process wrote in between, our positions collide with its rows, the insert fails
        and the group is redone carefully: under the write lock, with the tail re-read,
        the fences read and every event id looked up. Fences change only with appends,
        so a fast path that commits had exact ones; a fenced group also checks them in
        the transaction (``_WRITE_FENCE``) rather than rely on that alone.
        """
        assert self._writer is not None
        conn = self._writer
        try:
            if careful:
                await conn.execute("BEGIN IMMEDIATE")
                await self._sync_tail(conn)
            versions = await self._load_versions(conn, {item.stream_id for item in group})
            fences = await self._load_fences(conn, fence_scopes(group), fresh=careful)
            if not careful and (conflicts(group, versions) or fenced_out(group, fences)):
                # A conflict or a refusal may be real, may be a retry, or may come from
                # a stale cache: only the careful path can tell them apart.
                await self._commit_group(group, careful=True)
                return
            found = await self._lookup_ids(conn, group) if careful else {}
            plan = self._plan(group, versions, fences, found)
            await self._write(conn, plan)
            if conn.in_transaction:
                await conn.commit()
        except Exception as exc:  # noqa: BLE001 - every failure is handed to the callers
            await self._rollback(conn)
            self._versions.clear()  # the cache may reflect a transaction that did not commit
            self._fences.clear()
            if isinstance(exc, _FencesMovedError) and not careful:
                self._log.warning("fences changed without an append; redoing the group")
                await self._commit_group(group, careful=True)
                return
            if isinstance(exc, sqlite3.IntegrityError) and (len(group) > 1 or not careful):
                # A reused event id or another process's commit: settle each append
                # alone and carefully, so one bad append cannot fail the others.
                for item in group:
                    await self._commit_group([item], careful=True)
                return
            error = _translate(self.path, exc)
            passing = isinstance(error, StoreUnavailableError)  # retried by the callers
            report = self._log.warning if passing else self._log.error
            report("append group failed", error=str(error), appends=len(group))
            for item in group:
                settle(item.future, error)
            return
        self._after_commit(plan)
        for index, item in enumerate(group):
            settle(item.future, plan.results[index])

    async def _write(self, conn: aiosqlite.Connection, plan: GroupPlan) -> None:
        """Insert the plan's streams and events and record its fences (one transaction)."""
        if plan.new_streams:
            await conn.executemany("INSERT INTO streams VALUES (?, ?)", plan.new_streams)
        if plan.rows:
            await conn.executemany(_INSERT_EVENT, plan.rows)
        if plan.fenced_scopes:
            writes = plan.fence_writes()
            cursor = await conn.executemany(_WRITE_FENCE, writes)
            if cursor.rowcount != len(writes):
                raise _FencesMovedError

    def _plan(
        self,
        group: list[Append],
        versions: dict[str, tuple[int, int]],
        fences: dict[str, int],
        found: dict[bytes, StoredId],
    ) -> GroupPlan:
        """Decide, without I/O, what each append of the group gets: rows or an error."""
        plan = GroupPlan(
            head=self._head,
            last_hash=self._last_hash,
            next_key=self._next_key,
            versions=versions,
            fences=fences,
        )
        return plan_group(plan, group, found, to_micros(self._clock.now()))

    async def _sync_tail(self, conn: aiosqlite.Connection) -> None:
        """Notice appends made by another process since our last commit."""
        cursor = await conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        )
        last = await cursor.fetchone()
        head = last[0] if last else 0
        if head != self._head:
            self._log.info("log advanced by another writer", ours=self._head, found=head)
            self._head, self._last_hash = (last[0], last[1]) if last else (0, GENESIS_HASH)
            next_key = await _scalar(conn, "SELECT coalesce(max(stream_key), 0) + 1 FROM streams")
            self._next_key = int(next_key)
            self._versions.clear()  # the other writer may have moved any cached stream
            self._fences.clear()  # ... or raised a fence

    async def _load_versions(
        self, conn: aiosqlite.Connection, names: set[str]
    ) -> dict[str, tuple[int, int]]:
        versions: dict[str, tuple[int, int]] = {}
        missing = []
        for name in names:
            known = self._versions.get(name)
            if known is None:
                missing.append(name)
            else:
                versions[name] = known
        for chunk in _chunks(missing, _PARAMS_PER_QUERY):
            marks = ",".join("?" * len(chunk))
            rows = await conn.execute_fetchall(
                "SELECT s.name, s.stream_key, (SELECT coalesce(max(stream_version), 0) "
                "FROM events e WHERE e.stream_key = s.stream_key) "
                f"FROM streams s WHERE s.name IN ({marks})",
                chunk,
            )
            for name, key, version in rows:
                versions[name] = (key, version)
        for name in missing:
            versions.setdefault(name, (0, 0))  # key 0: not stored yet
        return versions

    async def _load_fences(
        self, conn: aiosqlite.Connection, scopes: set[str], *, fresh: bool
    ) -> dict[str, int]:
        """The recorded token of each scope (0 if none): from the cache unless ``fresh``.

        The careful path reads them all under the write lock; the fast path's cached
        values are checked again by ``_WRITE_FENCE`` in the writing transaction.
        """
        if not scopes:
            return {}
        fences = {} if fresh else {s: self._fences[s] for s in scopes if s in self._fences}
        missing = [s for s in scopes if s not in fences]
        for chunk in _chunks(missing, _PARAMS_PER_QUERY):
            marks = ",".join("?" * len(chunk))
            rows = await conn.execute_fetchall(
                f"SELECT scope, token FROM fences WHERE scope IN ({marks})", chunk
            )
            fences.update((scope, token) for scope, token in rows)
        for scope in missing:
            fences.setdefault(scope, 0)
        return fences

    async def _lookup_ids(
        self, conn: aiosqlite.Connection, items: list[Append]
    ) -> dict[bytes, StoredId]:
        ids = [event.event_id for item in items for event in item.batch]
        found: dict[bytes, StoredId] = {}
        for chunk in _chunks(ids, _PARAMS_PER_QUERY):
            marks = ",".join("?" * len(chunk))
            rows = await conn.execute_fetchall(
                "SELECT e.event_id, s.name, e.stream_version, e.position, e.type, e.data "
                "FROM events e CROSS JOIN streams s ON s.stream_key = e.stream_key "
                f"WHERE e.event_id IN ({marks})",
                chunk,
            )
            for event_id, name, version, position, type_name, data in rows:
                found[event_id] = StoredId(name, version, position, type_name, data)
        return found

    def _after_commit(self, plan: GroupPlan) -> None:
        if len(self._versions) > _STREAM_CACHE_LIMIT:
            self._versions.clear()
        for name, (key, version) in plan.versions.items():
            if key != 0:  # key 0: looked up, nothing written; no placeholder in the cache
                self._versions[name] = (key, version)
        for key, name in plan.new_streams:
            self._names[key] = name
        if len(self._fences) > _STREAM_CACHE_LIMIT:
            self._fences.clear()
        self._fences.update(plan.fences)  # read under this commit's lock or checked by it
        self._head, self._last_hash, self._next_key = plan.head, plan.last_hash, plan.next_key
        self._watch.advance(plan.head)

    async def _rollback(self, conn: aiosqlite.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")

    # -- reading ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        self._check_open()
        conn = await self._readers.get()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise _translate(self.path, exc) from exc
        finally:
            self._readers.put_nowait(conn)

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[RecordedEvent]:
        async with self._reader() as conn:
            rows = await conn.execute_fetchall(sql, params)
            names = self._names
            missing = list({r[1] for r in rows if r[1] not in names})
            for chunk in _chunks(missing, _PARAMS_PER_QUERY):
                found = await conn.execute_fetchall(
                    "SELECT stream_key, name FROM streams "
                    f"WHERE stream_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                names.update((key, name) for key, name in found)
        loads = orjson.loads
        events = [
            RecordedEvent(r[0], names[r[1]], r[2], r[3], r[4], r[5], r[6], r[7], loads(r[8]), r[9])
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
        upper = to_version if to_version is not None else 2**62
        return await self._fetch(
            _SELECT + "WHERE stream_key = (SELECT stream_key FROM streams WHERE name = ?) "
            "AND stream_version BETWEEN ? AND ? ORDER BY stream_version",
            (stream_id, from_version, upper),
        )

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
        sql = _SELECT + "WHERE position > ? AND position <= ? "
        params: list[object] = [after, up_to if up_to is not None else 2**62]
        if types is not None:
            if not types:
                return []
            sql += f"AND type IN ({','.join('?' * len(types))}) "
            params.extend(sorted(types))
        sql += "ORDER BY position LIMIT ?"
        params.append(limit)
        return await self._fetch(sql, params)

    async def head(self) -> int:
        """See ``EventStore.head`` (also sees commits made by other processes)."""
        async with self._reader() as conn:
            head = int(await _scalar(conn, "SELECT coalesce(max(position), 0) FROM events"))
        self._watch.advance(head)
        return head

    async def stream_version(self, stream_id: str) -> int:
        """See ``EventStore.stream_version``."""
        check_stream_name(stream_id)
        async with self._reader() as conn:
            version = await _scalar(
                conn,
                "SELECT coalesce(max(e.stream_version), 0) FROM streams s "
                "CROSS JOIN events e ON e.stream_key = s.stream_key WHERE s.name = ?",
                (stream_id,),
            )
        return int(version)

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
                return list(
                    await conn.execute_fetchall(
                        _RAW_SELECT + "WHERE e.position > ? ORDER BY e.position LIMIT 5000",
                        (after,),
                    )
                )

        report = await verify_paged(page, await self.head(), progress)
        self._log.info("hash chain verified", ok=report.ok, checked=report.checked,
                       first_bad_position=report.first_bad_position)  # fmt: skip
        return report


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> Any:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    await cursor.close()
    return row[0] if row else None


def _chunks(items: list[str] | list[bytes], size: int) -> Iterable[list[str] | list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _FencesMovedError(Exception):
    """A fence the fast path planned from was changed (by hand: not through an append)."""


def _foreign_or_corrupt(path: Path, exc: sqlite3.DatabaseError) -> EventStoreError:
    text = str(exc)
    if "not a database" in text:
        return NotAnEventStoreError(f"{path} is not an SQLite database: {text}")
    return CorruptStoreError(f"{path} is damaged: {text}")


_FREE_BYTES_FULL = 1 << 20  # a disk with less than this left counts as full


def unavailable(path: Path, exc: BaseException) -> StoreUnavailableError | None:
    """A full store, or a passing I/O or lock condition, as a typed error; None otherwise.

    ``SQLITE_FULL`` (the disk, or ``max_page_count``) becomes ``StoreFullError``; so does
    an I/O error while the disk holding the file has (almost) no space left, which is
    how some file systems report a full disk. SQLite rolls the statement or transaction
    back on these: the connection stays usable, and writes succeed again once there
    is room. Shared with the projection's SQLite tables.
    """
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    code = exc.sqlite_errorcode & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and _disk_full(path)):
        return StoreFullError(
            f"{path} is full ({exc}): nothing was written; writes succeed again once there is space"
        )
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailableError(
            f"{path} cannot be written now ({exc}, {exc.sqlite_errorname}): nothing was written"
        )
    return None


def _disk_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _FREE_BYTES_FULL


def _translate(path: Path, exc: BaseException) -> EventStoreError:
    if isinstance(exc, EventStoreError):
        return exc
    passing = unavailable(path, exc)
    if passing is not None:
        return passing
    if type(exc) is sqlite3.DatabaseError:
        return _foreign_or_corrupt(path, exc)
    return EventStoreError(f"append to {path} failed, nothing was written: {exc}")

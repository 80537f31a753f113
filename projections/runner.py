"""Stored, checkpointed projections: the fleet read model kept in database tables.

The runner follows the log with a catch-up subscription and, for each page of events,
writes the rows it changed **and** its checkpoint in one transaction: after a crash it
resumes from the checkpoint with exactly the rows that belong to it, so reprocessing
changes nothing. Readers can wait until the projection has reached a position, and the
lag (head minus checkpoint) is observable. ``rebuild()`` drops everything and folds the
log again from position 0.

Where the rows live is a ``ProjectionTables``: SQLite (``SQLiteTables``, a file path) or
PostgreSQL (``projections.postgres.PostgresTables``, the event store's own schema).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import orjson
import structlog

from events import EventStore, RecordedEvent, StoreUnavailableError
from events.head_watch import HeadWatch
from events.sqlite import unavailable
from projections.fleet_view import FleetView, InstanceView
from projections.sql_tables import (
    IMAGE_VERSIONS,
    INSTANCES,
    SCALE_SETS,
    SCHEMA_ROW,
    SCHEMA_VERSION,
    TABLES,
    UPGRADES,
    PendingTyped,
    Record,
    TypedChanges,
    create_statements,
    image_version_from_row,
    model_from_row,
    placeholders,
    sqlite_records,
)
from projections.upgrade_view import UpgradeView

NAME = "fleet"
RETRY_FIRST_S = 0.05  # first pause after a failed read or write of the database
RETRY_MAX_S = 2.0  # longest pause: how stale reads and stored rows get once it is back
_BLOB_TABLES = ("projection_upgrades", "projection_scale_sets")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS projection_checkpoints ("
    " name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_upgrades ("
    " upgrade_id TEXT PRIMARY KEY, scale_set TEXT NOT NULL, state BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_scale_sets ("
    " key TEXT PRIMARY KEY, upgrade_ids BLOB NOT NULL, instances BLOB NOT NULL)",
)

log = structlog.get_logger("osupgrade.projections")


UpgradeRow = tuple[str, str, bytes]
SetRow = tuple[str, bytes, bytes]
StoredRows = tuple[int, dict[str, bytes], dict[str, tuple[bytes, bytes]]]


class ProjectionStoppedError(RuntimeError):
    """The runner stopped or failed before reaching the awaited position."""


class ProjectionTables(Protocol):
    """Where a projection's rows and checkpoint are stored, written in one transaction."""

    async def open(self) -> None:
        """Connect and create the tables if needed."""
        ...

    async def load(self) -> tuple[FleetView, int]:
        """The stored view and its checkpoint (an empty view at 0 if none)."""
        ...

    async def write(
        self,
        upgrades: list[UpgradeRow],
        sets: list[SetRow],
        gone: list[str],
        checkpoint: int,
        typed: TypedChanges | None = None,
    ) -> None:
        """Upsert ``upgrades`` and ``sets``, delete ``gone`` sets, apply the ``typed``
        tables' changes, store ``checkpoint``: all in one transaction, or nothing."""
        ...

    async def clear(self) -> None:
        """Delete every row and the checkpoint (for a rebuild)."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...

    async def rows(self) -> StoredRows:
        """The checkpoint and every stored row, for comparing projections."""
        ...

    async def typed_rows(self) -> tuple[int, dict[str, set[Record]]]:
        """The checkpoint and every row of the typed tables (``projections.sql_tables``)."""
        ...


def view_from_rows(
    position: int,
    upgrade_states: list[bytes],
    set_rows: list[tuple[str, bytes, bytes]],
    typed_sets: list[Any],
    typed_images: list[Any],
    *,
    from_sqlite: bool,
) -> FleetView:
    """Rebuild a view from its stored rows (shared by every ``ProjectionTables``): the JSON
    rows, and the typed tables for the scale set models and image versions."""
    view = FleetView()
    view.models = dict(model_from_row(row, from_sqlite) for row in typed_sets)
    view.image_versions = dict(image_version_from_row(row, from_sqlite) for row in typed_images)
    for state in upgrade_states:
        upgrade = upgrade_from_row(state)
        view.upgrades[upgrade.upgrade_id] = upgrade
    for key, ids, instances in set_rows:
        view.scale_sets[key] = orjson.loads(ids)
        view.instances[key] = {i: InstanceView(**v) for i, v in orjson.loads(instances).items()}
    view.position = position
    return view


def upgrade_row(view: UpgradeView) -> tuple[str, str, bytes]:
    """The stored form of one upgrade's view."""
    return view.upgrade_id, view.scale_set, orjson.dumps(view)  # orjson encodes dataclasses


def upgrade_from_row(state: bytes) -> UpgradeView:
    """Rebuild an upgrade's view from its stored form."""
    data: dict[str, Any] = orjson.loads(state)
    for name in ("start_time", "end_time", "last_action_time"):
        if data[name] is not None:
            data[name] = datetime.fromisoformat(data[name])
    return UpgradeView(**data)


def scale_set_row(view: FleetView, key: str) -> tuple[str, bytes, bytes]:
    """The stored form of one scale set's upgrade list and instances."""
    instances = view.instances.get(key, {})
    return key, orjson.dumps(view.scale_sets.get(key, [])), orjson.dumps(instances)


async def load_view(conn: aiosqlite.Connection) -> tuple[FleetView, int]:
    """The stored projection and its checkpoint (an empty view at 0 if none)."""
    rows = await conn.execute_fetchall(
        "SELECT position FROM projection_checkpoints WHERE name = ?", (NAME,)
    )
    position = next(iter(rows))[0] if rows else 0
    states = [s for (s,) in await conn.execute_fetchall("SELECT state FROM projection_upgrades")]
    sets = await conn.execute_fetchall(
        "SELECT key, upgrade_ids, instances FROM projection_scale_sets"
    )
    typed_sets = await conn.execute_fetchall(f"SELECT * FROM {SCALE_SETS.name}")
    images = await conn.execute_fetchall(f"SELECT * FROM {IMAGE_VERSIONS.name}")
    view = view_from_rows(
        position, states, [tuple(r) for r in sets], list(typed_sets), list(images), from_sqlite=True
    )
    return view, position


async def _schema_version(conn: aiosqlite.Connection) -> int:
    rows = await conn.execute_fetchall(
        "SELECT position FROM projection_checkpoints WHERE name = ?", (SCHEMA_ROW,)
    )
    return int(next(iter(rows))[0]) if rows else 0


async def _write_typed_sqlite(conn: aiosqlite.Connection, typed: TypedChanges) -> None:
    """The typed tables' share of one projection commit (inside its transaction)."""
    doomed = [(k,) for k in (*typed.gone_sets, *typed.whole_sets)]
    await conn.executemany(f"DELETE FROM {INSTANCES.name} WHERE scale_set = ?", doomed)
    await conn.executemany(
        f"DELETE FROM {SCALE_SETS.name} WHERE key = ?", [(k,) for k in typed.gone_sets]
    )
    for table, records in (
        (SCALE_SETS, typed.scale_sets),
        (INSTANCES, typed.instances),
        (UPGRADES, typed.upgrades),
        (IMAGE_VERSIONS, typed.image_versions),
    ):
        if records:
            await conn.executemany(
                f"INSERT OR REPLACE INTO {table.name} VALUES ({placeholders(table, 'sqlite')})",
                sqlite_records(table, records),
            )


class SQLiteTables:
    """The projection's tables in an SQLite file (often the event log's own file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """See ``ProjectionTables.open``."""
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA busy_timeout = 10000")
        # Rows and checkpoint commit atomically either way; NORMAL only skips the fsync
        # per commit. A power cut can then lose the newest projection commits, never the
        # events: the runner resumes from the older checkpoint and folds them again.
        await self._conn.execute("PRAGMA synchronous = NORMAL")
        await self._conn.execute("BEGIN IMMEDIATE")
        for statement in (*_SCHEMA, *create_statements("sqlite")):
            await self._conn.execute(statement)
        stored = await _schema_version(self._conn)
        if stored != SCHEMA_VERSION:
            if stored < SCHEMA_VERSION:
                # An older layout: start again from position 0 (the log has everything).
                for table in (*_BLOB_TABLES, *(t.name for t in TABLES)):
                    await self._conn.execute(f"DELETE FROM {table}")
                await self._conn.execute(
                    "DELETE FROM projection_checkpoints WHERE name = ?", (NAME,)
                )
                if stored:
                    log.info("projection tables of an older layout cleared; folding the log again",
                             stored=stored, current=SCHEMA_VERSION)  # fmt: skip
            await self._conn.execute(
                "INSERT OR REPLACE INTO projection_checkpoints VALUES (?, ?)",
                (SCHEMA_ROW, max(stored, SCHEMA_VERSION)),
            )
        await self._conn.execute("COMMIT")

    async def load(self) -> tuple[FleetView, int]:
        """See ``ProjectionTables.load``."""
        assert self._conn is not None
        return await load_view(self._conn)

    async def write(
        self,
        upgrades: list[UpgradeRow],
        sets: list[SetRow],
        gone: list[str],
        checkpoint: int,
        typed: TypedChanges | None = None,
    ) -> None:
        """See ``ProjectionTables.write``; a full file raises ``StoreFullError`` (retried)."""
        assert self._conn is not None
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.executemany(
                "INSERT OR REPLACE INTO projection_upgrades VALUES (?, ?, ?)", upgrades
            )
            await conn.executemany(
                "INSERT OR REPLACE INTO projection_scale_sets VALUES (?, ?, ?)", sets
            )
            await conn.executemany(
                "DELETE FROM projection_scale_sets WHERE key = ?", [(k,) for k in gone]
            )
            if typed is not None:
                await _write_typed_sqlite(conn, typed)
            await conn.execute(
                "INSERT OR REPLACE INTO projection_checkpoints VALUES (?, ?)", (NAME, checkpoint)
            )
            await conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            passing = unavailable(self.path, exc)
            if passing is not None:
                raise passing from exc
            raise

    async def clear(self) -> None:
        """See ``ProjectionTables.clear``."""
        async with aiosqlite.connect(self.path, isolation_level=None) as conn:
            await conn.execute("BEGIN IMMEDIATE")
            for table in (*_BLOB_TABLES, *(t.name for t in TABLES)):
                await conn.execute(f"DELETE FROM {table}")
            await conn.execute("DELETE FROM projection_checkpoints WHERE name = ?", (NAME,))
            await conn.execute("COMMIT")

    async def close(self) -> None:
        """See ``ProjectionTables.close``."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def rows(self) -> StoredRows:
        """See ``ProjectionTables.rows``."""
        return await stored_rows(self.path)

    async def typed_rows(self) -> tuple[int, dict[str, set[Record]]]:
        """See ``ProjectionTables.typed_rows``."""
        return await stored_typed_rows(self.path)


class ProjectionRunner:
    """Keeps the fleet projection's tables up to date with ``store``.

    ``tables`` is an SQLite file path or any ``ProjectionTables`` (PostgreSQL: a
    ``projections.postgres.PostgresTables`` in the event store's database).

    Two positions: ``folded``, how far ``view`` (what the API reads) has folded the
    log, and ``checkpoint``, how far the stored rows go. They are equal while the
    database answers. When it does not (unreachable, or full), the runner keeps what
    it folded, waits with a growing pause (up to ``RETRY_MAX_S``) and tries again:
    reads keep answering from the view, and the rows of everything folded meanwhile
    are stored, with its checkpoint, at the first write that succeeds. Any other error
    is a bug and stops the runner (``wait_for`` then raises).
    """

    def __init__(
        self,
        store: EventStore,
        tables: str | Path | ProjectionTables,
        *,
        batch_size: int = 1000,
        commit_interval_s: float = 0.02,
    ) -> None:
        self.store = store
        self.tables = SQLiteTables(tables) if isinstance(tables, (str, Path)) else tables
        self.batch_size = batch_size
        self.commit_interval_s = commit_interval_s
        self.view = FleetView()
        self.problem: StoreUnavailableError | None = None  # why it is behind, while it is
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self._watch = HeadWatch()  # the stored checkpoint
        self._folded = HeadWatch()  # what ``view`` has folded
        self._upgrades: set[str] = set()  # folded, not stored yet
        self._sets: set[str] = set()
        self._typed = PendingTyped()
        self._write_failures = 0
        self._write_after = 0.0  # monotonic time: no write is tried again before

    async def __aenter__(self) -> ProjectionRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def checkpoint(self) -> int:
        """The position up to which the stored rows are complete."""
        return self._watch.head

    @property
    def folded(self) -> int:
        """The position up to which ``view`` has folded the log."""
        return self._folded.head

    async def lag(self) -> int:
        """How many positions the stored projection is behind the log's head."""
        return max(0, await self.store.head() - self.checkpoint)

    async def start(self) -> None:
        """Open the tables, load the stored state and follow the log from the checkpoint."""
        await self.tables.open()
        self._opened = True
        self.view, position = await self.tables.load()
        self._watch = HeadWatch(position)
        self._folded = HeadWatch(position)
        self._upgrades, self._sets, self._typed = set(), set(), PendingTyped()
        self._task = asyncio.create_task(self._follow(), name="projection:fleet")

    async def stop(self) -> None:
        """Stop following (the stored rows stay consistent with the checkpoint)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task  # a failure was already raised to wait_for() callers
        self._watch.close()
        self._folded.close()
        if self._opened:
            await self.tables.close()
            self._opened = False

    async def wait_for(self, position: int) -> None:
        """Return once the stored rows cover everything up to ``position``.

        Raises ``ProjectionStoppedError`` if the runner stops (or fails) first.
        """
        await self._until(self._watch, position)

    async def wait_folded(self, position: int) -> None:
        """Return once ``view`` has folded everything up to ``position`` (stored or not)."""
        await self._until(self._folded, position)

    async def _until(self, watch: HeadWatch, position: int) -> None:
        if self._task is None:
            raise ProjectionStoppedError("the projection runner is not running")
        waiter = asyncio.ensure_future(watch.wait_until(position))
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            waiter.result()
            return
        waiter.cancel()
        failure = None if self._task.cancelled() else self._task.exception()
        raise ProjectionStoppedError(f"the projection stopped at {self.checkpoint}") from failure

    async def _follow(self) -> None:
        """Read, fold and store the log's new events for as long as the runner runs."""
        failures = 0
        while True:
            try:
                await self._step()
            except StoreUnavailableError as exc:  # the log cannot be read: wait, try again
                failures += 1
                delay = _retry_delay(failures)
                log.warning("projection cannot read the log; retrying", name=NAME,
                            position=self.folded, in_s=delay, error=str(exc))  # fmt: skip
                await asyncio.sleep(delay)  # wall time: the database's recovery is
            else:
                failures = 0

    async def _step(self) -> None:
        """One page: fold it, store what is due, then wait for more if caught up."""
        page = await self.store.read_all(after=self.folded, limit=self.batch_size)
        self._fold(page)
        await self._store_due()
        if len(page) == self.batch_size:
            return
        if page and self.commit_interval_s > 0:
            # Caught up: let events gather for a moment (wall time) rather than commit
            # once per store commit. Both write the same file, and every projection
            # commit holds the write lock the event writer needs.
            await asyncio.sleep(self.commit_interval_s)
        elif not page:
            await self._wait_for_events()

    async def _wait_for_events(self) -> None:
        """Until the log moves; no longer than the next retry, if rows wait to be stored."""
        new = self.store.until(self.folded + 1)
        if self.folded <= self.checkpoint:
            await new
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(new, max(0.0, self._write_after - time.monotonic()))

    def _fold(self, page: list[RecordedEvent]) -> None:
        for event in page:
            self.view.apply(event)
            if event.stream_id.startswith("upgrade-"):
                upgrade_id = event.stream_id.removeprefix("upgrade-")
                self._upgrades.add(upgrade_id)
                self._sets.add(self.view.upgrades[upgrade_id].scale_set)
            elif event.stream_id.startswith("vmss-"):
                self._sets.add(event.stream_id.removeprefix("vmss-"))
            self._typed.note(event, self.view)
        if page:
            self._folded.advance(page[-1].position)

    async def _store_due(self) -> None:
        """Store the rows folded since the last write, unless a failed one is waited out."""
        if self.folded <= self.checkpoint or time.monotonic() < self._write_after:
            return
        upgrades, sets, typed, checkpoint = self._upgrades, self._sets, self._typed, self.folded
        self._upgrades, self._sets, self._typed = set(), set(), PendingTyped()
        try:
            await self._write(upgrades, sets, typed, checkpoint)
        except BaseException as exc:
            self._upgrades |= upgrades  # still to store (with what is folded meanwhile)
            self._sets |= sets
            self._typed.merge(typed)
            if not isinstance(exc, StoreUnavailableError):
                raise
            self._write_failures += 1
            delay = _retry_delay(self._write_failures)
            self._write_after = time.monotonic() + delay
            if self.problem is None or self._write_failures % 10 == 1:
                log.warning("projection rows not stored; retrying", name=NAME,
                            checkpoint=self.checkpoint, folded=checkpoint, in_s=delay,
                            error=str(exc))  # fmt: skip
            self.problem = exc
            return
        if self.problem is not None:
            log.info("projection rows stored again", name=NAME, checkpoint=checkpoint)
        self.problem, self._write_failures, self._write_after = None, 0, 0.0
        self._watch.advance(checkpoint)

    async def _write(
        self, upgrades: set[str], sets: set[str], typed: PendingTyped, checkpoint: int
    ) -> None:
        live = [k for k in sorted(sets) if k in self.view.scale_sets]
        await self.tables.write(
            [upgrade_row(self.view.upgrades[u]) for u in sorted(upgrades)],
            [scale_set_row(self.view, k) for k in live],
            [k for k in sorted(sets) if k not in self.view.scale_sets],
            checkpoint,
            typed.changes(self.view, upgrades, sets),
        )

    async def rebuild(self) -> None:
        """Drop the stored rows and checkpoint, then fold the whole log again."""
        await self.stop()
        await self.tables.clear()
        log.info("projection rebuild started", name=NAME)
        await self.start()


def _retry_delay(failures: int) -> float:
    """Seconds before the next try: doubling from ``RETRY_FIRST_S`` up to ``RETRY_MAX_S``."""
    return float(min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 16)))


async def stored_rows(path: str | Path) -> StoredRows:
    """The checkpoint and every stored row, for comparing projections (audits, tests)."""
    async with aiosqlite.connect(path) as conn:
        rows = await conn.execute_fetchall(
            "SELECT position FROM projection_checkpoints WHERE name = ?", (NAME,)
        )
        checkpoint = next(iter(rows))[0] if rows else 0
        upgrades = {
            u: s for u, _, s in await conn.execute_fetchall("SELECT * FROM projection_upgrades")
        }
        sets = {
            k: (i, n)
            for k, i, n in await conn.execute_fetchall("SELECT * FROM projection_scale_sets")
        }
    return checkpoint, upgrades, sets


async def stored_typed_rows(path: str | Path) -> tuple[int, dict[str, set[Record]]]:
    """The checkpoint and every row of the typed tables in an SQLite file."""
    async with aiosqlite.connect(path) as conn:
        rows = await conn.execute_fetchall(
            "SELECT position FROM projection_checkpoints WHERE name = ?", (NAME,)
        )
        checkpoint = next(iter(rows))[0] if rows else 0
        tables = {
            t.name: {tuple(r) for r in await conn.execute_fetchall(f"SELECT * FROM {t.name}")}
            for t in TABLES
        }
    return checkpoint, tables

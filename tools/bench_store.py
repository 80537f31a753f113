"""Benchmark the SQLite event store against raw sqlite3 and ``eventsourcing`` in one run.

What is measured, and why:

* **Appends.** ``C`` concurrent asyncio tasks each append single events to their own
  stream with ``expected_version`` set (C = 1, 100, 1000), at ``durability="full"``
  (the default) and ``"normal"``. Building each ``NewEvent`` is inside the clock: a
  caller pays for it on every append. This is the store's real hot path: group commit
  has to turn many tiny appends into few transactions.
* **Replay.** The whole log (interleaved streams) read with ``read_all`` pages of 5,000
  and through ``subscribe(...).batches()``, ``data`` decoded by the store. Projections
  rebuild from here, so its speed bounds recovery time.
* **References, same run, same payloads.** Numbers from another day or machine differ
  by 20 % or more, and by 2-3x between similar VMs (docs/BENCH_STORE.md), so every
  reference runs here, next to the store, on a fresh WAL database each time:

  - raw ``sqlite3`` ``executemany`` of pre-encoded rows, 1,000 per ``BEGIN IMMEDIATE``
    transaction, interleaved over 1,000 streams like the C = 1000 workload, with the
    naive 6-column schema of the perf baseline (SQLite's default pragmas) and with the
    store's own schema (``events.sqlite._SCHEMA``, 11 columns, real ids and hashes,
    the store's cache size): the ceiling for batched appends;
  - raw ``sqlite3`` with one transaction per event (store schema): the ceiling for
    ``C = 1``;
  - raw ``sqlite3`` ``fetchall`` + ``orjson.loads`` of the columns the store reads,
    over the store's own file: the ceiling for replay;
  - the ``eventsourcing`` library (optional ``bench`` extra) with SQLite persistence
    (WAL, its default ``synchronous=FULL``): a mature Python event store doing the same
    work. Building its aggregates and events is timed with ``save``, as ``NewEvent``
    is for the store (the perf baseline timed ``save`` alone).

* **PostgreSQL (``--pg DSN``).** The same append workloads on ``PostgresEventStore``
  (C = 1, 100, 1000 single-event appends, and C = 100 appends of 10 events each, the
  shape of an engine recording a batch), a replay with ``read_all``, and the
  ``eventsourcing`` library's PostgreSQL recorder (psycopg 3; its rows are skipped if
  psycopg is not installed) saving 1 and 1,000 events per save. Each run gets a fresh
  schema, dropped afterwards. ``--only-pg`` skips every SQLite measurement.
  ``tools/pg_throwaway.sh`` starts a throwaway server.

Each number is events per second; ``--repeat R`` reports the median of ``R`` runs.
The ratio column is osupgrade / reference: 1.0 means as fast as the reference.

Run: ``.venv/bin/python tools/bench_store.py [--quick] [--repeat 3] [--json out.json]
[--pg postgresql://... [--only-pg]]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiosqlite
import asyncpg
import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events import EventStore, NewEvent, PostgresEventStore, RecordedEvent, SQLiteEventStore, uuid7
from events.sqlite import _SCHEMA, Durability

EVENT_TYPE = "bench.happened"
PAYLOAD_POOL = 1024  # distinct payload dicts, reused round-robin
CONCURRENCY = (1, 100, 1000)
DURABILITIES: tuple[Durability, ...] = ("full", "normal")
RAW_BATCH = 1000
PAGE = 5000
ES_PAGE = 1000
TARGET_APPEND = 100_000  # ev/s with 1000 concurrent single-event writers
TARGET_REPLAY = 400_000  # ev/s replayed
TARGET_PG_APPEND = 20_000  # ev/s on PostgreSQL with 100 concurrent writers
PG_CONCURRENCY = (1, 100, 1000)
PG_BATCH = 10  # events per append in the "engine-shaped" C=100 workload

NAIVE_SCHEMA = (
    """CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT,
        stream_version INTEGER,
        type TEXT,
        data BLOB,
        recorded_at REAL,
        UNIQUE (stream_id, stream_version)
    )""",
)
NAIVE_INSERT = "INSERT INTO events VALUES (?,?,?,?,?,?)"
STORE_INSERT = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)"
STORE_COLUMNS = (
    "position, stream_key, stream_version, event_id, type, schema_version, "
    "occurred_us, recorded_us, data, metadata"
)

Row = tuple[object, ...]


# -- configuration and results ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """Sizes of every workload."""

    events: int  # per concurrent-append run (C = 100, 1000) and per raw batched run
    single_events: int  # per C = 1 run and per one-transaction-per-event reference
    replay_events: int  # size of the replayed log
    streams: int  # streams the replayed log is interleaved over
    es_events: int  # events per eventsourcing batched-save run and replayed log
    es_single_events: int  # events per eventsourcing one-event-per-save run
    repeat: int


@dataclass(slots=True)
class Results:
    """Every run of every measurement, by key, in events per second."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pg: bool = False  # PostgreSQL rows are in the table only when --pg was given
    sqlite: bool = True  # False with --only-pg

    def add(self, key: str, rate: float) -> None:
        """Record one run of ``key``."""
        self.runs.setdefault(key, []).append(rate)

    def median(self, key: str) -> float | None:
        """The median of ``key``'s runs, or ``None`` if it was not measured."""
        values = self.runs.get(key)
        return statistics.median(values) if values else None


LABELS: dict[str, str] = {
    "raw.naive.full": "raw executemany 1000/tx, naive schema, FULL",
    "raw.naive.normal": "raw executemany 1000/tx, naive schema, NORMAL",
    "raw.store.full": "raw executemany 1000/tx, store schema, FULL",
    "raw.store.normal": "raw executemany 1000/tx, store schema, NORMAL",
    "raw.single.full": "raw 1 tx/event, store schema, FULL",
    "raw.single.normal": "raw 1 tx/event, store schema, NORMAL",
    "raw.replay": "raw sqlite3 fetchall + orjson.loads",
    "es.save1": "eventsourcing, 1 event/save, FULL",
    "es.save1000": "eventsourcing, 1000 events/save, FULL",
    "es.replay": "eventsourcing notification_log + to_domain_event",
    "store.replay.read_all": "replay, read_all(limit=5000)",
    "store.replay.subscribe": "replay, subscribe(batch_size=5000)",
    **{
        f"store.append.c{c}.{d}": f"append, C={c}, {d.upper()}"
        for c in CONCURRENCY
        for d in DURABILITIES
    },
    **{f"pg.append.c{c}": f"PG append, C={c}" for c in PG_CONCURRENCY},
    f"pg.append.c100x{PG_BATCH}": f"PG append, C=100, {PG_BATCH} ev/append",
    "pg.replay.read_all": "PG replay, read_all(limit=5000)",
    "es.pg.save1": "eventsourcing PostgreSQL, 1 event/save",
    "es.pg.save1000": "eventsourcing PostgreSQL, 1000 events/save",
    "es.pg.replay": "eventsourcing PostgreSQL notification_log",
}


def pg_table_rows() -> list[tuple[str, list[str]]]:
    """The PostgreSQL workloads with their references (eventsourcing, and SQLite)."""
    batched = ["es.pg.save1000", "store.append.c100.full"]
    return [
        ("pg.append.c1", ["es.pg.save1", "store.append.c1.full"]),
        ("pg.append.c100", batched),
        (f"pg.append.c100x{PG_BATCH}", batched),
        ("pg.append.c1000", ["es.pg.save1000", "store.append.c1000.full"]),
        ("pg.replay.read_all", ["es.pg.replay", "store.replay.read_all"]),
    ]


def table_rows(pg: bool = False, sqlite: bool = True) -> list[tuple[str, list[str]]]:
    """Each osupgrade workload with the references it is compared to."""
    rows: list[tuple[str, list[str]]] = pg_table_rows() if pg else []
    if not sqlite:
        return rows
    for durability in DURABILITIES:
        rows.append((f"store.append.c1.{durability}", [f"raw.single.{durability}", "es.save1"]))
        batched = [f"raw.naive.{durability}", f"raw.store.{durability}", "es.save1000"]
        rows.extend((f"store.append.c{c}.{durability}", batched) for c in CONCURRENCY[1:])
    replay_refs = ["raw.replay", "es.replay"]
    rows.append(("store.replay.read_all", replay_refs))
    rows.append(("store.replay.subscribe", replay_refs))
    return rows


# -- payloads and timing ---------------------------------------------------------------


def make_payload(i: int) -> dict[str, Any]:
    """A JSON object of 200-220 bytes, shaped like an upgrade engine's events."""
    return {
        "scale_set": f"vmss-prod-westeurope-{i % 97:03d}",
        "instance_id": f"vm-{i:010d}",
        "image": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202611",
        "phase": "upgrading",
        "attempt": i % 5,
        "batch": i % 1000,
        "healthy": i % 2 == 0,
    }


def payload_pool() -> list[dict[str, Any]]:
    """``PAYLOAD_POOL`` distinct payloads, reused round-robin by every workload."""
    return [make_payload(i) for i in range(PAYLOAD_POOL)]


def encoded_pool() -> list[bytes]:
    """The same payloads encoded as the store encodes them (sorted keys)."""
    return [orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for p in payload_pool()]


def rate(count: int, seconds: float) -> float:
    """Events per second."""
    return count / seconds if seconds > 0 else float("inf")


@contextmanager
def temp_db(name: str) -> Iterator[Path]:
    """A path for a fresh database file in a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        yield Path(tmp) / name


def note(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- osupgrade: appends ----------------------------------------------------------------


async def _appender(
    store: EventStore, stream: str, count: int, payloads: list[dict[str, Any]], first: int
) -> None:
    for version in range(count):  # the stream's current version = events appended so far
        data = payloads[(first + version) % PAYLOAD_POOL]
        await store.append(stream, [NewEvent(EVENT_TYPE, data)], version)


async def concurrent_appends(
    store: EventStore, writers: int, per_writer: int, payloads: list[dict[str, Any]]
) -> float:
    """Run ``writers`` tasks appending ``per_writer`` events each; return the seconds."""
    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(writers):
            group.create_task(_appender(store, f"stream-{i}", per_writer, payloads, i))
    return time.perf_counter() - start


async def store_append_run(writers: int, total: int, durability: Durability) -> float:
    """One run on a fresh file: ``total`` events from ``writers`` concurrent tasks."""
    per_writer = max(1, total // writers)
    payloads = payload_pool()
    with temp_db("store.db") as path:
        async with SQLiteEventStore(path, durability=durability) as store:
            seconds = await concurrent_appends(store, writers, per_writer, payloads)
    return rate(writers * per_writer, seconds)


def bench_store_appends(config: Config, results: Results) -> None:
    """Appends at every concurrency and durability."""
    for durability in DURABILITIES:
        for writers in CONCURRENCY:
            total = config.single_events if writers == 1 else config.events
            note(f"osupgrade append C={writers} {durability} ({total:,} events)")
            for _ in range(config.repeat):
                value = asyncio.run(store_append_run(writers, total, durability))
                results.add(f"store.append.c{writers}.{durability}", value)


# -- osupgrade: replay -----------------------------------------------------------------


async def build_log(path: Path, events: int, streams: int) -> None:
    """Fill a store with ``events`` events interleaved over ``streams`` streams."""
    async with SQLiteEventStore(path, durability="normal") as store:
        await concurrent_appends(store, streams, events // streams, payload_pool())


async def replay_read_all(path: Path) -> float:
    """Read the whole log page by page with ``read_all``; return events/s."""
    async with SQLiteEventStore(path) as store:
        start = time.perf_counter()
        count, after = 0, 0
        while page := await store.read_all(after=after, limit=PAGE):
            count += len(page)
            after = page[-1].position
        seconds = time.perf_counter() - start
    return rate(count, seconds)


async def replay_subscribe(path: Path) -> float:
    """Read the whole log through a catch-up subscription; return events/s."""
    async with SQLiteEventStore(path) as store:
        head = await store.head()
        start = time.perf_counter()
        count = 0
        subscription = store.subscribe(after=0, batch_size=PAGE)
        batches = cast("AsyncGenerator[list[RecordedEvent], None]", subscription.batches())
        async with aclosing(batches) as pages:
            async for page in pages:
                count += len(page)
                if page[-1].position >= head:
                    break
        seconds = time.perf_counter() - start
    return rate(count, seconds)


def raw_replay(path: Path) -> float:
    """Reference: one ``SELECT ... ORDER BY position``, ``fetchall``, ``orjson.loads``."""
    conn = sqlite3.connect(path)
    try:
        start = time.perf_counter()
        rows = conn.execute(f"SELECT {STORE_COLUMNS} FROM events ORDER BY position").fetchall()
        loads = orjson.loads
        decoded = [loads(row[8]) for row in rows]
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return rate(len(decoded), seconds)


def bench_replay(config: Config, results: Results) -> None:
    """Replay through the store and raw sqlite3, on the same file, alternating."""
    with temp_db("replay.db") as path:
        note(f"building a log of {config.replay_events:,} events over {config.streams:,} streams")
        asyncio.run(build_log(path, config.replay_events, config.streams))
        note("replaying")
        for _ in range(config.repeat):
            results.add("store.replay.read_all", asyncio.run(replay_read_all(path)))
            results.add("store.replay.subscribe", asyncio.run(replay_subscribe(path)))
            results.add("raw.replay", raw_replay(path))


# -- raw sqlite3 appends ---------------------------------------------------------------


def raw_connect(path: Path, synchronous: str, pragmas: tuple[str, ...] = ()) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with the given ``synchronous`` level."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    for pragma in pragmas:
        conn.execute(pragma)
    return conn


def naive_rows(total: int, streams: int) -> list[Row]:
    """Rows for the naive schema, round-robin over ``streams`` streams, data encoded."""
    data = encoded_pool()
    now = time.time()
    return [
        (i + 1, f"stream-{i % streams}", i // streams + 1, EVENT_TYPE, data[i % PAYLOAD_POOL], now)
        for i in range(total)
    ]


def store_rows(total: int, streams: int) -> list[Row]:
    """Rows shaped like the store's (11 columns, real ids and chained hashes)."""
    data = encoded_pool()
    now_us = time.time_ns() // 1000
    rows: list[Row] = []
    prev = bytes(32)
    for i in range(total):
        body = data[i % PAYLOAD_POOL]
        prev = hashlib.sha256(prev + body).digest()
        rows.append(
            (i + 1, i % streams + 1, i // streams + 1, uuid7().bytes, EVENT_TYPE, 1,
             now_us, now_us, body, b"{}", prev)
        )  # fmt: skip
    return rows


def create_store_schema(conn: sqlite3.Connection, streams: int) -> None:
    """The store's own tables and indexes, with its stream names registered."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    names = [(key, f"stream-{key - 1}") for key in range(1, streams + 1)]
    conn.executemany("INSERT INTO streams VALUES (?, ?)", names)
    conn.execute("COMMIT")


def insert_batched(conn: sqlite3.Connection, sql: str, rows: list[Row], batch: int) -> float:
    """Insert ``rows`` ``batch`` at a time, one transaction each; return the seconds."""
    start = time.perf_counter()
    for first in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[first : first + batch])
        conn.execute("COMMIT")
    return time.perf_counter() - start


def raw_batched_run(
    schema: str, synchronous: str, rows: list[Row], streams: int, batch: int = RAW_BATCH
) -> float:
    """One raw insert run on a fresh file, ``batch`` rows per transaction; return events/s."""
    with temp_db("raw.db") as path:
        if schema == "naive":
            conn = raw_connect(path, synchronous)
            for statement in NAIVE_SCHEMA:
                conn.execute(statement)
            sql = NAIVE_INSERT
        else:
            conn = raw_connect(path, synchronous, ("PRAGMA cache_size = -65536",))
            create_store_schema(conn, streams)
            sql = STORE_INSERT
        try:
            seconds = insert_batched(conn, sql, rows, batch)
        finally:
            conn.close()
    return rate(len(rows), seconds)


def bench_raw_appends(config: Config, results: Results) -> None:
    """Raw batched inserts (both schemas) and one transaction per event (store schema)."""
    streams = max(CONCURRENCY)  # the same stream count as the C=1000 workload
    note(f"raw sqlite3 executemany ({config.events:,} events, {streams} streams)")
    rows = {
        "naive": naive_rows(config.events, streams),
        "store": store_rows(config.events, streams),
    }
    single = store_rows(config.single_events, 1)
    for _ in range(config.repeat):
        for durability in DURABILITIES:
            level = durability.upper()
            for schema in ("naive", "store"):
                value = raw_batched_run(schema, level, rows[schema], streams)
                results.add(f"raw.{schema}.{durability}", value)
            value = raw_batched_run("store", level, single, 1, batch=1)
            results.add(f"raw.single.{durability}", value)


# -- eventsourcing ---------------------------------------------------------------------


def es_version() -> str | None:
    """The installed eventsourcing version, or ``None`` if it is not installed."""
    try:
        return metadata.version("eventsourcing")
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def es_classes() -> tuple[type[Any], type[Any]]:
    """An ``Application`` with 1,000-event log sections and an aggregate with one event.

    Defined on demand because eventsourcing is optional, and once: the library refuses
    two classes under one topic.
    """
    from eventsourcing.application import Application  # noqa: PLC0415
    from eventsourcing.domain import Aggregate, event  # noqa: PLC0415

    class BenchApp(Application[Any]):
        log_section_size = ES_PAGE

    class Thing(Aggregate):
        @event("Happened")
        def happen(self, payload: dict[str, Any]) -> None:
            """Record that something happened; the state stays unchanged."""

    return BenchApp, Thing


def es_app(app_class: type[Any], path: Path) -> Any:
    """An application persisting to an SQLite file (WAL; the library keeps FULL sync)."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    return app_class(env=env)


def es_save_one_by_one(app: Any, thing_class: type[Any], total: int) -> float:
    """Aggregates of 10 events, each event saved on its own; build + save timed."""
    payloads = payload_pool()
    start = time.perf_counter()
    thing: Any = None
    for i in range(total):
        if i % 10 == 0:
            thing = thing_class()
        else:
            thing.happen(payloads[i % PAYLOAD_POOL])
        app.save(thing)
    return time.perf_counter() - start


def es_save_batched(app: Any, thing_class: type[Any], total: int) -> float:
    """100 aggregates x 10 events per save; build + save timed."""
    payloads = payload_pool()
    start = time.perf_counter()
    for first in range(0, total, 1000):
        things = [thing_class() for _ in range(100)]
        for n in range(9):
            for thing in things:
                thing.happen(payloads[(first + n) % PAYLOAD_POOL])
        app.save(*things)
    return time.perf_counter() - start


def es_replay(app: Any) -> float:
    """Read the notification log in sections of 1,000 and map each to a domain event."""
    start = time.perf_counter()
    count, position = 0, 1
    to_domain_event = app.mapper.to_domain_event
    while notifications := app.notification_log.select(position, limit=ES_PAGE):
        count += len([to_domain_event(n) for n in notifications])
        position = notifications[-1].id + 1
    return rate(count, time.perf_counter() - start)


def es_run(kind: str, total: int) -> tuple[float, float | None]:
    """One eventsourcing run on a fresh file; returns (save ev/s, replay ev/s or None)."""
    app_class, thing_class = es_classes()
    with temp_db("es.db") as path:
        app = es_app(app_class, path)
        try:
            if kind == "save1":
                return rate(total, es_save_one_by_one(app, thing_class, total)), None
            total -= total % 1000
            saved = rate(total, es_save_batched(app, thing_class, total))
            return saved, es_replay(app)
        finally:
            app.close()


def bench_eventsourcing(config: Config, results: Results) -> None:
    """The eventsourcing library's appends and replay, if it is installed."""
    if es_version() is None:
        reason = "eventsourcing is not installed (pip install -e '.[bench]')"
        for key in ("es.save1", "es.save1000", "es.replay"):
            results.skipped[key] = reason
        note(f"skipping eventsourcing rows: {reason}")
        return
    note(f"eventsourcing ({config.es_single_events:,} single saves, {config.es_events:,} batched)")
    for _ in range(config.repeat):
        results.add("es.save1", es_run("save1", config.es_single_events)[0])
        saved, replayed = es_run("save1000", config.es_events)
        results.add("es.save1000", saved)
        if replayed is not None:
            results.add("es.replay", replayed)


# -- PostgreSQL --------------------------------------------------------------------------


async def _drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _batch_appender(
    store: PostgresEventStore, stream: str, appends: int, payloads: list[dict[str, Any]]
) -> None:
    for n in range(appends):
        events = [NewEvent(EVENT_TYPE, payloads[(n + i) % PAYLOAD_POOL]) for i in range(PG_BATCH)]
        await store.append(stream, events, n * PG_BATCH)


async def pg_append_run(dsn: str, writers: int, total: int, batch: int) -> float:
    """One run on a fresh schema: ``total`` events from ``writers`` concurrent tasks."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    payloads = payload_pool()
    try:
        async with PostgresEventStore(dsn, schema=schema) as store:
            if batch == 1:
                per_writer = max(1, total // writers)
                seconds = await concurrent_appends(store, writers, per_writer, payloads)
                return rate(writers * per_writer, seconds)
            appends = max(1, total // (writers * batch))
            start = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for i in range(writers):
                    group.create_task(_batch_appender(store, f"s-{i}", appends, payloads))
            return rate(writers * appends * batch, time.perf_counter() - start)
    finally:
        await _drop_schema(dsn, schema)


async def pg_replay_run(dsn: str, events: int, streams: int) -> float:
    """Build a log of ``events`` over ``streams`` streams, then replay it with read_all."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        async with PostgresEventStore(dsn, schema=schema) as store:
            await concurrent_appends(store, streams, events // streams, payload_pool())
        async with PostgresEventStore(dsn, schema=schema) as store:
            start = time.perf_counter()
            count, after = 0, 0
            while page := await store.read_all(after=after, limit=PAGE):
                count += len(page)
                after = page[-1].position
            return rate(count, time.perf_counter() - start)
    finally:
        await _drop_schema(dsn, schema)


def bench_pg(config: Config, results: Results, dsn: str) -> None:
    """PostgresEventStore appends at every concurrency, and a replay."""
    results.pg = True
    runs = [(f"pg.append.c{c}", c, 1) for c in PG_CONCURRENCY]
    runs.append((f"pg.append.c100x{PG_BATCH}", 100, PG_BATCH))
    for key, writers, batch in runs:
        total = config.single_events if writers == 1 else config.events
        note(f"PostgreSQL append C={writers} x{batch} ({total:,} events)")
        for _ in range(config.repeat):
            results.add(key, asyncio.run(pg_append_run(dsn, writers, total, batch)))
    note(f"PostgreSQL replay of {config.replay_events:,} events")
    for _ in range(config.repeat):
        value = asyncio.run(pg_replay_run(dsn, config.replay_events, config.streams))
        results.add("pg.replay.read_all", value)


def es_pg_env(dsn: str, schema: str) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings for ``dsn``, in a schema of its own."""
    parts = urlsplit(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/") or "postgres",
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "unused",
        "POSTGRES_SCHEMA": schema,
    }


def es_pg_run(dsn: str, kind: str, total: int) -> tuple[float, float | None]:
    """One eventsourcing run on a fresh PostgreSQL schema (created here, dropped after)."""
    app_class, thing_class = es_classes()
    schema = f"bench_es_{uuid.uuid4().hex[:12]}"
    asyncio.run(_exec(dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        app = app_class(env=es_pg_env(dsn, schema))
        try:
            if kind == "save1":
                return rate(total, es_save_one_by_one(app, thing_class, total)), None
            total -= total % 1000
            saved = rate(total, es_save_batched(app, thing_class, total))
            return saved, es_replay(app)
        finally:
            app.close()
    finally:
        asyncio.run(_drop_schema(dsn, schema))


async def _exec(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def bench_es_pg(config: Config, results: Results, dsn: str) -> None:
    """The eventsourcing library on PostgreSQL, if it and psycopg are installed."""
    keys = ("es.pg.save1", "es.pg.save1000", "es.pg.replay")
    reason = None
    if es_version() is None:
        reason = "eventsourcing is not installed (pip install -e '.[bench]')"
    else:
        try:
            import psycopg  # noqa: F401, PLC0415
        except ImportError:
            reason = "psycopg is not installed (pip install -e '.[bench]')"
    if reason is not None:
        results.skipped.update(dict.fromkeys(keys, reason))
        note(f"skipping eventsourcing PostgreSQL rows: {reason}")
        return
    note(f"eventsourcing PostgreSQL ({config.es_single_events:,} single, {config.es_events:,})")
    for _ in range(config.repeat):
        results.add("es.pg.save1", es_pg_run(dsn, "save1", config.es_single_events)[0])
        saved, replayed = es_pg_run(dsn, "save1000", config.es_events)
        results.add("es.pg.save1000", saved)
        if replayed is not None:
            results.add("es.pg.replay", replayed)


# -- report ----------------------------------------------------------------------------


async def _await_cost_us(calls: int = 500) -> float:
    async with aiosqlite.connect(":memory:") as conn:
        start = time.perf_counter()
        for _ in range(calls):
            await conn.execute("SELECT 1")
        return (time.perf_counter() - start) / calls * 1e6


def await_cost_us() -> float:
    """Microseconds per no-op aiosqlite await: the thread hop every store call pays."""
    return asyncio.run(_await_cost_us())


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_facts() -> dict[str, str]:
    """What the numbers depend on, including the measured cost of one aiosqlite await."""
    return {
        "cpu_count": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "aiosqlite": metadata.version("aiosqlite"),
        "orjson": metadata.version("orjson"),
        "eventsourcing": es_version() or "not installed",
        "asyncpg": metadata.version("asyncpg"),
        "platform": platform.platform(),
        "aiosqlite_await_us": f"{await_cost_us():.0f}",
    }


def fmt_rate(value: float | None) -> str:
    """A rate with thousands separators, or a dash if it was not measured."""
    return "-" if value is None else f"{value:,.0f}"


def report_table(results: Results) -> list[dict[str, Any]]:
    """The comparison rows: workload, osupgrade ev/s, reference, reference ev/s, ratio."""
    table = []
    for key, refs in table_rows(results.pg, results.sqlite):
        ours = results.median(key)
        for ref in refs:
            theirs = results.median(ref)
            ratio = ours / theirs if ours is not None and theirs else None
            table.append({
                "workload": LABELS[key], "osupgrade": ours,
                "reference": LABELS[ref], "reference_rate": theirs, "ratio": ratio,
            })  # fmt: skip
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    """Print the comparison, the workload named only on its first row."""
    head = (
        f"{'workload':<36} {'osupgrade ev/s':>14}  {'reference':<50} {'ref ev/s':>10} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    previous = None
    for row in table:
        same = row["workload"] == previous
        name = "" if same else row["workload"]
        ours = "" if same else fmt_rate(row["osupgrade"])
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(
            f"{name:<36} {ours:>14}  {row['reference']:<50} "
            f"{fmt_rate(row['reference_rate']):>10} {ratio:>6}"
        )
        previous = row["workload"]


def targets(results: Results) -> dict[str, dict[str, Any]]:
    """The project's performance targets and whether this run met them."""
    checks = (
        {}
        if not results.sqlite
        else {
            "append C=1000 FULL >= 100k ev/s": ("store.append.c1000.full", TARGET_APPEND),
            "append C=1000 NORMAL >= 100k ev/s": ("store.append.c1000.normal", TARGET_APPEND),
            "replay read_all >= 400k ev/s": ("store.replay.read_all", TARGET_REPLAY),
            "replay subscribe >= 400k ev/s": ("store.replay.subscribe", TARGET_REPLAY),
        }
    )
    if results.pg:
        checks["PostgreSQL append C=100 >= 20k ev/s"] = ("pg.append.c100", TARGET_PG_APPEND)
        checks[f"PostgreSQL C=100 x{PG_BATCH} >= 20k ev/s"] = (
            f"pg.append.c100x{PG_BATCH}",
            TARGET_PG_APPEND,
        )
    out = {}
    for name, (key, target) in checks.items():
        value = results.median(key)
        out[name] = {"value": value, "target": target, "met": value is not None and value >= target}
    return out


def print_report(config: Config, facts: dict[str, str], results: Results) -> dict[str, Any]:
    """Print header, table and targets; return everything as one JSON-ready dict."""
    print("osupgrade event store benchmark")
    print(
        f"machine: {facts['cpu_count']} CPUs ({facts['cpu']}), Python {facts['python']}, "
        f"SQLite {facts['sqlite']}, aiosqlite {facts['aiosqlite']}, orjson {facts['orjson']}, "
        f"eventsourcing {facts['eventsourcing']}, asyncpg {facts['asyncpg']}; "
        f"one no-op aiosqlite await: {facts['aiosqlite_await_us']} us"
    )
    print(
        f"sizes: {config.events:,} events per C=100/1000 and raw batched run, "
        f"{config.single_events:,} per C=1 and raw 1 tx/event run, replay log "
        f"{config.replay_events:,} over {config.streams:,} streams, eventsourcing "
        f"{config.es_single_events:,} single / {config.es_events:,} batched; "
        f"median of {config.repeat} run(s); ratio = osupgrade / reference"
    )
    print()
    table = report_table(results)
    print_table(table)
    print()
    checks = targets(results)
    for name, check in checks.items():
        verdict = "MET" if check["met"] else "NOT MET"
        print(f"target {name:<40} {fmt_rate(check['value']):>10} ev/s  {verdict}")
    for key, reason in results.skipped.items():
        print(f"skipped {LABELS[key]}: {reason}")
    return {
        "machine": facts,
        "config": asdict(config),
        "medians": {key: results.median(key) for key in results.runs},
        "runs": results.runs,
        "skipped": results.skipped,
        "table": table,
        "targets": checks,
    }


# -- command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` replaces every default size with a small one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--events", type=int, help="events per C=100/1000 and raw batched run")
    parser.add_argument("--single-events", type=int, help="events per C=1 run")
    parser.add_argument("--replay-events", type=int, help="events in the replayed log")
    parser.add_argument("--streams", type=int, help="streams the replayed log spans")
    parser.add_argument("--es-events", type=int, help="eventsourcing batched-save events")
    parser.add_argument("--es-single-events", type=int, help="eventsourcing single saves")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument(
        "--pg",
        default=os.environ.get("OSUPGRADE_BENCH_PG_DSN"),
        help="PostgreSQL DSN: also measure PostgresEventStore (default $OSUPGRADE_BENCH_PG_DSN)",
    )
    parser.add_argument("--only-pg", action="store_true", help="skip the SQLite measurements")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    """Sizes from the command line, falling back to full or ``--quick`` defaults."""
    defaults = (
        {"events": 10_000, "single_events": 300, "replay_events": 20_000, "streams": 200,
         "es_events": 5_000, "es_single_events": 300}
        if args.quick
        else {"events": 100_000, "single_events": 2_000, "replay_events": 200_000,
              "streams": 2_000, "es_events": 100_000, "es_single_events": 2_000}
    )  # fmt: skip
    sizes = {name: getattr(args, name) or value for name, value in defaults.items()}
    if args.repeat < 1 or min(sizes.values()) < 1:
        raise SystemExit("sizes and --repeat must be >= 1")
    return Config(repeat=args.repeat, **sizes)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print the report, optionally write JSON."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    args = parse_args(argv)
    config = make_config(args)
    facts = machine_facts()
    results = Results()
    if args.only_pg and not args.pg:
        raise SystemExit("--only-pg needs --pg DSN")
    steps: list[Callable[[Config, Results], None]] = []
    results.sqlite = not args.only_pg
    if not args.only_pg:
        steps += [bench_store_appends, bench_raw_appends, bench_replay, bench_eventsourcing]
    if args.pg:
        steps += [
            functools.partial(bench_pg, dsn=args.pg),
            functools.partial(bench_es_pg, dsn=args.pg),
        ]
    started = time.perf_counter()
    for step in steps:
        step(config, results)
    note(f"done in {time.perf_counter() - started:.0f} s")
    report = print_report(config, facts, results)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

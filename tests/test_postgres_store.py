"""PostgreSQL-only behaviour: what the shared contract suite cannot express.

Several ``PostgresEventStore`` objects on one schema use separate connections, which is
what several engine processes on one database look like to the server.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events import (
    ConcurrencyError,
    CorruptStoreError,
    EventStoreError,
    Fence,
    FencedError,
    NewEvent,
    NotAnEventStoreError,
    PostgresEventStore,
    StoreUnavailableError,
)
from events.postgres import _APPEND_GROUP_V1, redact
from tests.backends import pg_drop_schema, pg_dsn

Factory = Callable[..., PostgresEventStore]
ROOT = Path(__file__).resolve().parents[1]


def ev(n: int) -> NewEvent:
    return NewEvent("test.happened", {"n": n})


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh schema name, dropped afterwards."""
    dsn = pg_dsn()  # skips (or fails on CI) here, before the test, without a server
    name = f"t_{uuid.uuid4().hex[:20]}"
    yield name
    await pg_drop_schema(PostgresEventStore(dsn, schema=name))


@pytest.fixture
def make(schema: str) -> Factory:
    """Build (not open) stores on the test's schema: each one is like another process."""

    def build(**options: Any) -> PostgresEventStore:
        return PostgresEventStore(pg_dsn(), schema=schema, **options)

    return build


async def sql(query: str, *args: object) -> Any:
    conn = await asyncpg.connect(pg_dsn())
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    pg_dsn()  # skip with the others when there is no test server
    dsn = f"postgresql://osu:s3cret@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreUnavailableError) as caught:
        async with PostgresEventStore(dsn, connect_timeout=5):
            pass
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at postgresql://osu:***@127.0.0.1" in message
    assert "s3cret" not in message


def test_redact_keeps_dsns_without_a_password() -> None:
    assert redact("postgresql://u@h:5/d") == "postgresql://u@h:5/d"
    assert (
        redact("postgresql://u:p@h/d?sslmode=require") == "postgresql://u:***@h/d?sslmode=require"
    )


async def test_a_foreign_schema_is_refused(schema: str, make: Factory) -> None:
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".orders (id int)')
    with pytest.raises(NotAnEventStoreError, match=r"holds tables \['orders'\] but is not"):
        async with make():
            pass
    assert await sql(f'SELECT * FROM "{schema}".orders') == []  # untouched


async def test_a_marker_of_another_application_is_refused(schema: str, make: Factory) -> None:
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".osupgrade_meta (key text, value text)')
    await sql(f"INSERT INTO \"{schema}\".osupgrade_meta VALUES ('application', 'other')")
    with pytest.raises(NotAnEventStoreError, match="not an osupgrade event log"):
        async with make():
            pass


async def test_a_newer_schema_is_refused(make: Factory, schema: str) -> None:
    async with make() as store:
        await store.append("s", [ev(1)], 0)
    await sql(f"UPDATE \"{schema}\".osupgrade_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CorruptStoreError, match="schema v99; this code reads v2"):
        async with make():
            pass


async def test_a_v1_schema_is_migrated_on_open(make: Factory, schema: str) -> None:
    async with make() as store:
        await store.append("s", [ev(1), ev(2)], 0)
    # Back to v1 by hand: no fences table, the 18-argument append_group(), marker 1.
    s = f'"{schema}"'
    await sql(f"DROP TABLE {s}.fences")
    await sql(f"DROP FUNCTION {s}.append_group")
    await sql(_APPEND_GROUP_V1.format(s=s))
    await sql(f"UPDATE {s}.osupgrade_meta SET value = '1' WHERE key = 'schema_version'")
    stores = [make(), make()]  # two engines starting together: one migrates
    await asyncio.gather(*(store.open() for store in stores))
    try:
        first, second = stores
        assert await first.head() == 2
        assert await first.append("s", [ev(3)], 2, fence=Fence("a", 2)) == [3]
        with pytest.raises(FencedError):
            await second.append("s", [ev(4)], 3, fence=Fence("a", 1))
        assert await second.append("s", [ev(5)], 3) == [4]
        assert (await second.verify()).ok
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    meta = await sql(f"SELECT value FROM {s}.osupgrade_meta WHERE key = 'schema_version'")
    assert meta[0][0] == "2"
    functions = await sql(
        "SELECT p.pronargs FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1 AND p.proname = 'append_group'",
        schema,
    )
    assert [f[0] for f in functions] == [21]  # the old overload is gone


async def test_reopen_continues_the_log_and_the_chain(make: Factory) -> None:
    async with make() as store:
        await store.append("a", [ev(1), ev(2)], 0)
        await store.append("b", [ev(3)], 0)
    async with make() as store:
        assert await store.head() == 3
        assert await store.stream_version("a") == 2
        assert await store.append("a", [ev(4)], 2) == [4]
        assert await store.append("c", [ev(5)], 0) == [5]
        assert [e.data["n"] for e in await store.read_all()] == [1, 2, 3, 4, 5]
        report = await store.verify()
    assert (report.ok, report.checked) == (True, 5)


async def test_after_a_foreign_append_the_group_is_planned_again_without_the_lock(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make() as a, make() as b:
        await a.append("a", [ev(1)], 0)
        await b.append("b", [ev(2)], 0)  # another process: a's cached tail is stale now
        await b.append("new-stream", [ev(3)], 0)  # ... and so is its next stream key
        locked = 0
        original = a._locked_plan  # counting which path a group takes

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal locked
            locked += 1
            return await original(*args, **kwargs)

        monkeypatch.setattr(a, "_locked_plan", counting)
        assert await a.append("a", [ev(4)], 1) == [4]
        assert await a.append("c", [ev(5)], 0) == [5]  # a new stream: key after b's
        assert locked == 0  # re-planned from the new tail, one round trip each
        assert [e.stream_version for e in await a.read_stream("a")] == [1, 2]
        assert (await a.verify()).ok


async def test_a_stale_cached_version_is_caught_and_redone_carefully(make: Factory) -> None:
    async with make() as a, make() as b:
        await a.append("s", [ev(1)], 0)  # a caches version 1
        await b.append("s", [ev(2)], 1)  # b (a new owner) writes the same stream
        with pytest.raises(ConcurrencyError):
            await a.append("s", [ev(3)], 1)  # a's worker still thinks version 1
        assert await a.append("s", [ev(4)], None) == [3]  # any version: appended at 3
        assert [e.data["n"] for e in await a.read_stream("s")] == [1, 2, 4]
        assert (await a.verify()).ok


async def test_engines_starting_together_create_the_schema_once(make: Factory) -> None:
    stores = [make() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await asyncio.gather(*(s.head() for s in stores)) == [0, 0, 0, 0]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_three_writers_and_a_follower_never_skip_a_late_commit(make: Factory) -> None:
    """The gap race across connections: 3 stores append concurrently (each group in its
    own transaction on its own connection) while a fourth follows the log live. The
    follower must see every position exactly once, in order, and the chain must hold."""
    writers = [make(poll_interval=3600) for _ in range(3)]
    follower = make(poll_interval=3600)  # wake-ups by NOTIFY only
    for store in [*writers, follower]:
        await store.open()
    per_writer, batch = 40, 5
    total = len(writers) * per_writer * batch
    try:
        seen: list[int] = []

        async def follow() -> None:
            async for event in follower.subscribe(after=0, batch_size=37):
                seen.append(event.position)
                if len(seen) == total:
                    return

        async def write(store: PostgresEventStore, w: int) -> list[list[int]]:
            async def one(i: int) -> list[int]:
                positions: list[int] = await store.append(
                    f"w{w}-{i % 4}", [ev(i) for _ in range(batch)], None
                )
                return positions

            return list(await asyncio.gather(*(one(i) for i in range(per_writer))))

        results = await asyncio.gather(
            follow(), *(write(store, w) for w, store in enumerate(writers))
        )
        batches = [b for written in results[1:] for b in written]
        assert sorted(p for b in batches for p in b) == list(range(1, total + 1))
        assert all(b == list(range(b[0], b[0] + batch)) for b in batches)
        assert seen == list(range(1, total + 1))
        report = await follower.verify()
        assert (report.ok, report.checked) == (True, total)
    finally:
        for store in [*writers, follower]:
            await store.close()


async def _advisory_waiters() -> int:
    rows = await sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    return int(rows[0][0])


async def test_a_position_is_never_visible_before_a_smaller_one_commits(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hold store A's transaction open after its insert; store B's append (one-statement
    fast path) must wait on the lock, not take the next position and commit first, and
    readers see neither until A commits; then A's events come first."""
    async with make() as a, make() as b, make() as reader:
        await a.append("s", [ev(0)], 0)
        release = asyncio.Event()
        inserted = asyncio.Event()
        original = a._write

        async def slow_write(conn: Any, plan: Any) -> None:
            await original(conn, plan)
            inserted.set()
            await release.wait()

        async def no_fast_path(conn: Any, group: Any) -> None:
            return None  # A takes the locked path, so it can be paused inside its transaction

        monkeypatch.setattr(a, "_fast_commit", no_fast_path)
        monkeypatch.setattr(a, "_write", slow_write)
        first = asyncio.ensure_future(a.append("s", [ev(1)], 1))
        await inserted.wait()
        second = asyncio.ensure_future(b.append("t", [ev(2)], 0))
        # B blocks inside the server, so pg_locks is the only signal there is to wait on.
        while await _advisory_waiters() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert not second.done()
        assert await reader.head() == 1
        assert [e.position for e in await reader.read_all()] == [1]
        release.set()
        assert await first == [2]
        assert await second == [3]
        assert [e.stream_id for e in await reader.read_all()] == ["s", "s", "t"]
        assert (await reader.verify()).ok


async def test_notify_wakes_another_store(make: Factory) -> None:
    async with make(poll_interval=3600) as writer, make(poll_interval=3600) as follower:
        waiter = asyncio.ensure_future(follower.until(2))
        await writer.append("s", [ev(1), ev(2)], 0)
        assert await waiter >= 2  # no poll for an hour: NOTIFY woke it


async def test_polling_finds_commits_when_notifications_are_lost(make: Factory) -> None:
    async with make(poll_interval=3600) as writer, make(poll_interval=0.05) as follower:
        assert follower._listener is not None
        await follower._listener.remove_listener(follower._sql.channel, follower._on_notify)
        subscription = follower.subscribe(after=0)
        await writer.append("s", [ev(7)], 0)
        event = await anext(subscription)
        assert (event.position, event.data) == (1, {"n": 7})


async def test_the_writer_reconnects_after_losing_its_connection(make: Factory) -> None:
    async with make() as store:
        await store.append("s", [ev(1)], 0)
        assert store._writer is not None
        pid = store._writer.get_server_pid()
        await sql("SELECT pg_terminate_backend($1)", pid)
        assert await store.append("s", [ev(2)], 1) == [2]
        assert store._writer is not None and store._writer.get_server_pid() != pid
        assert (await store.verify()).ok


def readme_example(schema: str, dsn: str) -> str:
    """The README's PostgreSQL example, pointed at ``dsn`` and a schema of its own."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## PostgreSQL", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("PostgresEventStore(dsn)", f"PostgresEventStore(dsn, schema={schema!r})")
    return code.replace('"postgresql://postgres@127.0.0.1:5432/postgres"', repr(dsn))


async def test_the_readme_example_runs() -> None:
    """The README's PostgreSQL example, as written, against the test server."""
    schema = f"t_{uuid.uuid4().hex[:20]}"
    code = readme_example(schema, pg_dsn())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    await pg_drop_schema(PostgresEventStore(pg_dsn(), schema=schema))
    assert process.returncode == 0, err.decode()
    assert "1 True" in out.decode().splitlines()  # (structlog also prints to stdout)


async def test_a_user_who_may_not_create_the_schema_gets_a_clear_error(schema: str) -> None:
    role = f"r_{uuid.uuid4().hex[:12]}"
    await sql(f'CREATE ROLE "{role}" LOGIN')  # PostgreSQL 15: no CREATE on the database
    try:
        dsn = pg_dsn().replace("://postgres@", f"://{role}@", 1)
        if dsn == pg_dsn():
            pytest.skip("the test DSN does not log in as postgres")
        with pytest.raises(EventStoreError, match=r"cannot prepare the event log in .*permission"):
            async with PostgresEventStore(dsn, schema=schema):
                pass
    finally:
        await sql(f'DROP ROLE "{role}"')


async def test_a_lost_listen_connection_is_replaced(make: Factory) -> None:
    async with make(poll_interval=3600) as writer, make(poll_interval=0.05) as follower:
        assert follower._listener is not None
        old = follower._listener
        await sql("SELECT pg_terminate_backend($1)", old.get_server_pid())
        subscription = follower.subscribe(after=0)
        await writer.append("s", [ev(1)], 0)
        assert (await anext(subscription)).position == 1  # the poll found it meanwhile
        while follower._listener is None or follower._listener is old:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the poll loop reconnects within one interval
        poll = follower._tasks[1]
        poll.cancel()  # from here on, only a notification can wake it
        await asyncio.gather(poll, return_exceptions=True)
        waiter = asyncio.ensure_future(follower.until(2))
        await writer.append("s", [ev(2)], 1)
        assert await asyncio.wait_for(waiter, 30) >= 2


async def spawn_writer(schema: str, name: str, appends: int) -> asyncio.subprocess.Process:
    """Start ``tests.pg_writer_child``: another process appending to the same log."""
    args = ["-m", "tests.pg_writer_child", pg_dsn(), schema, name, str(appends)]
    child = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert await child.stdout.readline() == b"READY\n"
    return child


async def test_three_processes_append_while_a_follower_never_skips(
    make: Factory, schema: str
) -> None:
    """The gap race with real processes, as several engines on one database are: three
    child processes append concurrently; the follower sees every position once, in order."""
    appends, batch = 120, 5
    total = 3 * appends * batch
    async with make(poll_interval=3600) as follower:  # creates the schema first
        seen: list[int] = []
        children = [await spawn_writer(schema, f"p{i}", appends) for i in range(3)]
        for child in children:  # all open and waiting: start them together
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        async for event in follower.subscribe(after=0, batch_size=64):
            seen.append(event.position)
            if len(seen) == total:
                break
        outputs = [await child.communicate() for child in children]
        assert [child.returncode for child in children] == [0, 0, 0]
        assert all(out.decode().strip().endswith("DONE") for out, _ in outputs)
        assert seen == list(range(1, total + 1))
        log = await follower.read_all(limit=total)
        for stream in {e.stream_id for e in log}:  # each stream: versions in commit order
            versions = [e.stream_version for e in log if e.stream_id == stream]
            assert versions == list(range(1, len(versions) + 1))
        writers = [e.data["by"] for e in log]
        switches = sum(a != b for a, b in itertools.pairwise(writers))
        # Sequential processes would switch twice; each process group-commits its ten
        # lanes, so interleaving shows as a handful of switches, not hundreds.
        assert switches >= 6, "the processes did not write concurrently"
        report = await follower.verify()
        assert (report.ok, report.checked) == (True, total)


async def test_a_takeover_racing_the_old_owners_appends_is_never_crossed(make: Factory) -> None:
    """Two engines race on one scale set: A appends with token 1 from 8 tasks at once,
    so its groups are always in flight; B takes over with token 2 mid-stream. Once B's
    first append committed, none of A's may follow it in the log, whatever A's cache
    said; every task of A must end with FencedError, and B's appends all commit."""
    async with make() as a, make() as b:
        a_done = 0
        a_running = asyncio.Event()

        async def old_owner(worker: int) -> FencedError:
            nonlocal a_done
            for n in range(2000):
                try:
                    await a.append("vmss-a", [NewEvent("t", {"by": "A", "token": 1, "n": n})],
                                   None, fence=Fence("a", 1))  # fmt: skip
                except FencedError as exc:
                    return exc
                a_done += 1
                if a_done >= 40:
                    a_running.set()
            raise AssertionError(f"A's worker {worker} was never fenced")

        async def new_owner() -> list[list[int]]:
            await a_running.wait()
            return await asyncio.gather(*(
                b.append("vmss-a", [NewEvent("t", {"by": "B", "token": 2, "n": n})],
                         None, fence=Fence("a", 2))
                for n in range(20)
            ))  # fmt: skip

        *refusals, committed = await asyncio.gather(*(old_owner(w) for w in range(8)), new_owner())
        assert all(r.current == 2 for r in refusals)
        assert len(committed) == 20
        log = await b.read_stream("vmss-a")
        tokens = [e.data["token"] for e in log]
        first_b = tokens.index(2)
        assert tokens[:first_b] == [1] * first_b  # A's events only before B's first...
        assert tokens[first_b:] == [2] * (len(tokens) - first_b)  # ...and none after it
        assert first_b == a_done >= 40
        assert await a.fence_token("a") == 2
        assert (await b.verify()).ok

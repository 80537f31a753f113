"""What only the SQLite backend has: files, reopening, other processes, bad files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from events import (
    ConcurrencyError,
    CorruptStoreError,
    Fence,
    FencedError,
    NewEvent,
    NotAnEventStoreError,
    SQLiteEventStore,
)


def ev(n: int) -> NewEvent:
    return NewEvent("test.happened", {"n": n})


async def test_reopening_keeps_the_log_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with SQLiteEventStore(path) as store:
        await store.append("s", [ev(1), ev(2)], 0)
    async with SQLiteEventStore(path, durability="normal") as store:
        assert await store.head() == 2
        assert await store.append("s", [ev(3)], 2) == [3]
        assert await store.append("t", [ev(4)], 0) == [4]
        report = await store.verify()
        assert [e.data["n"] for e in await store.read_all()] == [1, 2, 3, 4]
    assert report.ok
    assert report.checked == 4


async def test_two_store_instances_on_one_file_stay_consistent(tmp_path: Path) -> None:
    """Two writers (as two processes would be) race; the collision path keeps order."""
    path = tmp_path / "shared.sqlite"
    async with SQLiteEventStore(path) as first, SQLiteEventStore(path) as second:

        async def writer(store: SQLiteEventStore, stream: str) -> None:
            for i in range(50):
                await store.append(stream, [ev(i), ev(i)], None)
                await store.append("both", [ev(i)], None)

        await asyncio.gather(writer(first, "a"), writer(second, "b"))
        log = await first.read_all(limit=1000)
        report = await second.verify()
        both_versions = [e.stream_version for e in log if e.stream_id == "both"]
        # an expected-version check sees the other instance's appends
        version = await second.stream_version("a")
        with pytest.raises(ConcurrencyError):
            await second.append("a", [ev(0)], version - 1)
        assert await second.append("a", [ev(0)], version) == [301]
    assert [e.position for e in log] == list(range(1, 301))
    assert both_versions == list(range(1, 101))
    assert report.ok


async def test_a_right_expected_version_is_accepted_after_another_instance_appended(
    tmp_path: Path,
) -> None:
    # The careful path used to plan from the cached version (1) although it had just seen
    # that another writer moved the log: a correct expected_version of 2 was refused.
    path = tmp_path / "events.sqlite"
    async with SQLiteEventStore(path) as first, SQLiteEventStore(path) as second:
        await first.append("s", [ev(1)], 0)
        await second.append("s", [ev(2)], 1)
        assert await first.append("s", [ev(3)], 2) == [3]
        assert [e.stream_version for e in await first.read_stream("s")] == [1, 2, 3]


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some text, not a database at all\n" * 100)
    with pytest.raises(NotAnEventStoreError):
        async with SQLiteEventStore(path):
            pass
    assert path.read_text().startswith("just some text")


async def test_another_apps_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAnEventStoreError, match="not an osupgrade event log"):
        async with SQLiteEventStore(path):
            pass
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"customers"}


async def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with SQLiteEventStore(path) as store:
        await store.append("s", [ev(1)], 0)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(CorruptStoreError, match="schema v99; this code reads v2"):
        async with SQLiteEventStore(path):
            pass


def downgrade_to_v1(path: Path) -> None:
    """Make ``path`` look like a log written before fencing (schema v1: no fences table)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE fences")
    conn.execute("PRAGMA user_version = 1")
    conn.close()


async def test_a_v1_log_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with SQLiteEventStore(path) as store:
        await store.append("s", [ev(1), ev(2)], 0)
    downgrade_to_v1(path)
    # two engines opening it together: one migrates, the other finds it done
    first, second = SQLiteEventStore(path), SQLiteEventStore(path)
    await asyncio.gather(first.open(), second.open())
    try:
        assert await first.head() == 2
        assert await first.append("s", [ev(3)], 2, fence=Fence("a", 2)) == [3]
        with pytest.raises(FencedError):
            await second.append("s", [ev(4)], 3, fence=Fence("a", 1))
        assert await second.fence_token("a") == 2
        assert (await second.verify()).ok
    finally:
        await first.close()
        await second.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    conn.close()


async def test_a_damaged_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with SQLiteEventStore(path) as store:
        for i in range(200):
            await store.append(f"s{i}", [NewEvent("test.padding", {"x": "y" * 500})], 0)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    for offset in range(4096 * 2, len(raw), 4096):  # garble every page after the first two
        raw[offset + 8 : offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(raw))

    async def open_and_read() -> None:
        async with SQLiteEventStore(path) as store:
            await store.verify()
            await store.read_all(limit=10_000)

    with pytest.raises((CorruptStoreError, NotAnEventStoreError)):
        await open_and_read()


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAnEventStoreError):
        async with SQLiteEventStore(tmp_path):
            pass


async def test_close_commits_appends_already_queued(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    store = SQLiteEventStore(path)
    await store.open()
    pending = [asyncio.ensure_future(store.append(f"s{i}", [ev(i)], 0)) for i in range(100)]
    await asyncio.sleep(0)  # let every append reach the writer's queue
    await store.close()
    results = await asyncio.gather(*pending)
    assert sorted(p for r in results for p in r) == list(range(1, 101))
    async with SQLiteEventStore(path) as reopened:
        assert await reopened.head() == 100


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    commits: list[int] = []
    async with SQLiteEventStore(tmp_path / "log.sqlite") as store:
        original = store._after_commit

        def counting(plan: object) -> None:
            commits.append(len(plan.rows))  # type: ignore[attr-defined]
            original(plan)  # type: ignore[arg-type]

        store._after_commit = counting  # type: ignore[method-assign]
        await asyncio.gather(*(store.append(f"s{i}", [ev(i)], 0) for i in range(500)))
    assert sum(commits) == 500
    assert len(commits) <= 5  # one transaction for many appends, not one each


@pytest.mark.parametrize("bad", [{"durability": "sometimes"}, {"readers": 0}])
def test_bad_settings_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked by the type
        SQLiteEventStore(tmp_path / "x.sqlite", **bad)  # type: ignore[arg-type]

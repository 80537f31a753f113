"""Fencing tokens: every backend refuses an append whose token is older than one used.

The contract part runs on every backend (the ``store``/``backend`` fixtures); the
two-store tests run on the durable backends, where a second store object on the same
log stands for a second engine process with its own caches.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events import (
    ConcurrencyError,
    DuplicateEventIdError,
    Fence,
    FencedError,
    InvalidFenceError,
    NewEvent,
    PostgresEventStore,
    SQLiteEventStore,
)
from tests.backends import BACKENDS, Backend, opened


def ev(n: int = 0, **extra: Any) -> NewEvent:
    return NewEvent("test.happened", {"n": n, **extra})


DURABLE = [b for b in BACKENDS if b.name != "memory"]


@pytest.fixture(params=DURABLE, ids=[b.name for b in DURABLE])
def durable(request: pytest.FixtureRequest) -> Backend:
    """A backend whose log a second store object can open (another engine process)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def durable_store(durable: Backend, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, open store of a durable backend."""
    async with opened(durable, tmp_path) as s:
        yield s


@asynccontextmanager
async def second_store(store: Any) -> AsyncIterator[Any]:
    """Another store object on ``store``'s log: another engine process, with its own caches."""
    other: Any
    if isinstance(store, SQLiteEventStore):
        other = SQLiteEventStore(store.path)
    else:
        assert isinstance(store, PostgresEventStore)
        other = PostgresEventStore(store.dsn, schema=store.schema)
    async with other:
        yield other


async def raise_fence_behind_the_stores_back(store: Any, scope: str, token: int) -> None:
    """Raise a fence by hand, without an append: the log's tail does not move."""
    if isinstance(store, SQLiteEventStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            conn.execute("INSERT OR REPLACE INTO fences VALUES (?, ?)", (scope, token))
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresEventStore)
    pg = await asyncpg.connect(store.dsn)
    try:
        await pg.execute(
            f'INSERT INTO "{store.schema}".fences VALUES ($1, $2)'
            " ON CONFLICT (scope) DO UPDATE SET token = excluded.token",
            scope,
            token,
        )
    finally:
        await pg.close()


# -- the contract ----------------------------------------------------------------------


async def test_a_stale_token_is_refused_and_nothing_is_written(store: Any) -> None:
    assert await store.append("vmss-a", [ev(1)], 0, fence=Fence("a", 5)) == [1]
    with pytest.raises(FencedError) as caught:
        await store.append("vmss-a", [ev(2), ev(3)], 1, fence=Fence("a", 3))
    error = caught.value
    assert (error.scope, error.token, error.current) == ("a", 3, 5)
    assert str(error) == "append to scope a with fencing token 3 refused: token 5 already used"
    assert await store.head() == 1
    assert await store.stream_version("vmss-a") == 1
    assert [e.data["n"] for e in await store.read_all()] == [1]
    assert await store.fence_token("a") == 5  # a refused append does not touch the fence


async def test_equal_and_higher_tokens_are_accepted_and_raise_the_record(store: Any) -> None:
    assert await store.fence_token("a") == 0
    await store.append("vmss-a", [ev(1)], 0, fence=Fence("a", 2))
    assert await store.fence_token("a") == 2
    await store.append("vmss-a", [ev(2)], 1, fence=Fence("a", 2))  # equal: the same owner
    assert await store.fence_token("a") == 2
    await store.append("vmss-a", [ev(3)], 2, fence=Fence("a", 7))  # a new owner
    assert await store.fence_token("a") == 7
    with pytest.raises(FencedError):
        await store.append("vmss-a", [ev(4)], 3, fence=Fence("a", 2))
    assert await store.stream_version("vmss-a") == 3


async def test_token_zero_is_accepted_on_a_fresh_scope(store: Any) -> None:
    assert await store.append("s", [ev()], 0, fence=Fence("a", 0)) == [1]
    assert await store.fence_token("a") == 0


async def test_scopes_are_independent(store: Any) -> None:
    await store.append("vmss-a", [ev()], None, fence=Fence("a", 9))
    await store.append("vmss-b", [ev()], None, fence=Fence("b", 1))
    # the same stream may be written under two scopes: the fence is the caller's lease
    await store.append("vmss-a", [ev()], None, fence=Fence("b", 1))
    assert await store.fence_token("a") == 9
    assert await store.fence_token("b") == 1
    assert await store.fence_token("c") == 0


async def test_fence_is_checked_before_the_expected_version(store: Any) -> None:
    await store.append("vmss-a", [ev()], 0, fence=Fence("a", 2))
    with pytest.raises(FencedError):  # stop, rather than reload and retry
        await store.append("vmss-a", [ev()], 0, fence=Fence("a", 1))
    with pytest.raises(ConcurrencyError):  # a current token still gets the version check
        await store.append("vmss-a", [ev()], 0, fence=Fence("a", 2))


async def test_unfenced_appends_are_not_checked(store: Any) -> None:
    await store.append("vmss-a", [ev()], 0, fence=Fence("a", 9))
    assert await store.append("vmss-a", [ev()], 1) == [2]
    assert await store.append("vmss-a", [ev()], None) == [3]
    assert await store.fence_token("a") == 9


async def test_a_retry_of_a_committed_fenced_append_returns_its_positions(store: Any) -> None:
    first = [ev(1), ev(2)]
    assert await store.append("vmss-a", first, 0, fence=Fence("a", 1)) == [1, 2]
    await store.append("vmss-a", [ev(3)], 2, fence=Fence("a", 2))
    # The answer to the first append was lost; its retry now carries a stale token, but
    # it was committed while the token was current, so it still gets its positions.
    assert await store.append("vmss-a", first, 0, fence=Fence("a", 1)) == [1, 2]
    assert await store.append("vmss-a", first, None, fence=Fence("a", 1)) == [1, 2]
    assert await store.head() == 3
    # ...but new events with the stale token are refused
    with pytest.raises(FencedError):
        await store.append("vmss-a", [ev(4)], None, fence=Fence("a", 1))
    # and reused ids are still not a retry
    with pytest.raises(DuplicateEventIdError):
        await store.append("vmss-a", [first[0], ev(5)], None, fence=Fence("a", 2))


async def test_in_one_group_a_raise_refuses_later_stale_appends_only(
    store: Any, backend: Backend
) -> None:
    await store.append("setup", [ev()], 0, fence=Fence("a", 1))
    calls = [
        store.append("s-1", [ev(1)], 0, fence=Fence("a", 1)),
        store.append("s-2", [ev(2)], 0, fence=Fence("a", 1)),
        store.append("s-3", [ev(3)], 0, fence=Fence("a", 2)),  # the new owner
        store.append("s-4", [ev(4)], 0, fence=Fence("a", 1)),  # old owner, after: refused
        store.append("s-5", [ev(5)], 0, fence=Fence("b", 1)),  # another scope
        store.append("s-6", [ev(6)], 0),  # unfenced
        store.append("s-7", [ev(7)], 0, fence=Fence("a", 2)),
        store.append("s-8", [ev(8)], 0, fence=Fence("a", 1)),  # refused
        store.append("s-9", [ev(9), ev(10)], 0, fence=Fence("a", 3)),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [i + 1 for i, r in enumerate(results) if isinstance(r, FencedError)]
    assert refused == [4, 8]
    assert all(isinstance(r, list) for i, r in enumerate(results) if i + 1 not in refused)
    assert [r.current for r in results if isinstance(r, FencedError)] == [2, 2]
    committed = await store.read_all(after=1)
    assert [e.data["n"] for e in committed] == [1, 2, 3, 5, 6, 7, 9, 10]
    assert [e.position for e in committed] == list(range(2, 10))  # no holes
    assert await store.stream_version("s-4") == 0
    assert await store.fence_token("a") == 3
    assert await store.fence_token("b") == 1
    if backend.name != "memory":  # one group: one transaction, one recorded time
        assert len({e.recorded_at for e in committed}) == 1
    assert (await store.verify()).ok


async def test_invalid_fences_are_refused(store: Any) -> None:
    for scope, token in [("", 1), ("x" * 201, 1), ("a\x00b", 1), ("a", -1), ("a", 2**63)]:
        with pytest.raises(InvalidFenceError):
            Fence(scope, token)
    for bad in [1.0, True, "1", None]:
        with pytest.raises(ValueError, match="fencing token must be"):
            Fence("a", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        Fence(7, 1)  # type: ignore[arg-type]
    assert Fence("x" * 200, 2**63 - 1).token == 2**63 - 1
    with pytest.raises(InvalidFenceError, match="must be a Fence"):
        await store.append("s", [ev()], 0, fence=("a", 1))
    with pytest.raises(InvalidFenceError):
        await store.fence_token("")
    assert await store.head() == 0


async def test_a_fence_survives_reopening(durable: Backend, tmp_path: Path) -> None:
    async with opened(durable, tmp_path) as store:
        await store.append("vmss-a", [ev()], 0, fence=Fence("a", 4))
        await store.close()
        async with second_store(store) as reopened:
            assert await reopened.fence_token("a") == 4
            with pytest.raises(FencedError):
                await reopened.append("vmss-a", [ev()], 1, fence=Fence("a", 3))
            assert await reopened.append("vmss-a", [ev()], 1, fence=Fence("a", 4)) == [2]


# -- two stores (two engine processes) on one log --------------------------------------


async def test_another_stores_raise_is_seen_through_a_stale_cache(durable_store: Any) -> None:
    store = durable_store
    async with second_store(store) as other:
        await store.append("vmss-a", [ev(1)], 0, fence=Fence("a", 1))  # A caches token 1
        await other.append("vmss-a", [ev(2)], 1, fence=Fence("a", 2))  # B takes over
        # A's cache still says token 1 and its fast path would accept; it must not.
        with pytest.raises(FencedError) as caught:
            await store.append("vmss-a", [ev(3)], None, fence=Fence("a", 1))
        assert caught.value.current == 2
        results = await asyncio.gather(  # also inside a group of A's
            store.append("other", [ev(4)], None),
            store.append("vmss-a", [ev(5)], None, fence=Fence("a", 1)),
            return_exceptions=True,
        )
        assert results[0] == [3]
        assert isinstance(results[1], FencedError)
        assert [e.data["n"] for e in await other.read_all()] == [1, 2, 4]
        assert await store.fence_token("a") == 2
        # A learns the token and may append with it (say, after re-acquiring the lease)
        assert await store.append("vmss-a", [ev(6)], None, fence=Fence("a", 2)) == [4]
        assert (await other.verify()).ok


async def test_a_fence_raised_without_an_append_still_stops_the_fast_path(
    durable_store: Any,
) -> None:
    """Fences change only through appends, which move the tail; the fast path checks the
    tail. It also checks the fences themselves, in the same transaction, so even a fence
    raised by hand (the tail unchanged) cannot be bypassed by a store's cache."""
    store = durable_store
    await store.append("vmss-a", [ev(1)], 0, fence=Fence("a", 1))  # cache: token 1
    await raise_fence_behind_the_stores_back(store, "a", 5)
    with pytest.raises(FencedError) as caught:
        await store.append("vmss-a", [ev(2)], None, fence=Fence("a", 1))
    assert caught.value.current == 5
    assert await store.head() == 1
    assert await store.append("vmss-a", [ev(3)], None, fence=Fence("a", 5)) == [2]
    assert await store.fence_token("a") == 5

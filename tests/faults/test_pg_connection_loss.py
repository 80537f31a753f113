"""Connections to PostgreSQL cut under the log's parts: each recovers by itself.

``pg_terminate_backend`` from another connection ends a session as a server restart
does (the client sees ``terminating connection due to administrator command``, then a
closed socket). Before, the projection's tables kept their dead connection for ever
and the runner died with them; other parts let raw asyncpg errors escape.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from engine.scaleout.pg_leases import PostgresLeaseBoard
from events import NewEvent, PostgresEventStore, StoreUnavailableError
from projections.postgres import PostgresTables
from projections.runner import ProjectionRunner
from tests.backends import pg_drop_schema, pg_dsn
from tests.faults.conftest import ThrowawayPostgres

T = TypeVar("T")


@pytest.fixture
async def store() -> AsyncIterator[PostgresEventStore]:
    """An open store in a fresh schema of the suite's server (dropped afterwards)."""
    opened = PostgresEventStore(pg_dsn(), schema=f"t_{uuid.uuid4().hex[:20]}", poll_interval=0.1)
    async with opened:
        yield opened
    await pg_drop_schema(opened)


async def terminate(*pids: int) -> None:
    """End these sessions from another connection, as an operator (or a restart) would."""
    admin = await asyncpg.connect(pg_dsn())
    try:
        ended = await admin.fetch("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
    finally:
        await admin.close()
    assert all(row[0] for row in ended)


async def recovers(call: Callable[[], Awaitable[T]], tries: int = 2) -> T:
    """``call()`` answers within ``tries``; a failure before is only ever typed."""
    for _ in range(tries - 1):
        try:
            return await call()
        except StoreUnavailableError:
            continue  # the lost connection was noticed by this call: the next one connects
    return await call()


def events(n: int) -> list[NewEvent]:
    return [NewEvent("test.happened", {"n": i}) for i in range(n)]


async def test_projection_tables_connect_again_after_their_connection_is_terminated(
    store: PostgresEventStore,
) -> None:
    tables = PostgresTables(store.dsn, schema=store.schema)
    await tables.open()
    try:
        await tables.write([], [], [], 1)
        assert tables._conn is not None
        lost = tables._conn.get_server_pid()
        await terminate(lost)
        await recovers(lambda: tables.write([], [], [], 2))
        await tables.write([], [], [], 3)
        assert tables._conn is not None and tables._conn.get_server_pid() != lost
        assert (await tables.rows())[0] == 3
    finally:
        await tables.close()


async def test_projection_on_postgres_reaches_the_head_after_its_connection_is_terminated(
    store: PostgresEventStore,
) -> None:
    await store.append("other-1", events(30), 0)
    tables = PostgresTables(store.dsn, schema=store.schema)
    async with ProjectionRunner(store, tables, batch_size=10) as runner:
        await runner.wait_for(30)
        assert tables._conn is not None
        await terminate(tables._conn.get_server_pid())
        await store.append("other-1", events(30), 30)
        await asyncio.wait_for(runner.wait_for(60), 10)
    assert (await tables.rows())[0] == 60


async def test_store_reads_appends_and_subscriptions_recover_after_every_connection_is_cut(
    store: PostgresEventStore,
) -> None:
    await store.append("s-1", events(3), 0)
    subscription = store.subscribe().batches()
    assert [e.position for e in await anext(subscription)] == [1, 2, 3]
    assert store._writer is not None and store._listener is not None and store._pool is not None
    pids = [store._writer.get_server_pid(), store._listener.get_server_pid()]
    pids += [h._con.get_server_pid() for h in store._pool._holders if h._con is not None]
    await terminate(*pids)
    # one failed read at most: it expires the pool's other (dead) connections too
    assert await recovers(lambda: store.read_stream("s-1")) is not None
    assert await store.read_stream("s-1") is not None
    assert await recovers(lambda: store.append("s-1", events(2), 3)) == [4, 5]
    assert [e.position for e in await asyncio.wait_for(anext(subscription), 10)] == [4, 5]
    assert (await store.verify()).ok


async def test_lease_board_steps_after_a_terminated_connection_are_typed_then_work() -> None:
    schema = f"t_{uuid.uuid4().hex[:20]}"
    async with PostgresLeaseBoard(pg_dsn(), schema=schema, ttl_s=30) as board:
        await board.add(["a", "b"])
        assert set((await board.renew_and_claim("e1")).held) == {"a", "b"}
        assert board._pool is not None
        await terminate(*(h._con.get_server_pid() for h in board._pool._holders if h._con))
        held = await recovers(lambda: board.renew_and_claim("e1"))
        assert set(held.held) == {"a", "b"}  # renewed, same tokens: nothing was lost
        assert await board.owner_address("a") is None
        conn = await asyncpg.connect(pg_dsn())
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_store_and_projection_carry_on_after_a_real_restart_without_reopening(
    throwaway_pg: ThrowawayPostgres,
) -> None:
    async with PostgresEventStore(throwaway_pg.dsn, poll_interval=0.1) as log:
        await log.append("s-1", events(5), 0)
        tables = PostgresTables(throwaway_pg.dsn)
        async with ProjectionRunner(log, tables, batch_size=2) as runner:
            await runner.wait_for(5)
            await asyncio.to_thread(throwaway_pg.restart, "immediate")
            # the server is back (pg_ctl waited); the first try may meet an old session
            positions = await recovers(lambda: log.append("s-1", events(5), 5), tries=3)
            assert positions == [6, 7, 8, 9, 10]
            await asyncio.wait_for(runner.wait_for(10), 10)
            assert runner.view.position == 10 and runner.problem is None
        assert (await log.verify()).ok

"""The LeaseBoard contract, run against every board: in memory and on PostgreSQL.

Time passing is simulated the same way on both: ``age()`` makes every lease and
heartbeat older than the TTL (the memory board's clock moves; on PostgreSQL the stored
times move back), so no test waits for real time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import pytest

from engine.scaleout.leases import LeaseBoard, MemoryLeaseBoard, Ownership, PeerAddress, fair_share
from engine.scaleout.pg_leases import PostgresLeaseBoard
from tests.backends import pg_dsn
from tests.engine.harness import T0

TTL = 15.0


@dataclass
class Env:
    board: LeaseBoard
    age: Callable[[], Awaitable[None]]  # every lease and heartbeat becomes older than the TTL


@pytest.fixture(params=["memory", "postgresql"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "memory":
        now = [T0]
        board = MemoryLeaseBoard(now=lambda: now[0], ttl_s=TTL)

        async def age_memory() -> None:
            now[0] += timedelta(seconds=TTL + 1)

        yield Env(board, age_memory)
        return
    dsn = pg_dsn()
    schema = f"t_{uuid.uuid4().hex[:10]}"
    async with PostgresLeaseBoard(dsn, schema=schema, ttl_s=TTL) as pg:

        async def age_pg() -> None:
            shift = f"interval '{TTL + 1} seconds'"
            await sql(dsn, f'UPDATE "{schema}".leases SET expires_at = expires_at - {shift}')
            await sql(dsn, f'UPDATE "{schema}".engines SET heartbeat_at = heartbeat_at - {shift}')

        try:
            yield Env(pg, age_pg)
        finally:
            await sql(dsn, f'DROP SCHEMA "{schema}" CASCADE')


async def sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


KEYS = [f"set{n:02}" for n in range(9)]


async def test_an_engine_alone_claims_everything_once(env: Env) -> None:
    await env.board.add(KEYS)
    await env.board.add(KEYS[:3])  # adding again changes nothing
    first = await env.board.renew_and_claim("a")
    assert sorted(first.held) == KEYS and set(first.held.values()) == {1}
    assert first.share == 9
    again = await env.board.renew_and_claim("a")
    assert again.held == first.held  # renewed, same tokens
    assert set((await env.board.owners()).values()) == {"a"}


async def test_a_second_engine_gets_its_share_of_what_is_free(env: Env) -> None:
    await env.board.add(KEYS)
    await env.board.renew_and_claim("a")
    b = await env.board.renew_and_claim("b")
    assert b.held == {} and b.share == 5  # nothing free: "a" must shed first
    await env.board.release("a", KEYS[:4])
    await env.board.release("b", KEYS[4:])  # not b's: no effect
    b = await env.board.renew_and_claim("b")
    assert sorted(b.held) == KEYS[:4] and set(b.held.values()) == {2}
    owners = await env.board.owners()
    assert [owners[k] for k in KEYS] == ["b"] * 4 + ["a"] * 5


async def test_expired_leases_move_with_a_higher_token(env: Env) -> None:
    await env.board.add(KEYS[:2])
    await env.board.renew_and_claim("a")
    await env.age()  # "a" stopped renewing
    assert set((await env.board.owners()).values()) == {None}
    b = await env.board.renew_and_claim("b")
    assert b.held == {KEYS[0]: 2, KEYS[1]: 2} and b.share == 2  # "a" no longer counts
    a = await env.board.renew_and_claim("a")  # back from a pause: lost them
    assert a.held == {}


async def test_leave_hands_everything_back_and_stops_counting(env: Env) -> None:
    await env.board.add(KEYS)
    await env.board.renew_and_claim("a")
    await env.board.renew_and_claim("b")
    await env.board.leave("a")
    b = await env.board.renew_and_claim("b")
    assert sorted(b.held) == KEYS and b.share == 9


async def test_removed_scale_sets_have_no_lease(env: Env) -> None:
    await env.board.add(KEYS[:3])
    await env.board.renew_and_claim("a")
    await env.board.remove([KEYS[0]])
    assert sorted(await env.board.owners()) == KEYS[1:3]
    assert sorted((await env.board.renew_and_claim("a")).held) == KEYS[1:3]


async def test_engines_claiming_at_once_never_share_a_lease(env: Env) -> None:
    keys = [f"k{n:03}" for n in range(60)]
    await env.board.add(keys)
    for engine in "abc":  # all three count as live before anyone claims
        await env.board.renew_and_claim(engine)
        await env.board.release(engine, keys)
    results = await asyncio.gather(*(env.board.renew_and_claim(e) for e in "abc"))
    claimed = [set(r.held) for r in results]
    assert sum(len(c) for c in claimed) == len(set().union(*claimed)) == 60
    assert all(len(c) == 20 for c in claimed)


def test_fair_share_rounds_up_and_survives_no_engines() -> None:
    assert fair_share(10, 3) == 4
    assert fair_share(9, 3) == 3
    assert fair_share(5, 0) == 5


def test_renewal_must_be_well_inside_the_ttl() -> None:
    board = MemoryLeaseBoard(now=lambda: T0, ttl_s=10)
    with pytest.raises(ValueError, match="TTL above twice"):
        Ownership(board, "a", renew_s=5)
    Ownership(board, "a", renew_s=4.9)


async def test_joining_without_claiming_counts_for_the_fair_share(env: Env) -> None:
    await env.board.add(KEYS)
    joined = await env.board.renew_and_claim("a", claim=False)
    assert joined.held == {} and joined.share == 9
    await env.board.renew_and_claim("b", claim=False)
    a = await env.board.renew_and_claim("a")
    assert len(a.held) == 5 and a.share == 5  # "b" counts before it claimed anything


async def test_the_owner_of_a_set_is_reached_at_its_announced_url(env: Env) -> None:
    await env.board.add(KEYS[:2])
    await env.board.announce("a", "http://a.example:8080", "mac-of-a")
    await env.board.renew_and_claim("a")  # heartbeats keep the URL
    address = await env.board.owner_address(KEYS[0])
    assert address == PeerAddress("a", "http://a.example:8080", "mac-of-a")
    assert await env.board.owner_address("not-a-set") is None
    await env.age()
    assert await env.board.owner_address(KEYS[0]) is None  # expired: nobody to forward to


async def test_a_scale_set_created_again_after_removal_gets_a_higher_token(env: Env) -> None:
    """The store keeps each set's highest fencing token: a new lifetime must exceed it."""
    await env.board.add([KEYS[0]])
    first = (await env.board.renew_and_claim("a")).held[KEYS[0]]
    await env.board.remove([KEYS[0]])
    assert await env.board.owners() == {}
    assert (await env.board.renew_and_claim("a")).held == {}
    await env.board.add([KEYS[0]])
    again = (await env.board.renew_and_claim("b")).held[KEYS[0]]
    assert again > first

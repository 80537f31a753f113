"""The projection runner's contract on every durable backend (SQLite and PostgreSQL).

Rows and checkpoint are written in one transaction of the backend the log lives in;
the same rollout must give a checkpoint at the head, a rebuild must give identical
rows, and a failed write must be redone without changing anything.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.clock import VirtualClock
from events import EventStore
from projections.runner import ProjectionRunner
from tests.engine.harness import RG, SUB, T0, spec, world
from tests.projections.places import Place, place

__all__ = ["place"]  # the fixture, shared with the SQL tables' tests


async def _rollout(place: Place) -> int:
    clock = VirtualClock(T0)
    store = place.store(clock)
    async with (
        store,
        world(store=store, clock=clock) as w,
        ProjectionRunner(store, place.tables(), batch_size=50) as runner,
    ):
        for i, size in enumerate((3, 10, 7)):
            await w.create(spec(f"s{i}", size))
        await w.publish("1.1.0", unhealthy_instance_percent=20, boot_seconds=60)
        for i in range(3):
            await w.engine.wait_for_upgrade(SUB, RG, f"s{i}")
        head: int = await store.head()
        await runner.wait_for(head)
        assert await runner.lag() == 0
    return head


async def test_the_checkpoint_reaches_the_head_with_every_row(place: Place) -> None:
    head = await _rollout(place)
    checkpoint, upgrades, sets = await place.tables().rows()
    assert checkpoint == head
    assert (len(upgrades), len(sets)) == (3, 3)


async def test_rebuild_gives_identical_rows(place: Place) -> None:
    head = await _rollout(place)
    live = await place.tables().rows()
    store: EventStore
    async with place.store() as store:
        runner = ProjectionRunner(store, place.tables(), batch_size=777)
        await runner.start()
        await runner.rebuild()
        await runner.wait_for(head)
        await runner.stop()
    assert await place.tables().rows() == live


async def test_a_write_whose_answer_is_lost_is_redone_harmlessly(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = await _rollout(place)
    expected = await place.tables().rows()
    async with place.store() as store:
        runner = ProjectionRunner(store, place.tables(), batch_size=2)
        await runner.start()
        await runner.rebuild()
        await runner.wait_for(head // 2)
        await runner.stop()  # as if the process died half way
        stopped_at = (await place.tables().rows())[0]
        assert stopped_at + 2 <= head  # at least two pages (of one) are left to write
        tables = place.tables()
        original = tables.write
        calls = 0

        async def flaky(*args: Any) -> None:
            nonlocal calls
            calls += 1
            await original(*args)
            if calls == 2:
                raise OSError("connection lost")  # committed, but the runner never hears so

        monkeypatch.setattr(tables, "write", flaky)
        resumed = ProjectionRunner(store, tables, batch_size=1)
        await resumed.start()
        with pytest.raises(OSError, match="connection lost"):
            await resumed._task  # type: ignore[misc]
        await resumed.stop()
        assert (await place.tables().rows())[0] > stopped_at
        again = ProjectionRunner(store, place.tables(), batch_size=100)
        await again.start()
        await again.wait_for(head)
        await again.stop()
    assert await place.tables().rows() == expected

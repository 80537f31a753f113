"""Stored projections: exactly-once checkpoints, lag, rebuild equals live."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime.clock import VirtualClock
from events import SQLiteEventStore
from projections.fleet_view import fleet_as_of
from projections.runner import ProjectionRunner, stored_rows
from tests.engine.harness import RG, SUB, T0, spec, world


async def _rollout(tmp_path: Path, runner_path: Path | None = None) -> tuple[Path, int]:
    """A rollout of four sets on SQLite with the projection running beside it."""
    db = tmp_path / "log.sqlite"
    clock = VirtualClock(T0)
    store = SQLiteEventStore(db, clock=clock)
    async with (
        store,
        world(store=store, clock=clock) as w,
        ProjectionRunner(store, runner_path or db, batch_size=50) as runner,
    ):
        if True:
            for i, size in enumerate((3, 10, 7, 20)):
                await w.create(spec(f"s{i}", size))
            await w.publish("1.1.0", unhealthy_instance_percent=20, boot_seconds=60)
            for i in range(4):
                await w.engine.wait_for_upgrade(SUB, RG, f"s{i}")
            head = await store.head()
            await runner.wait_for(head)
            assert await runner.lag() == 0
            latest = runner.view.latest(f"{SUB}/{RG}/s3")
            past = await fleet_as_of(store)
            assert latest == past.latest(f"{SUB}/{RG}/s3")
    return db, head


async def test_the_projection_follows_the_log_and_stores_its_checkpoint(tmp_path: Path) -> None:
    db, head = await _rollout(tmp_path)
    checkpoint, upgrades, sets = await stored_rows(db)
    assert checkpoint == head
    assert len(upgrades) == 4
    assert len(sets) == 4


async def test_rebuild_from_zero_gives_identical_rows(tmp_path: Path) -> None:
    db, head = await _rollout(tmp_path)
    live = await stored_rows(db)
    async with SQLiteEventStore(db) as store:
        runner = ProjectionRunner(store, db, batch_size=777)  # other page boundaries
        await runner.start()
        await runner.rebuild()
        await runner.wait_for(head)
        await runner.stop()
    assert await stored_rows(db) == live


async def test_a_failed_write_is_redone_without_changing_anything(tmp_path: Path) -> None:
    db, head = await _rollout(tmp_path)
    expected = await stored_rows(db)
    async with SQLiteEventStore(db) as store:
        runner = ProjectionRunner(store, db, batch_size=100)
        await runner.start()
        await runner.rebuild()
        await runner.wait_for(head // 2)
        await runner.stop()  # as if the process died half way
        calls = 0
        original = ProjectionRunner._write

        async def flaky(self: ProjectionRunner, *args: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError("disk full")  # the transaction is rolled back
            await original(self, *args)  # type: ignore[arg-type]

        resumed = ProjectionRunner(store, db, batch_size=10)  # several pages to go
        pytest.MonkeyPatch().setattr(ProjectionRunner, "_write", flaky)
        try:
            await resumed.start()
            with pytest.raises(OSError, match="disk full"):
                await resumed._task  # type: ignore[misc]
        finally:
            pytest.MonkeyPatch().setattr(ProjectionRunner, "_write", original)
        await resumed.stop()
        again = ProjectionRunner(store, db, batch_size=100)
        await again.start()
        await again.wait_for(head)
        await again.stop()
    assert await stored_rows(db) == expected

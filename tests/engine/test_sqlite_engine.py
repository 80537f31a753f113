"""The engine on the real SQLite store, where commits take time: answers are durable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.domain.model import UpgradeStatus
from engine.runtime.clock import VirtualClock
from events import SQLiteEventStore
from tests.engine.harness import RG, SUB, T0, spec, world


async def test_wait_for_upgrade_returns_what_the_log_holds(tmp_path: Path) -> None:
    """Workers decide ahead of their commits; a waiter must still see the final state.

    (A bug let ``wait_for_upgrade`` read an upgrade whose last events were decided but
    not yet committed; with 20 sets on SQLite it showed RollingForward.)
    """
    clock = VirtualClock(T0)
    store = SQLiteEventStore(tmp_path / "log.sqlite", clock=clock)
    async with store, world(store=store, clock=clock) as w:
        for i in range(20):
            await w.create(replace(spec("s", 10), name=f"s{i:02d}"))
        await w.publish("1.1.0", boot_seconds=60)
        for i in range(20):
            upgrade = await w.engine.wait_for_upgrade(SUB, RG, f"s{i:02d}")
            assert upgrade.status == UpgradeStatus.COMPLETED
            assert upgrade.request is not None
            stored = await store.stream_version(f"upgrade-{upgrade.request.upgrade_id}")
            assert stored == upgrade.version

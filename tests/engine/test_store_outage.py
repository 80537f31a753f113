"""The log becomes unreachable mid-rollout: workers restart from it once it answers again.

Before, a worker whose append or read failed died with the error, and its scale set was
stuck until the whole engine restarted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from engine.domain.events import InstanceReimaged
from engine.domain.model import UpgradeStatus
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import WorkerRestartingError
from events import InMemoryEventStore, StoreUnavailableError
from tests.engine.harness import RG, SUB, T0, spec, world


class OutageStore:
    """An in-memory log that can be switched off, as a database server that went away."""

    def __init__(self, inner: InMemoryEventStore) -> None:
        self.inner = inner
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("cannot connect to PostgreSQL at db: connection refused")

    async def append(self, *args: Any, **kwargs: Any) -> list[int]:
        self._check()
        return await self.inner.append(*args, **kwargs)

    async def read_stream(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return await self.inner.read_stream(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_workers_restart_from_the_log_after_an_outage_and_finish() -> None:
    clock = VirtualClock(T0, autojump=False)
    store = OutageStore(InMemoryEventStore(clock=clock))
    async with world(clock=clock, store=store) as w:  # type: ignore[arg-type]
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60)
        worker = await w.in_batch("web")
        assert worker.upgrade is not None and worker.upgrade.request is not None
        upgrade_id = worker.upgrade.request.upgrade_id
        store.down = True
        with capture_logs() as logs:
            await w.run_until(lambda: len(w.engine._restarting) > 0)
            with pytest.raises(WorkerRestartingError):  # a command now: retry later
                await w.engine.start_os_upgrade(SUB, RG, "web")
            for _ in range(3):  # a few failed restarts while it is down
                assert await clock.step()
            store.down = False
            await w.run_until(lambda: not w.engine._restarting)
            upgrade = await w.finish("web", upgrade_id)
        assert upgrade.status == UpgradeStatus.COMPLETED
        restarts = [e for e in logs if e["event"] == "log unreachable; worker restarts"]
        assert len(restarts) >= 2 and restarts[1]["in_s"] > restarts[0]["in_s"]  # backing off
        reimaged = Counter(
            e.instance_id for _, e in await w.events("upgrade-") if isinstance(e, InstanceReimaged)
        )
        assert set(reimaged) == {str(i) for i in range(10)} and max(reimaged.values()) == 1
    # leaving the world stops the engine: no WorkerCrashedError, an outage is not a crash

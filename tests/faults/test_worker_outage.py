"""Commands queued for a worker that the log's outage stops are answered, not left waiting.

A worker stops at its next step after an append failed; commands still in its inbox
then used to wait for ever (the client's request hung). They get the outage's error
(HTTP 503, retry) instead.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.api.errors import from_domain
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import WorkerRestartingError
from events import InMemoryEventStore, StoreUnavailableError
from tests.engine.harness import RG, SUB, T0, spec, world
from tests.engine.test_store_outage import OutageStore


async def test_commands_queued_behind_a_failed_append_get_the_outage_error() -> None:
    clock = VirtualClock(T0, autojump=False)
    store = OutageStore(InMemoryEventStore(clock=clock))
    async with world(clock=clock, store=store) as w:  # type: ignore[arg-type]
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60)
        await w.in_batch("web")
        store.down = True
        first = asyncio.ensure_future(w.engine.cancel_upgrade(SUB, RG, "web"))
        second = asyncio.ensure_future(w.engine.cancel_upgrade(SUB, RG, "web"))
        async with asyncio.timeout(10):  # wall time: a hang fails here, not at the CI limit
            for command in (first, second):  # the append's own error, or "restarting" after it
                with pytest.raises((StoreUnavailableError, WorkerRestartingError)) as raised:
                    await command
                answer = from_domain(raised.value)
                assert answer is not None and answer.status == 503  # the outage's answer
        store.down = False
        await w.run_until(lambda: not w.engine._restarting)


async def test_a_restarting_set_reads_as_its_last_fold_while_the_log_is_unreachable() -> None:
    clock = VirtualClock(T0, autojump=False)
    store = OutageStore(InMemoryEventStore(clock=clock))
    async with world(clock=clock, store=store) as w:  # type: ignore[arg-type]
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60)
        await w.in_batch("web")
        store.down = True
        await w.run_until(lambda: w.engine._restarting)
        for _ in range(3):  # restarts that fail to load: the log cannot be read
            assert await clock.step()
        state = await w.engine.scale_set_state(SUB, RG, "web")
        assert state.spec is not None and state.spec.capacity == 10
        assert state.active_upgrade is not None  # as it was folded: mid-rollout
        store.down = False
        await w.run_until(lambda: not w.engine._restarting)

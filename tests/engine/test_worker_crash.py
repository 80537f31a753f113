"""A crashed worker is reported as such, never taken for a scale set that does not exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.runtime.engine import WorkerCrashedError
from tests.engine.harness import RG, SUB, World, spec, world


async def test_a_crashed_worker_is_an_error_not_a_missing_scale_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    with pytest.raises(WorkerCrashedError):  # the engine says so when it stops, too
        async with world() as w:
            await _crash_and_look(w, monkeypatch, seen)
    assert seen == {
        "wait_for_upgrade": WorkerCrashedError,
        "scale_set": WorkerCrashedError,
        "create_or_update_scale_set": WorkerCrashedError,  # a PUT must not create it again
        "start_os_upgrade": WorkerCrashedError,
        "cause": "RuntimeError('fleet adapter bug')",
        "log unchanged": True,  # nothing written over the set's history
    }


async def _crash_and_look(w: World, monkeypatch: pytest.MonkeyPatch, seen: dict[str, Any]) -> None:
    await w.create(spec("web", 4))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("fleet adapter bug")

    monkeypatch.setattr(w.fleet, "reimage", broken)
    await w.publish("1.1.0", boot_seconds=60)
    seen["wait_for_upgrade"] = await _error(lambda: w.engine.wait_for_upgrade(SUB, RG, "web"))
    try:
        w.engine.scale_set(SUB, RG, "web")
    except Exception as exc:
        seen["scale_set"] = type(exc)
        seen["cause"] = repr(exc.__cause__)
    head = await w.store.head()
    create = w.engine.create_or_update_scale_set
    seen["create_or_update_scale_set"] = await _error(lambda: create(spec("web", 4)))
    seen["start_os_upgrade"] = await _error(lambda: w.engine.start_os_upgrade(SUB, RG, "web"))
    seen["log unchanged"] = await w.store.head() == head


async def _error(call: Callable[[], Awaitable[object]]) -> type[BaseException] | None:
    try:
        await call()
    except Exception as exc:
        return type(exc)
    return None

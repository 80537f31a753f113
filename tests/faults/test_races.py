"""Commands racing a DELETE of one scale set: every one is answered, the clock never wedges.

The engine-level tests order the race explicitly (every command is in the worker's inbox
before the worker runs the first), so they hit the worst case every time. The HTTP test
sends real concurrent requests to a real server on a socket, many rounds, and checks that
nothing answers 500, nothing hangs, the set ends in a state the log agrees with, and the
virtual clock still advances afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api.errors import from_domain
from engine.domain.events import (
    DOMAIN_EVENTS,
    LeaseAcquired,
    ScaleSetCreated,
    ScaleSetDeleted,
    ScaleSetModelUpdated,
)
from engine.domain.grouping import decode_all
from engine.domain.scale_set import OperationNotAllowedError
from engine.runtime.engine import (
    CommandConflictError,
    NotOwnedHereError,
    ScaleSetNotFoundError,
    WorkerCrashedError,
)
from events import Fence, Metadata
from tests.api import live as api
from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, TOKEN, LiveServer, live_server, vmss_path
from tests.engine.harness import RG, SUB, World, spec, world
from tests.engine.test_shared_log import Cluster

DEADLINE_S = 10.0  # generous: the machine is shared; a hang never ends at all
ANSWERS = (ScaleSetNotFoundError, OperationNotAllowedError, NotOwnedHereError)


async def _outcome(call: Awaitable[Any]) -> object:
    """The call's result, or the type of the ARM-mapped refusal it raised."""
    try:
        return await call
    except ANSWERS as exc:
        return type(exc)


async def _race(w: World, *calls: Awaitable[Any]) -> list[object]:
    """Run ``calls`` at once; every one must finish before the deadline."""
    return await asyncio.wait_for(asyncio.gather(*(_outcome(c) for c in calls)), DEADLINE_S)


async def _set_events(w: World, name: str) -> list[object]:
    stream = f"vmss-{SUB}/{RG}/{name}".lower()
    return [e for r in await w.store.read_stream(stream) for e in decode_all(r)]


async def test_commands_queued_behind_a_delete_are_answered_and_the_clock_advances() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("web", 4))
        engine = w.engine
        bigger = spec("web", 6)
        outcomes = await _race(
            w,
            engine.delete_scale_set(SUB, RG, "web"),
            engine.create_or_update_scale_set(bigger),  # queued as an update, then re-created
            engine.start_os_upgrade(SUB, RG, "web"),
            engine.cancel_upgrade(SUB, RG, "web"),
            engine.delete_scale_set(SUB, RG, "web"),
        )
        assert outcomes[0] is None  # the first delete ran first
        assert outcomes[1] is True  # the PUT found the set gone and created it again
        for outcome in outcomes[2:]:
            assert outcome in (None, ScaleSetNotFoundError, OperationNotAllowedError) or (
                isinstance(outcome, str)
            ), outcome
        await asyncio.wait_for(w.clock.advance(3600), DEADLINE_S)  # the clock is not wedged
        events = await _set_events(w, "web")
        live = not isinstance(events[-1], ScaleSetDeleted)
        if live:  # whatever came last, the worker and the log agree
            state = await engine.scale_set_state(SUB, RG, "web")
            assert state.spec is not None and state.spec.capacity == 6
        else:
            assert engine.scale_sets() == []


async def test_a_put_racing_a_delete_leaves_the_log_and_the_engine_in_agreement() -> None:
    async with world(autojump=False) as w:
        engine = w.engine
        for round_ in range(20):
            await w.create(spec("web", 3))
            capacity = 4 + round_ % 3
            first, second = (
                (engine.delete_scale_set(SUB, RG, "web"),
                 engine.create_or_update_scale_set(spec("web", capacity)))
                if round_ % 2 == 0 else
                (engine.create_or_update_scale_set(spec("web", capacity)),
                 engine.delete_scale_set(SUB, RG, "web"))
            )  # fmt: skip
            await _race(w, first, second)
            await asyncio.wait_for(w.clock.advance(60), DEADLINE_S)
            last = (await _set_events(w, "web"))[-1]
            if isinstance(last, ScaleSetDeleted):
                assert engine.scale_sets() == [], round_
            else:
                assert isinstance(last, ScaleSetCreated | ScaleSetModelUpdated), last
                state = await engine.scale_set_state(SUB, RG, "web")
                assert state.spec == spec("web", capacity), round_
        await w.create(spec("web", 5))  # a set re-created after all that works
        await engine.start_os_upgrade(SUB, RG, "web")
        done = await w.finish("web")
        assert done.status.value == "Completed"


# -- over HTTP ---------------------------------------------------------------------------


def _body(capacity: int) -> dict[str, Any]:
    _, _, body = valid_bodies()["put"]
    return {**body, "sku": {**body["sku"], "capacity": capacity}}


async def _requests(
    http: httpx.AsyncClient, name: str, capacity: int, turn: int
) -> list[httpx.Response]:
    """The six racing requests, sent in an order that rotates with ``turn``."""
    q = {"api-version": API}
    path = vmss_path(name)
    calls = [
        http.delete(path, params=q),
        http.put(path, params=q, json=_body(capacity)),
        http.post(vmss_path(name, "/osRollingUpgrade"), params=q),
        http.post(vmss_path(name, "/rollingUpgrades/cancel"), params=q),
        http.patch(path, params=q, json={"sku": {"capacity": capacity}}),
        http.delete(path, params=q),
    ]
    order = calls[turn % len(calls) :] + calls[: turn % len(calls)]
    return await asyncio.wait_for(asyncio.gather(*order), DEADLINE_S)


def _stream(live: LiveServer, name: str) -> list[object]:
    assert live.server.service is not None
    store = live.server.service.store
    records = live.call(store.read_stream(f"vmss-{api.SUB}/{api.RG}/{name}".lower()))
    return [e for r in records for e in decode_all(r)]


async def _rounds(live: LiveServer, rounds: int) -> list[int]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    q = {"api-version": API}
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(
        base_url=live.url, headers=headers, timeout=DEADLINE_S, limits=limits
    ) as http:
        for round_ in range(rounds):
            name = "race"
            put = await http.put(vmss_path(name), params=q, json=_body(3))
            assert put.status_code in (200, 201), put.text
            capacity = 4 + round_ % 3
            answers = await _requests(http, name, capacity, round_)
            statuses += [a.status_code for a in answers]
            assert all(a.status_code < 500 for a in answers), [a.text for a in answers]
            advance = await http.post("/admin/clock/advance", json={"seconds": 30})
            assert advance.status_code == 200, advance.text
            got = await http.get(vmss_path(name), params=q)
            last = _stream(live, name)[-1]
            if isinstance(last, ScaleSetDeleted):
                assert got.status_code == 404, got.text
            else:
                assert got.status_code == 200, got.text
                assert got.json()["sku"]["capacity"] in (3, capacity), got.text
                await http.post(vmss_path(name, "/rollingUpgrades/cancel"), params=q)
                await http.post("/admin/clock/advance", json={"seconds": 3600})
    return statuses


def test_delete_put_start_cancel_races_over_http_answer_every_request(tmp_path: Path) -> None:
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        statuses = asyncio.run(_rounds(live, 18))
        assert all(s < 500 for s in statuses)
        assert {200, 202, 204, 409} & set(statuses)  # the races really happened
        live.advance(0)  # the clock still advances once the races are over
        response = live.http.put(vmss_path("after"), params={"api-version": API}, json=_body(2))
        assert response.status_code == 201, response.text


# -- whatever stops the worker, queued commands are answered ---------------------------


class _Gate:
    """Holds the worker inside a fleet call until the test lets it go (or fail)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    async def apply(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        raise AssertionError("the test never lets a gated call succeed")


async def _worker_held_in_the_fleet(w: World, gate: _Gate) -> None:
    await w.create(spec("web", 2))
    await w.publish("1.1.0")
    w.fleet.apply = gate.apply  # type: ignore[method-assign]
    await w.engine.start_os_upgrade(SUB, RG, "web")
    await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)


def _queued(w: World) -> list[asyncio.Task[object]]:
    """Commands that wait in the inbox of the held worker."""
    engine = w.engine
    calls = [
        engine.cancel_upgrade(SUB, RG, "web"),
        engine.create_or_update_scale_set(spec("web", 2)),
        engine.delete_scale_set(SUB, RG, "web"),
    ]
    return [asyncio.ensure_future(_outcome(call)) for call in calls]


async def test_commands_queued_on_a_worker_that_crashes_get_409_not_a_hang() -> None:
    answers: list[BaseException | None] = []
    with pytest.raises(WorkerCrashedError):  # the engine reports the crash when it stops
        await _crash_with_commands_queued(answers)
    assert len(answers) == 4, "a command queued on a crashed worker was never answered"
    assert all(isinstance(a, CommandConflictError) for a in answers[:3]), answers
    # one sent after the crash: refused as a conflict too, never a 500
    later = from_domain(answers[3]) if isinstance(answers[3], Exception) else None
    assert later is not None and (later.status, later.code) == (409, "Conflict"), answers[3]


async def _crash_with_commands_queued(answers: list[BaseException | None]) -> None:
    gate = _Gate()
    async with world(autojump=False) as w:
        await _worker_held_in_the_fleet(w, gate)
        queued = _queued(w)
        await asyncio.sleep(0)  # each reaches the inbox
        gate.error = RuntimeError("fleet adapter bug")
        gate.release.set()
        done, _ = await asyncio.wait(queued, timeout=DEADLINE_S)
        answers += [task.exception() for task in done]
        try:
            await w.engine.cancel_upgrade(SUB, RG, "web")
        except Exception as exc:
            answers.append(exc)
        else:
            answers.append(None)
        await asyncio.wait_for(w.clock.advance(60), DEADLINE_S)


async def test_commands_queued_when_the_engine_stops_are_answered() -> None:
    gate = _Gate()
    async with world(autojump=False) as w:
        await _worker_held_in_the_fleet(w, gate)
        queued = _queued(w)
        await asyncio.sleep(0)
        await asyncio.wait_for(w.engine.stop(), DEADLINE_S)
        done, _ = await asyncio.wait(queued, timeout=DEADLINE_S)
        assert done == set(queued), "a command queued at shutdown was never answered"
        for task in queued:
            assert isinstance(task.exception(), CommandConflictError), task


async def test_commands_queued_on_a_worker_whose_lease_is_lost_go_to_the_new_owner() -> None:
    cluster = Cluster()
    await cluster.start(1, sets=1, capacity=2)
    engine = cluster.engines[0]
    await cluster.run_until(lambda: _true(engine.drives(f"{SUB}/{RG}/set0".lower())))
    gate = _Gate()
    engine.fleet.apply = gate.apply  # type: ignore[attr-defined]
    await cluster.publish("1.1.0")
    await engine.start_os_upgrade(SUB, RG, "set0")
    await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
    queued = asyncio.ensure_future(_outcome(engine.cancel_upgrade(SUB, RG, "set0")))
    await asyncio.sleep(0)
    await engine._drop(f"{SUB}/{RG}/set0".lower())  # what the lease loop does on a lost lease
    done, _ = await asyncio.wait({queued}, timeout=DEADLINE_S)
    assert done == {queued}, "a command queued on a worker that lost its lease hung"
    assert queued.result() is NotOwnedHereError  # the API forwards it to the new owner
    gate.release.set()
    await cluster.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_command_fenced_off_by_a_newer_lease_goes_to_the_new_owner_not_500() -> None:
    cluster = Cluster()
    await cluster.start(1, sets=1, capacity=2)
    engine = cluster.engines[0]
    key = f"{SUB}/{RG}/set0".lower()
    await cluster.run_until(lambda: _true(engine.drives(key)))
    worker = engine.scale_set(SUB, RG, "set0")
    assert worker.token is not None
    newer = LeaseAcquired("engine-elsewhere", worker.token + 1)  # what a new owner writes
    new = DOMAIN_EVENTS.to_new_event(newer, metadata=Metadata(), occurred_at=cluster.clock.now())
    await cluster.store.append(f"vmss-{key}", [new], None, fence=Fence(key, worker.token + 1))
    outcome = await asyncio.wait_for(_outcome(engine.start_os_upgrade(SUB, RG, "set0")), 10)
    assert outcome is NotOwnedHereError  # the API forwards it to whoever holds the lease
    await cluster.stop()


async def test_a_read_waiting_for_a_worker_that_dies_while_loading_is_answered() -> None:
    gate = _Gate()
    answers: list[object] = []
    with pytest.raises(WorkerCrashedError):  # the engine reports the crash when it stops
        await _read_while_the_worker_dies_loading(gate, answers)
    assert len(answers) == 1, "a read waiting for a worker that never loaded hung"
    assert getattr(answers[0], "spec", None) == spec("web", 2)  # folded from the log


async def _read_while_the_worker_dies_loading(gate: _Gate, answers: list[object]) -> None:
    async with world(autojump=False) as w:
        provision = w.fleet.provision
        calls = 0

        async def second_call_held(*args: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:  # the create's own call
                return await provision(*args)
            await gate.apply()  # the worker's load: held, then it fails

        w.fleet.provision = second_call_held  # type: ignore[method-assign]
        await w.create(spec("web", 2))
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
        read = asyncio.ensure_future(w.engine.scale_set_state(SUB, RG, "web"))
        await asyncio.sleep(0)  # the read waits for the worker to load
        gate.error = RuntimeError("the fleet is unreachable")
        gate.release.set()
        done, _ = await asyncio.wait({read}, timeout=DEADLINE_S)
        answers += [task.result() for task in done]

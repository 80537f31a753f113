"""The per-scale-set worker: the only place where decisions meet side effects.

One asyncio task per scale set folds its streams, asks the pure deciders what to do,
appends their events, and carries out intents (reimage, restore) through the fleet
adapter, recording each result as an event. Commands from the embedding API arrive in
its inbox, so everything touching one scale set happens in one sequence.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from engine.domain.catalog import Catalog
from engine.domain.events import (
    DOMAIN_EVENTS,
    InstanceReimaged,
    InstanceReimageFailed,
    InstanceReimageStarted,
    InstanceRollbackFailed,
    InstanceRollbackStarted,
    InstanceRolledBack,
    LeaseAcquired,
    ScaleSetUpgradeFinished,
    scale_set_stream,
    upgrade_stream,
)
from engine.domain.grouping import pack
from engine.domain.model import Health, ImageReference, ScaleSetSpec, StartedBy
from engine.domain.scale_set import (
    EngineSettings,
    ScaleSetState,
    build_request,
    schedule_automatic,
    start_upgrade,
)
from engine.domain.upgrade import UpgradeState, decide
from engine.runtime.clock import EngineClock
from engine.runtime.fleet import (
    BatchFleet,
    Fleet,
    HealthForecast,
    Reimage,
    ReimageOutcome,
    Restore,
    RestoreOutcome,
)
from engine.runtime.reimaging import carry_out
from engine.runtime.slots import UpgradeSlots
from events import EventStore, Fence, Metadata, RecordedEvent, StoreUnavailableError

log = structlog.get_logger("osupgrade.worker")

Command = Callable[["ScaleSetWorker"], Awaitable[Any]]


class WorkerGoneError(RuntimeError):
    """The worker stopped before it answered the command (deleted, crashed, lease lost,
    cancelled): the caller asks the engine again who drives the scale set now."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the worker of scale set {key} stopped before it ran the command")
        self.key = key


@dataclass
class _Request:
    command: Command
    reply: asyncio.Future[Any]


@dataclass
class WorkerContext:
    """What every worker shares: store, fleet, clock, catalog, settings, slots."""

    store: EventStore
    fleet: Fleet
    clock: EngineClock
    catalog: Catalog
    settings: EngineSettings
    slots: UpgradeSlots
    on_change: Callable[[str], None] = field(default=lambda key: None)
    engine_id: str | None = None  # set when engines share the log (leases)


class ScaleSetWorker:
    """Drives one scale set: its automatic schedule, its upgrades, its commands."""

    def __init__(self, ctx: WorkerContext, key: str, token: int | None = None) -> None:
        self.ctx = ctx
        self.key = key
        self.token = token  # the lease's fencing token, when engines share the log
        self._fence = None if token is None else Fence(key, token)
        self._signature = None if token is None else (ctx.engine_id or "", token)
        self.stream = scale_set_stream(key)
        self.state = ScaleSetState()
        self.upgrade: UpgradeState | None = None
        self.upgrade_history: dict[str, UpgradeState] = {}  # finished here, by id
        self.loaded = asyncio.Event()  # set once the streams have been folded
        self._inflight: list[asyncio.Future[list[int]]] = []
        self._append_error: BaseException | None = None
        self.progressed = False  # an append committed after loading: the log took writes
        self._durable = asyncio.Event()  # set while nothing appended is uncommitted
        self._durable.set()
        self._inbox: deque[_Request] = deque()
        self._current: _Request | None = None  # the command running now
        self._closed = False  # stopped: nothing submitted from now on will run
        self._stopped = asyncio.Event()
        self._wake = ctx.clock.signal()
        self._due: datetime | None = None  # the instant the last timed wait was for
        self._forecast = ctx.fleet if isinstance(ctx.fleet, HealthForecast) else None
        self._batch = ctx.fleet if isinstance(ctx.fleet, BatchFleet) else None
        self._log = log.bind(scale_set=key)

    # -- commands ------------------------------------------------------------------

    async def submit(self, command: Command) -> Any:
        """Run ``command`` inside the worker's sequence and return its result.

        Raises ``WorkerGoneError`` if the worker stops before it has answered.
        """
        if self._closed:
            raise WorkerGoneError(self.key)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.append(_Request(command, reply))
        self._wake.set()
        return await reply

    def close(self) -> None:
        """The worker's task has ended: answer every command it will never run.

        Called once the task is done (a done callback, so whatever else reacts to the
        task's end has run before a caller hears ``WorkerGoneError`` and looks again).
        Idempotent; safe for a task that was cancelled before it ever ran.
        """
        self._closed = True
        self._stopped.set()
        unanswered = [self._current, *self._inbox] if self._current else list(self._inbox)
        self._inbox.clear()
        self._current = None
        for request in unanswered:
            if not request.reply.done():
                request.reply.set_exception(WorkerGoneError(self.key))

    @property
    def closed(self) -> bool:
        """True once the worker has stopped for good."""
        return self._closed

    async def ready(self) -> None:
        """Wait until the worker has loaded; ``WorkerGoneError`` if it stops first."""
        if not self.loaded.is_set() and not self._closed:
            loaded = asyncio.ensure_future(self.loaded.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
            loaded.cancel()
            stopped.cancel()
        if not self.loaded.is_set():
            raise WorkerGoneError(self.key)

    def nudge(self) -> None:
        """Ask the worker to look again (e.g. a new image version was published)."""
        self._wake.set()

    # -- appending -----------------------------------------------------------------

    async def append_set(self, *events: object, actor: str = "Platform") -> None:
        """Append to the scale set stream and fold the events in."""
        await self._append(self.stream, events, self.state.version, self.state, actor)

    async def append_upgrade(self, *events: object, actor: str = "Platform") -> None:
        """Append to the active upgrade's stream and fold the events in."""
        assert self.upgrade is not None and self.upgrade.request is not None
        stream = upgrade_stream(self.upgrade.request.upgrade_id)
        await self._append(stream, events, self.upgrade.version, self.upgrade, actor)

    async def _append(
        self,
        stream: str,
        events: Sequence[object],
        expected: int | None,
        target: ScaleSetState | UpgradeState,
        actor: str,
    ) -> None:
        """Queue the events for the group commit and fold them in at once.

        The commit is awaited later, in ``flush``: before any side effect, before a
        command is answered and before the worker waits. Consecutive decisions of one
        step thus share one commit, and the log still holds every intent before the
        fleet is touched. (The worker is the only writer of its streams, so the
        expected versions it computes ahead hold; if one did not, the worker stops.)
        """
        now = self.ctx.clock.now()
        meta = Metadata(correlation_id=self.key, actor=actor, fence=self._signature)
        stored = pack(events)
        new = [DOMAIN_EVENTS.to_new_event(e, metadata=meta, occurred_at=now) for e in stored]
        append = self.ctx.store.append(stream, new, expected, fence=self._fence)
        future = asyncio.ensure_future(append)
        future.add_done_callback(self._committed)
        self._inflight.append(future)
        self._durable.clear()
        for event in events:  # the decided events themselves: no re-decoding of groups
            target.apply(event, now)
        target.version += len(stored) - len(events)  # the stream counts records
        self._log.debug("decided", stream=stream, types=[n.type for n in new])

    async def flush(self) -> None:
        """Wait until everything appended so far is committed; raise if an append failed."""
        pending = list(self._inflight)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._append_error is not None:
            raise self._append_error

    def _committed(self, future: asyncio.Future[list[int]]) -> None:
        # Each future leaves the in-flight list only here, when it is done, so
        # "nothing in flight" really means "everything decided is in the log".
        self._inflight.remove(future)
        if future.cancelled():
            self._append_error = self._append_error or asyncio.CancelledError()
        elif future.exception() is not None:
            self._append_error = self._append_error or future.exception()
            self._wake.set()  # stop now: the fold is ahead of the log (see ``step``)
        else:
            self.progressed = self.progressed or self.loaded.is_set()
            # Every later line of this worker says how far its log had got.
            self._log = self._log.bind(position=future.result()[-1])
            self._log.debug("committed")
        if not self._inflight:
            self._durable.set()
        self.ctx.on_change(self.key)

    async def durable(self) -> None:
        """Wait until everything the worker has decided so far is in the log."""
        while not self._durable.is_set():
            await self._durable.wait()

    # -- the loop ------------------------------------------------------------------

    async def load(self) -> None:
        """Fold the scale set stream and, if one is active, its upgrade."""
        self.state = await read_scale_set(self.ctx.store, self.key)
        if self.state.spec is not None:
            await self.ctx.fleet.provision(self.state.spec, self.state.instance_versions)
        active = self.state.active_upgrade
        if active is not None:
            self._bind_upgrade(active.upgrade_id)
            self.upgrade = await self.read_upgrade(active.upgrade_id)
            if self.upgrade.request is None:  # crashed between the two appends: redo it
                self.upgrade = UpgradeState()
                request = build_request(self.state, active, self.ctx.settings)
                await self._append(
                    upgrade_stream(active.upgrade_id), [request], 0, self.upgrade, "Platform"
                )

    async def _take_over(self) -> None:
        """With a lease: fence off every earlier owner before reading anything.

        Once ``scaleset.lease_acquired`` with our token is committed, the store refuses
        the older tokens, so the streams ``load`` reads next cannot grow behind our back.
        """
        if self.token is None or self.ctx.engine_id is None:
            return
        marker = LeaseAcquired(self.ctx.engine_id, self.token)
        await self._append(self.stream, [marker], None, ScaleSetState(), "Platform")
        await self.flush()
        self._log.info("lease acquired", token=self.token)

    async def read_upgrade(self, upgrade_id: str) -> UpgradeState:
        """Fold one upgrade stream."""
        state = UpgradeState()
        records: list[RecordedEvent] = await self.ctx.store.read_stream(upgrade_stream(upgrade_id))
        for recorded in records:
            state.apply(DOMAIN_EVENTS.decode(recorded), recorded.occurred_at)
        return state

    async def finished_upgrade(self, upgrade_id: str) -> UpgradeState:
        """A finished upgrade: as this worker ended it, or folded from the log.

        Call after ``durable()``: the worker's own state then equals the log's fold.
        """
        known = self.upgrade_history.get(upgrade_id)
        return known if known is not None else await self.read_upgrade(upgrade_id)

    async def run(self, participation: AbstractAsyncContextManager[None] | None = None) -> None:
        """Work until the scale set is deleted (or the task is cancelled)."""
        try:
            await self._run(participation)
        except StoreUnavailableError as exc:  # the log is away: the engine restarts us
            self._refuse_queued(exc)  # they get 503 (retry), not a wait for ever
            raise

    def _refuse_queued(self, error: BaseException) -> None:
        while self._inbox:
            reply = self._inbox.popleft().reply
            if not reply.done():
                reply.set_exception(error)

    async def _run(self, participation: AbstractAsyncContextManager[None] | None) -> None:
        async with participation or self.ctx.clock.participant():
            structlog.contextvars.bind_contextvars(scale_set=self.key)
            await self._take_over()
            await self.load()
            await self.flush()
            self.loaded.set()
            self.ctx.on_change(self.key)
            while not self.state.deleted:
                await self.step()
            await self.flush()

    async def step(self) -> None:
        """Do one thing: a command, an upgrade step, a schedule, or wait.

        A failed append ends the worker here, before it acts on a fold the log does
        not have; the engine starts it again from the log.
        """
        if self._append_error is not None:
            raise self._append_error
        self._wake.clear()
        if self._inbox:
            await self._handle(self._inbox.popleft())
            return
        unfinished = self.state.reimages.pending()  # intents a crash left without results
        if unfinished:
            await carry_out(self, unfinished[0])
            return
        if self.upgrade is not None:
            await self._step_upgrade()
            return
        if await self._maybe_schedule() or await self._maybe_start_platform_upgrade():
            return
        due = self.state.scheduled.due_at if self.state.scheduled is not None else None
        await self._wait(due)

    async def _wait(self, until: datetime | None) -> None:
        # Waiting on a timer does not need the commit: appends commit in order, and
        # whatever a crash loses is decided again from the log at the same times. Not
        # waiting lets the commits of many instants share one group commit.
        if until is None:
            await self.flush()
            await self._wake.wait()
        else:
            await self.ctx.clock.sleep_until(until, self._wake)
            self._due = None if self._wake.is_set() else until  # woken by the time, not early

    def _decision_time(self) -> datetime:
        """The instant to decide at: the one slept until, if the worker woke for it.

        The decider observes health only at grid instants (so a restarted worker
        observes at the same ones). A virtual clock wakes exactly on them; a real clock
        wakes a little after, and deciding at that later instant would find it off the
        grid and wait for the next point, forever.
        """
        now = self.ctx.clock.now()
        due, self._due = self._due, None
        return due if due is not None and due <= now else now

    async def _handle(self, request: _Request) -> None:
        self._current = request
        try:
            result = await request.command(self)
            await self.flush()
        except Exception as exc:
            if self._append_error is not None:
                # The log refused or lost an append: the worker stops here, and the
                # caller hears WorkerGoneError and asks again who drives the set.
                raise
            if not request.reply.done():  # the command's own refusal, for its caller
                request.reply.set_exception(exc)
        else:
            if not request.reply.done():
                request.reply.set_result(result)
        self._current = None

    async def _maybe_schedule(self) -> bool:
        spec = self.state.spec
        if spec is None:
            return False
        catalog = self.ctx.catalog
        latest = catalog.latest(spec.image, spec.location)
        available = (
            None if latest is None else catalog.available_at(spec.image, spec.location, latest)
        )
        timer = schedule_automatic(
            self.state, latest, self.ctx.clock.now(), self.ctx.settings, available
        )
        if timer is None:
            return False
        await self.append_set(timer)
        self._log.info(
            "automatic upgrade scheduled", version=timer.target_version, due_at=str(timer.due_at)
        )
        return True

    async def _maybe_start_platform_upgrade(self) -> bool:
        scheduled = self.state.scheduled
        if scheduled is None or scheduled.due_at > self.ctx.clock.now():
            return False
        spec = self.state.spec
        assert spec is not None
        latest = self.ctx.catalog.latest(spec.image, spec.location) or scheduled.target_version
        await self.begin_upgrade(StartedBy.PLATFORM, latest)
        return True

    async def begin_upgrade(self, started_by: StartedBy, target_version: str) -> str:
        """Record a new upgrade (refused while one runs) and make it the active one."""
        started = start_upgrade(self.state, started_by, target_version)
        actor = started_by.value
        await self.append_set(started, actor=actor)
        self._bind_upgrade(started.upgrade_id)
        self.upgrade = UpgradeState()
        request = build_request(self.state, started, self.ctx.settings)
        await self._append(upgrade_stream(started.upgrade_id), [request], 0, self.upgrade, actor)
        self._log.info(
            "upgrade started", upgrade_id=started.upgrade_id, by=actor, target=target_version
        )
        return started.upgrade_id

    # -- upgrades ------------------------------------------------------------------

    async def _step_upgrade(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None and upgrade.request is not None
        if upgrade.finished:
            await self._finish_upgrade(upgrade)
            return
        upgrade_id = upgrade.request.upgrade_id
        await self.ctx.slots.acquire(upgrade_id)
        effects = upgrade.pending_effects()
        if effects:
            await self._carry_out(effects)
            return
        await self._decide_now(upgrade)

    async def _decide_now(self, upgrade: UpgradeState) -> None:
        """Decide until nothing more is due at this instant, then wait.

        Consecutive decisions of one instant (instances healthy, then the batch done,
        then the next batch) share one health reading: time stands still while the
        worker is busy, so a second reading would only repeat the first. Intents to
        carry out, a command in the inbox or the end of the upgrade go back to ``step``.
        """
        spec = self.state.spec
        assert spec is not None
        now = self._decision_time()
        health: dict[str, Health] = {}
        steady = None
        while True:
            needed = upgrade.health_needed()
            if any(i not in health for i in needed):  # one reading of all it needs
                health = await self.ctx.fleet.read_health(spec, needed)
                forecast = self._forecast
                steady = forecast.steady_until(spec, needed) if forecast is not None else None
            decision = decide(upgrade, health, now, steady)
            if not decision.events:
                break
            await self.append_upgrade(*decision.events)
            if upgrade.finished or self._inbox or upgrade.pending_effects():
                return
        if not self._inbox:
            await self._wait(decision.wait_until)

    async def _carry_out(
        self, effects: Sequence[InstanceReimageStarted | InstanceRollbackStarted]
    ) -> None:
        """Run the recorded intents against the fleet, then record every result."""
        await self.flush()  # intents are durable before the fleet is touched
        spec = self.state.spec
        upgrade = self.upgrade
        assert spec is not None and upgrade is not None and upgrade.request is not None
        upgrade_id = upgrade.request.upgrade_id
        target = upgrade.request.target
        operations = [_operation(effect, upgrade_id, target) for effect in effects]
        if self._batch is not None:  # one call for the whole batch
            outcomes = await self._batch.apply(spec, operations)
        else:  # one call per instance, all at once
            fleet = self.ctx.fleet
            outcomes = await asyncio.gather(*(_one(fleet, spec, op) for op in operations))
        results = (_result(op, out) for op, out in zip(operations, outcomes, strict=True))
        await self.append_upgrade(*results)

    async def _finish_upgrade(self, upgrade: UpgradeState) -> None:
        assert upgrade.request is not None
        versions = dict(self.state.instance_versions)
        for instance_id, progress in upgrade.instances.items():
            versions[instance_id] = progress.version
        left_failed = tuple(i for i, p in upgrade.instances.items() if p.failed_extensions)
        finished = ScaleSetUpgradeFinished(
            upgrade.request.upgrade_id, upgrade.status.value, versions, left_failed
        )
        await self.append_set(finished)
        self.ctx.slots.release(upgrade.request.upgrade_id)
        self.upgrade_history[upgrade.request.upgrade_id] = upgrade
        self._log.info(
            "upgrade finished",
            upgrade_id=upgrade.request.upgrade_id,
            status=upgrade.status.value,
            error=upgrade.error.code if upgrade.error else None,
        )
        self.upgrade = None
        self._bind_upgrade(None)

    def _bind_upgrade(self, upgrade_id: str | None) -> None:
        """Name the active upgrade in every log line of this worker (and of its fleet calls)."""
        if upgrade_id is None:
            self._log = self._log.unbind("upgrade_id")
            structlog.contextvars.unbind_contextvars("upgrade_id")
        else:
            self._log = self._log.bind(upgrade_id=upgrade_id)
            structlog.contextvars.bind_contextvars(upgrade_id=upgrade_id)


async def read_scale_set(store: EventStore, key: str) -> ScaleSetState:
    """Fold one scale set's stream as the log has it now."""
    state = ScaleSetState()
    for recorded in await store.read_stream(scale_set_stream(key)):
        state.apply(DOMAIN_EVENTS.decode(recorded), recorded.occurred_at)
    return state


def _operation(
    effect: InstanceReimageStarted | InstanceRollbackStarted,
    upgrade_id: str,
    target: ImageReference,
) -> Reimage | Restore:
    """The fleet call an intent asks for; its id makes a repeated call a no-op."""
    if isinstance(effect, InstanceReimageStarted):
        return Reimage(effect.instance_id, target, f"{upgrade_id}/{effect.instance_id}/reimage")
    op = f"{upgrade_id}/{effect.instance_id}/restore"
    return Restore(effect.instance_id, effect.to_version, op)


async def _one(
    fleet: Fleet, spec: ScaleSetSpec, op: Reimage | Restore
) -> ReimageOutcome | RestoreOutcome:
    if isinstance(op, Reimage):
        return await fleet.reimage(spec, op.instance_id, op.image, op.operation_id)
    return await fleet.restore(spec, op.instance_id, op.version, op.operation_id)


def _result(op: Reimage | Restore, outcome: ReimageOutcome | RestoreOutcome) -> object:
    """The event recording how a fleet call went."""
    if isinstance(op, Reimage):
        assert isinstance(outcome, ReimageOutcome)
        if outcome.ok:
            return InstanceReimaged(op.instance_id, op.image.version, outcome.failed_extensions)
        return InstanceReimageFailed(op.instance_id, outcome.error)
    if outcome.ok:
        return InstanceRolledBack(op.instance_id, op.version)
    return InstanceRollbackFailed(op.instance_id, outcome.error)

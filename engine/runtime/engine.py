"""The embedding API: ``async with Engine(store=..., fleet=..., clock=...) as engine``.

Typed methods for every command validate their input, then hand the work to the scale
set's worker, so a command and the rollout it affects never race. Read methods return
the state the workers folded from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import structlog

from engine.domain.catalog import Catalog
from engine.domain.events import (
    DOMAIN_EVENTS,
    CancelRequested,
    GalleryImageVersionPublished,
    GalleryImageVersionReplicated,
    ImageVersionPublished,
    InstancesApproved,
    ScaleSetCreated,
    ScaleSetDeleted,
    ScaleSetModelUpdated,
    SimulationProfile,
    catalog_stream,
    gallery_stream,
    scale_set_stream,
)
from engine.domain.model import (
    ScaleSetSpec,
    StartedBy,
    canonical_version,
    scale_set_key,
)
from engine.domain.scale_set import (
    EngineSettings,
    OperationNotAllowedError,
    ScaleSetState,
    manual_target,
)
from engine.domain.upgrade import Phase, UpgradeState
from engine.domain.validation import InvalidParameterError, validate_scale_set
from engine.runtime.clock import EngineClock, Participation, VirtualClock
from engine.runtime.fleet import Fleet, FleetWatch
from engine.runtime.reimaging import request_reimage
from engine.runtime.slots import UpgradeSlots
from engine.runtime.worker import ScaleSetWorker, WorkerContext, WorkerGoneError, read_scale_set
from engine.scaleout.leases import Holdings, Ownership
from events import (
    ConcurrencyError,
    EventStore,
    FencedError,
    Metadata,
    RecordedEvent,
    StoreFullError,
    StoreUnavailableError,
)

log = structlog.get_logger("osupgrade.engine")

_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){2}")
_CATALOG_TYPES = [
    "image.version_published",
    "gallery.version_published",
    "gallery.version_replicated",
]
_FOLLOWED = [*_CATALOG_TYPES, "scaleset.created", "scaleset.deleted"]
RESTART_MAX_S = 60  # longest pause before a worker stopped by an unreachable log restarts
ATTEMPTS = 3  # tries of a command whose worker stopped first, or of a publish that raced


Precondition = Callable[[ScaleSetState | None], None]  # raises to refuse a write


class ScaleSetNotFoundError(LookupError):
    """No scale set by that name (HTTP 404 ``ResourceNotFound``)."""


class NotOwnedHereError(RuntimeError):
    """The scale set exists but another engine sharing the log drives it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"scale set {key} is driven by another engine")
        self.key = key


class WorkerCrashedError(RuntimeError):
    """A scale set worker stopped with an unexpected error."""


class WorkerRestartingError(RuntimeError):
    """The log could not be reached (or is full); the scale set's worker restarts (retry)."""

    def __init__(self, key: str, cause: StoreUnavailableError | None = None) -> None:
        why = "full" if isinstance(cause, StoreFullError) else "unreachable"
        super().__init__(
            f"scale set {key}: the event log is {why}; its worker starts again once the "
            "log takes writes: retry"
        )
        self.key = key
        self.cause = cause


class CommandConflictError(RuntimeError):
    """The command met a concurrent change it could not be ordered after (the set's
    worker stopped before running it, or another writer won a race for the same
    stream): nothing was decided for it, and a retry sees the new state (HTTP 409)."""


class EngineStalledError(RuntimeError):
    """Waited for something that cannot happen: every worker is idle and no timer is due."""


@runtime_checkable
class SimulationControl(Protocol):
    """Implemented by fleets that simulate image behaviour (``SimulatedFleet``)."""

    def set_profile(self, version: str, profile: SimulationProfile) -> None:
        """Say how instances behave on ``version``."""
        ...


class Engine:
    """The orchestrator, embedded in the caller's event loop."""

    def __init__(
        self,
        *,
        store: EventStore,
        fleet: Fleet,
        clock: EngineClock,
        settings: EngineSettings | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.store = store
        self.ownership = ownership
        self.fleet = fleet
        self.clock = clock
        self.settings = settings or EngineSettings()
        self.catalog = Catalog()
        self._workers: dict[str, ScaleSetWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._create_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()  # this engine's publishes queue, not retry
        self._failures: list[BaseException] = []
        self._crashed: dict[str, BaseException] = {}  # scale set key -> why its worker died
        self._known: set[str] = set()  # live scale sets of the log, driven here or not
        self._restarting: dict[str, int] = {}  # key -> attempts, while the log is unreachable
        self._outages: dict[str, StoreUnavailableError] = {}  # key -> why it last restarted
        self._attempts: dict[str, int] = {}  # key -> restarts since it last committed
        self._last_read: dict[str, ScaleSetState] = {}  # last folds of sets not driven here
        self._background: list[asyncio.Task[None]] = []  # lease loop, log follower
        self._stopping = False
        self._ctx = WorkerContext(
            store, fleet, clock, self.catalog, self.settings,
            UpgradeSlots(clock, self.settings.max_concurrent_upgrades), self._notify,
            ownership.engine_id if ownership is not None else None,
        )  # fmt: skip
        if isinstance(fleet, FleetWatch):  # e.g. a forced health: the worker looks again
            fleet.watch(self._fleet_changed)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the catalog from the log, then start a worker per live scale set.

        With ``ownership``, workers start only for the scale sets this engine holds
        leases on, and the engine keeps following what other engines append.
        """
        async with self.clock.participant():
            head = await self.store.head()
            last_time = None
            async for page in self._scan(_FOLLOWED, up_to=head):
                for recorded in page:
                    last_time = recorded.occurred_at
                    self._apply_followed(DOMAIN_EVENTS.decode(recorded), recorded.occurred_at)
            tail = await self.store.read_all(after=max(0, head - 1), up_to=head)
            if tail:
                last_time = tail[-1].occurred_at
            if isinstance(self.clock, VirtualClock) and last_time is not None:
                self.clock.set_time(last_time)  # resume where the log left off
            if self.ownership is None:
                for key in self._known:
                    self._spawn(key)
            else:
                await self.ownership.board.add(self._known)
                self._background.append(asyncio.create_task(self._follow(head)))
                if self.ownership.claim:
                    self._background.append(asyncio.create_task(self._lease_loop()))
        log.info("engine started", scale_sets=len(self._known), shared=self.ownership is not None)

    async def _scan(self, types: list[str], up_to: int | None = None) -> Any:
        after = 0
        while True:
            page = await self.store.read_all(after=after, limit=5000, types=types, up_to=up_to)
            if not page:
                return
            yield page
            after = page[-1].position

    def _apply_followed(self, event: object, at: datetime) -> None:
        """Fold what every engine needs to know: the catalog and which sets exist."""
        if isinstance(event, ScaleSetCreated):
            self._known.add(event.spec.key)
        elif isinstance(event, ScaleSetDeleted):
            self._known.discard(event.key)
        else:
            self._apply_catalog(event, at)

    # -- sharing the log with other engines --------------------------------------------

    async def _follow(self, after: int) -> None:
        """Keep up with catalog changes and scale sets that other engines append."""
        assert self.ownership is not None
        while True:
            try:
                async for batch in self.store.subscribe(after=after, types=_FOLLOWED).batches():
                    await self._followed(batch)
                    after = batch[-1].position
            except Exception as exc:  # noqa: BLE001 - the log is unreachable: try again
                log.warning("following the log failed", after=after, error=repr(exc))
                # real seconds: the store's reconnects are, and this task holds no
                # engine time (it is not a participant of a virtual clock)
                await asyncio.sleep(self.ownership.renew_s)

    async def _followed(self, batch: list[RecordedEvent]) -> None:
        assert self.ownership is not None
        live: dict[str, bool] = {}  # key -> exists after this batch (a set may come back)
        for recorded in batch:
            event = DOMAIN_EVENTS.decode(recorded)
            self._apply_followed(event, recorded.occurred_at)
            if isinstance(event, ScaleSetCreated):
                live[event.spec.key] = True
            elif isinstance(event, ScaleSetDeleted):
                live[event.key] = False
            elif recorded.type in _CATALOG_TYPES:
                for worker in self._workers.values():
                    worker.nudge()
        await self.ownership.board.add([key for key, exists in live.items() if exists])
        await self.ownership.board.remove([key for key, exists in live.items() if not exists])

    async def _lease_loop(self) -> None:
        """Renew and claim leases every ``renew_s``; start and stop workers to match.

        Paced by ``Ownership.sleep`` it takes part in the engine clock (simulations);
        paced in real seconds (the default) it must not: lease expiry is real time,
        whatever the engine clock does.
        """
        own = self.ownership
        assert own is not None
        sleep = own.sleep or asyncio.sleep
        lost_at = None  # monotonic time after which unrenewed leases may be gone
        participation = self.clock.participant() if own.sleep else contextlib.nullcontext()
        joined = False  # the first step only announces this engine (see LeaseBoard)
        async with participation:
            while True:
                try:
                    holdings = await own.board.renew_and_claim(own.engine_id, claim=joined)
                    joined = True
                    lost_at = time.monotonic() + own.board.ttl_s - own.renew_s
                    await self._follow_holdings(holdings)
                except Exception as exc:  # noqa: BLE001 - whatever failed, retry next round
                    log.warning("lease step failed", error=repr(exc))
                    if lost_at is not None and time.monotonic() > lost_at:
                        await self._drop_all()  # others may own them by now
                await sleep(own.renew_s)

    async def _follow_holdings(self, holdings: Holdings) -> None:
        """Start workers for new leases, stop those whose lease was lost, shed surplus."""
        for key, worker in list(self._workers.items()):
            if holdings.held.get(key) != worker.token:
                log.warning("lease lost", scale_set=key, token=worker.token)
                await self._drop(key)
        for key, token in holdings.held.items():
            if key not in self._tasks and key not in self._crashed:
                self._spawn(key, token)
        surplus = len(holdings.held) - holdings.share
        if surplus > 0:
            idle = [k for k, w in self._workers.items() if w.upgrade is None and w.loaded.is_set()]
            shed = idle[:surplus]
            for key in shed:
                await self._drop(key)
            assert self.ownership is not None
            await self.ownership.board.release(self.ownership.engine_id, shed)
            if shed:
                log.info("leases released to other engines", count=len(shed))

    async def _drop(self, key: str) -> None:
        """Stop driving one scale set: stop its worker, let its appends finish."""
        task = self._tasks.get(key)
        worker = self._workers.pop(key, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if worker is not None:
            await worker.durable()
        self._notify(key)

    async def _drop_all(self) -> None:
        for key in list(self._workers):
            await self._drop(key)

    async def stop(self) -> None:
        """Stop every worker; raise ``WorkerCrashedError`` if any had crashed.

        With ``ownership`` the leases are released afterwards, so other engines take
        the scale sets over at their next lease step instead of after the TTL.
        """
        self._stopping = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self.ownership is not None:
            for worker in list(self._workers.values()):
                await worker.durable()
            if self.ownership.claim:
                try:
                    await self.ownership.board.leave(self.ownership.engine_id)
                except StoreUnavailableError as exc:  # they expire after the TTL instead
                    log.warning("leases not released", error=str(exc))
        if self._failures:
            raise WorkerCrashedError(
                f"{len(self._failures)} worker(s) crashed"
            ) from self._failures[0]

    def _spawn(self, key: str, token: int | None = None) -> ScaleSetWorker:
        self._crashed.pop(key, None)
        self._restarting.pop(key, None)
        worker = ScaleSetWorker(self._ctx, key, token)
        self._workers[key] = worker
        participation = self.clock.participant()  # counts now, before the task runs
        task = asyncio.create_task(worker.run(participation), name=f"worker:{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._worker_done(key, t))
        task.add_done_callback(lambda _: worker.close())  # answers what it never ran
        if isinstance(participation, Participation):
            task.add_done_callback(lambda _: participation.release())
        return worker

    def _worker_done(self, key: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, FencedError):
            # another engine took the lease over while this one was slow: not a crash
            log.warning("fenced off by a newer lease", scale_set=key, error=str(error))
            self._workers.pop(key, None)
        elif isinstance(error, StoreUnavailableError):
            self._restart_later(key, error)
        elif not task.cancelled() and task.exception() is not None:
            error = task.exception()
            assert error is not None
            self._failures.append(error)
            self._crashed[key] = error
            log.error("worker crashed", scale_set=key, error=repr(error))
        self._notify(key)

    def _restart_later(self, key: str, error: StoreUnavailableError) -> None:
        """The log was unreachable: start the worker again from the log after a pause.

        Nothing is lost: intents are committed before the fleet is touched, and a new
        worker folds what was committed and decides the rest again, as after a restart
        of the whole engine. The pause doubles per failed attempt (engine seconds, up to
        a minute) and resets once a worker has committed again: a full log can be read,
        so loading alone proves nothing. With leases, the lease loop starts it again at
        its next step instead.
        """
        worker = self._workers.get(key)
        if worker is not None and worker.loaded.is_set():
            self._last_read[key] = worker.state  # what reads answer until it is back
        progressed = worker is not None and worker.progressed
        attempt = 0 if progressed else self._attempts.get(key, 0) + 1
        self._restarting[key] = self._attempts[key] = attempt
        self._outages[key] = error
        delay = min(RESTART_MAX_S, 2**attempt)
        log.warning("log unreachable; worker restarts", scale_set=key, in_s=delay, error=str(error))
        if self.ownership is not None:
            return
        participation = self.clock.participant()

        async def restart() -> None:
            async with participation:
                await self.clock.sleep(delay)
                if key in self._restarting and key not in self._tasks:
                    self._spawn(key, None)

        task = asyncio.create_task(restart(), name=f"restart:{key}")
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    def _fleet_changed(self, key: str | None) -> None:
        """A machine changed without the engine: the workers concerned look again (a
        worker sleeping on the fleet's health forecast would otherwise miss it)."""
        workers = self._workers.values() if key is None else [self._workers.get(key)]
        for worker in workers:
            if worker is not None:
                worker.nudge()

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    # -- catalog ---------------------------------------------------------------------

    def _apply_catalog(self, event: object, at: datetime) -> None:
        published = ImageVersionPublished | GalleryImageVersionPublished
        again = isinstance(event, published) and self.catalog.has(event)  # first one counts
        self.catalog.apply(event, at)  # when it became available times the rollouts
        profile = getattr(event, "simulation", None)
        if again or not isinstance(profile, SimulationProfile):
            return
        if isinstance(self.fleet, SimulationControl):
            version = canonical_version(event.version)  # type: ignore[attr-defined]
            self.fleet.set_profile(version, profile)

    async def publish_image_version(
        self,
        location: str,
        publisher: str,
        offer: str,
        sku: str,
        version: str,
        simulation: SimulationProfile | None = None,
    ) -> None:
        """Publish a platform image version; automatic upgrades pick it up."""
        _check_version(version)
        for name, value in (
            ("location", location),
            ("publisher", publisher),
            ("offer", offer),
            ("sku", sku),
        ):
            if not value or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value):
                raise InvalidParameterError(name, f"{value!r} is not a valid {name}")
        event = ImageVersionPublished(
            location, publisher, offer, sku, version, simulation or SimulationProfile()
        )
        await self._publish(catalog_stream(location, publisher, offer, sku), event)

    async def publish_gallery_image_version(
        self,
        image_id: str,
        version: str,
        regions: Sequence[str],
        *,
        exclude_from_latest: bool = False,
        simulation: SimulationProfile | None = None,
    ) -> None:
        """Publish a gallery image version replicated to ``regions``."""
        _check_version(version)
        if not image_id.startswith("/"):
            raise InvalidParameterError("id", "a gallery image id starts with /subscriptions/")
        event = GalleryImageVersionPublished(
            image_id,
            version,
            tuple(regions),
            exclude_from_latest,
            simulation or SimulationProfile(),
        )
        await self._publish(gallery_stream(image_id), event)

    async def replicate_gallery_image_version(
        self, image_id: str, version: str, region: str
    ) -> None:
        """Record that a gallery version reached another region."""
        event = GalleryImageVersionReplicated(image_id, version, region)
        await self._append_catalog(gallery_stream(image_id), event, None)

    async def _publish(
        self, stream: str, event: ImageVersionPublished | GalleryImageVersionPublished
    ) -> None:
        """Append ``event`` unless the log already has its version: one event per version.

        The check reads the catalog stream itself (another engine on the log may have
        published since this one's fold), and the append expects the stream as read, so
        of concurrent publishes one appends and the others, on this server or another,
        fail the append, read again and find the version there.
        """
        async with self.clock.participant(), self._publish_lock:
            for _ in range(ATTEMPTS):
                logged = Catalog()
                records = await self.store.read_stream(stream)
                for recorded in records:
                    logged.apply(DOMAIN_EVENTS.decode(recorded))
                if logged.has(event):
                    raise OperationNotAllowedError(
                        f"image version {event.version} is already published"
                    )
                try:
                    await self._append_catalog(stream, event, len(records))
                except ConcurrencyError:
                    continue
                return
            raise CommandConflictError(f"{stream} kept changing; retry")

    async def _append_catalog(self, stream: str, event: object, expected: int | None) -> None:
        async with self.clock.participant():
            now = self.clock.now()
            new = DOMAIN_EVENTS.to_new_event(
                event, metadata=Metadata(actor="Platform"), occurred_at=now
            )
            await self.store.append(stream, [new], expected)
            self._apply_catalog(event, now)
            for worker in self._workers.values():
                worker.nudge()

    # -- scale sets ------------------------------------------------------------------

    async def create_or_update_scale_set(
        self,
        spec: ScaleSetSpec,
        precondition: Precondition | None = None,
        *,
        create: bool = True,
    ) -> bool:
        """Create the scale set or update its model; return True if it was created.

        An update whose worker stops first (the set was deleted meanwhile, say) is
        decided again: a PUT then creates the set anew, as it would have after the
        delete. With ``create=False`` (a PATCH) a missing set is ``ScaleSetNotFoundError``.
        ``precondition`` sees the current state (None when there is no such set) in the
        same step as the write and may refuse it by raising (``If-Match``).
        """
        validate_scale_set(spec)
        check = precondition or _unconditional
        async with self.clock.participant():
            for _ in range(ATTEMPTS):
                async with self._create_lock:
                    worker = self._live_worker(spec.key)
                    if worker is None and create:
                        check(None)
                        await self._create(spec)
                        return True
                if worker is None:
                    raise ScaleSetNotFoundError(f"scale set {spec.name} not found")
                try:
                    await worker.submit(lambda w: _update_model(w, spec, self.catalog, check))
                except WorkerGoneError:
                    self._after_worker_gone(spec.key)
                    continue
                return False
            raise CommandConflictError(f"scale set {spec.key} kept changing; retry")

    async def _create(self, spec: ScaleSetSpec) -> None:
        version = _resolve_version(spec, self.catalog)
        versions = dict.fromkeys(spec.instance_ids(), version)
        stream = scale_set_stream(spec.key)
        previous = self._tasks.get(spec.key)
        if previous is not None:  # a deleted set's worker still commits: let it finish
            await asyncio.wait({previous})
        expected = await self.store.stream_version(stream)
        if self.ownership is not None and expected:  # another engine may have just created it
            await self._check_not_created(spec.key)
        event = ScaleSetCreated(spec, versions)
        new = DOMAIN_EVENTS.to_new_event(
            event,
            metadata=Metadata(correlation_id=spec.key, actor="User"),
            occurred_at=self.clock.now(),
        )
        try:
            await self.store.append(stream, [new], expected)
        except ConcurrencyError:  # another engine on the log created (or deleted) it first
            await self._check_not_created(spec.key)
            raise CommandConflictError(f"scale set {spec.key} changed meanwhile; retry") from None
        await self.fleet.provision(spec, versions)
        self._known.add(spec.key)
        if self.ownership is None:
            self._spawn(spec.key)
        else:  # whichever engine claims it drives it (this one, maybe)
            await self.ownership.board.add([spec.key])
        log.info("scale set created", scale_set=spec.key, capacity=spec.capacity, version=version)

    async def _check_not_created(self, key: str) -> None:
        """Raise ``NotOwnedHereError`` if the log has ``key`` live: the PUT is an update
        for the engine that created it (forwarded to it, as any command would be)."""
        logged = await read_scale_set(self.store, key)
        if logged.spec is not None and not logged.deleted:
            raise NotOwnedHereError(key)

    async def delete_scale_set(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        precondition: Precondition | None = None,
    ) -> None:
        """Delete a scale set (refused while an upgrade runs, or by ``precondition``)."""
        key = scale_set_key(subscription, resource_group, name)
        deleted: list[ScaleSetWorker] = []

        async def delete(worker: ScaleSetWorker) -> None:
            (precondition or _unconditional)(worker.state)
            if worker.upgrade is not None:
                raise OperationNotAllowedError("a rolling upgrade is in progress; cancel it first")
            await worker.append_set(ScaleSetDeleted(key), actor="User")
            deleted.append(worker)

        await self._submit(key, delete)
        if deleted and self._workers.get(key) is deleted[0]:  # not a set created since
            self._workers.pop(key)

    # -- upgrades --------------------------------------------------------------------

    async def start_os_upgrade(self, subscription: str, resource_group: str, name: str) -> str:
        """Manual upgrade to the latest version (SPEC 2.1.2); returns the upgrade id."""

        async def start(worker: ScaleSetWorker) -> str:
            spec = worker.state.spec
            assert spec is not None
            latest = self.catalog.latest(spec.image, spec.location)
            target = manual_target(worker.state, latest)
            return await worker.begin_upgrade(StartedBy.USER, target)

        return str(await self._submit(scale_set_key(subscription, resource_group, name), start))

    async def cancel_upgrade(self, subscription: str, resource_group: str, name: str) -> str:
        """Cancel the running upgrade (SPEC 2.2.8); returns the id of the upgrade cancelled."""

        async def cancel(worker: ScaleSetWorker) -> str:
            upgrade = worker.upgrade
            if upgrade is None or upgrade.finished or upgrade.cancel_requested:
                raise OperationNotAllowedError("There is no ongoing Rolling Upgrade to cancel.")
            assert upgrade.request is not None
            await worker.append_upgrade(CancelRequested("User"), actor="User")
            return upgrade.request.upgrade_id

        return str(await self._submit(scale_set_key(subscription, resource_group, name), cancel))

    async def approve_upgrade(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        instance_ids: Iterable[str] | None = None,
    ) -> str:
        """Approve deferred instances (all pending ones when ``instance_ids`` is None).

        Returns the id of the upgrade the approval belongs to.
        """
        wanted = None if instance_ids is None else tuple(instance_ids)

        async def approve(worker: ScaleSetWorker) -> str:
            upgrade = worker.upgrade
            if upgrade is None or upgrade.finished:
                raise OperationNotAllowedError("There is no ongoing Rolling Upgrade to approve.")
            assert upgrade.request is not None
            pending = [i for i, p in upgrade.instances.items() if p.phase == Phase.PENDING]
            chosen = pending if wanted is None else [i for i in wanted if i in upgrade.instances]
            if wanted is not None and len(chosen) != len(wanted):
                raise InvalidParameterError(
                    "instanceIds", "names instances this upgrade does not touch"
                )
            await worker.append_upgrade(InstancesApproved(tuple(chosen)), actor="User")
            return upgrade.request.upgrade_id

        return str(await self._submit(scale_set_key(subscription, resource_group, name), approve))

    async def reimage(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        kind: str,
        instance_ids: Sequence[str] | None = None,
        exact_version: str | None = None,
    ) -> str:
        """Reimage instances (``kind`` ``reimage``) or give them the model's image
        (``manualupgrade``), all when ``instance_ids`` is None; returns the operation id."""
        key = scale_set_key(subscription, resource_group, name)

        async def command(worker: ScaleSetWorker) -> str:
            return await request_reimage(worker, self.catalog, kind, instance_ids, exact_version)

        return str(await self._submit(key, command))

    # -- reading ---------------------------------------------------------------------

    def scale_set(self, subscription: str, resource_group: str, name: str) -> ScaleSetWorker:
        """The worker (and through it the folded state) of a live scale set."""
        worker = self._live_worker(scale_set_key(subscription, resource_group, name))
        if worker is None:
            raise ScaleSetNotFoundError(f"scale set {name} not found")
        return worker

    def scale_sets(self) -> list[str]:
        """Keys of every live scale set (with ``ownership``: driven here or elsewhere)."""
        if self.ownership is not None:
            return sorted(self._known)
        return sorted(key for key, worker in self._workers.items() if not worker.state.deleted)

    async def scale_set_state(
        self, subscription: str, resource_group: str, name: str
    ) -> ScaleSetState:
        """A live scale set's state: its worker's fold, or the log's if another engine drives
        it or its worker stopped before it had loaded.

        Reads never need the owner: the log has everything (the fold may trail the owner's
        decisions by its commits).
        """
        key = scale_set_key(subscription, resource_group, name)
        try:
            worker = self.scale_set(subscription, resource_group, name)
            await worker.ready()
        except (NotOwnedHereError, WorkerGoneError, WorkerRestartingError):
            # driven elsewhere, or its worker stopped: the log (or its last fold) answers
            state = await self._read_from_log(key)
        else:
            return worker.state
        if state.spec is None or state.deleted:
            raise ScaleSetNotFoundError(f"scale set {name} not found") from None
        return state

    async def _read_from_log(self, key: str) -> ScaleSetState:
        """Fold ``key`` from the log; while the log is unreachable, its last fold (if any)."""
        try:
            state = await read_scale_set(self.store, key)
        except StoreUnavailableError:
            last = self._last_read.get(key)
            if last is None:
                raise
            return last
        self._last_read[key] = state
        return state

    async def loaded(self, worker: ScaleSetWorker) -> None:
        """Wait until ``worker`` has loaded. If it stopped first: ``WorkerCrashedError``,
        ``WorkerRestartingError`` (the log went away while it loaded), or
        ``WorkerGoneError`` (deleted, or its lease lost)."""
        try:
            await worker.ready()
        except WorkerGoneError:
            crash = self._crashed.get(worker.key)
            if crash is not None:
                raise WorkerCrashedError(f"the worker of {worker.key} crashed") from crash
            if worker.key in self._restarting:
                raise WorkerRestartingError(worker.key, self._outages.get(worker.key)) from None
            raise

    async def latest_upgrade(
        self, subscription: str, resource_group: str, name: str
    ) -> UpgradeState | None:
        """The running upgrade, or the last finished one, or None."""
        worker = self.scale_set(subscription, resource_group, name)
        if worker.upgrade is not None:
            return worker.upgrade
        if not worker.state.upgrades:
            return None
        return await worker.finished_upgrade(worker.state.upgrades[-1])

    async def wait_for_upgrade(
        self, subscription: str, resource_group: str, name: str, upgrade_id: str | None = None
    ) -> UpgradeState:
        """Wait (in engine time) until upgrade ``upgrade_id`` has finished, and return it.

        Without an id: the running upgrade if there is one, else the last finished one,
        else the first one to start and finish from now on.
        """
        key = scale_set_key(subscription, resource_group, name)
        target = upgrade_id
        while True:
            try:
                worker = self.scale_set(subscription, resource_group, name)
                ready = worker.loaded.is_set()
            except WorkerRestartingError:  # back once the log answers again
                ready = False
            changed = self._changed.setdefault(key, asyncio.Event())
            if not ready:  # loading, or restarting: it says when it is done
                await self._wait_change(changed, f"the worker of {key} never loads")
                continue
            if target is None:  # chosen once, then kept: later upgrades do not move it
                active = worker.state.active_upgrade
                if active is not None:
                    target = active.upgrade_id
                elif worker.state.upgrades:
                    target = worker.state.upgrades[-1]
            if target in worker.state.upgrades and not _is_active(worker, target):
                await worker.durable()  # the worker decides ahead of its commits
                return await worker.finished_upgrade(target)
            if self._failures:
                raise WorkerCrashedError("a worker crashed") from self._failures[0]
            await self._wait_change(changed, f"no upgrade of {key} finishes")

    async def _wait_change(self, changed: asyncio.Event, what: str) -> None:
        """Wait for ``changed``; on a virtual clock, fail if the engine has stalled."""
        if not isinstance(self.clock, VirtualClock):
            await changed.wait()
            return
        waiter = asyncio.ensure_future(changed.wait())
        stalled = asyncio.ensure_future(self.clock.wait_stalled())
        done, pending = await asyncio.wait({waiter, stalled}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if waiter not in done:
            raise EngineStalledError(f"{what}: every worker is idle and no timer is pending")

    async def durable(self) -> None:
        """Wait until everything every worker has decided so far is in the log.

        Workers decide ahead of their commits; a caller that reads the log (or a
        projection of it) after the engine went quiet needs this first.
        """
        for worker in list(self._workers.values()):
            await worker.durable()

    async def settle(self) -> None:
        """Wait until no worker has anything to do at the current engine time."""
        if isinstance(self.clock, VirtualClock):
            await self.clock.wait_quiet()

    async def _submit(self, key: str, command: Any) -> Any:
        """Run ``command`` in the worker of ``key``, wherever the set is by then.

        A worker that stops before running it (deleted, crashed, lease lost, stopped)
        answers ``WorkerGoneError`` once the engine has taken note; the command then
        goes to whoever drives the set now, or gets that answer: 404 if it was
        deleted, the owner's answer if another engine took it over. The caller's clock
        participation ends with the answer, so nothing can hold the clock forever.
        """
        async with self.clock.participant():
            for _ in range(ATTEMPTS):
                worker = self._live_worker(key)
                if worker is None:
                    raise ScaleSetNotFoundError(f"scale set {key} not found")
                try:
                    return await worker.submit(command)
                except WorkerGoneError:
                    self._after_worker_gone(key)
            raise CommandConflictError(f"scale set {key} kept changing; retry")

    def _after_worker_gone(self, key: str) -> None:
        """After ``WorkerGoneError``: refuse with 409 where looking again cannot help."""
        if self._stopping:
            raise CommandConflictError(f"the engine is stopping; scale set {key} was not changed")
        if key in self._crashed:  # the set is not gone: its worker failed under the command
            raise CommandConflictError(f"the worker of scale set {key} stopped; retry")

    def drives(self, key: str) -> bool:
        """True if this engine's worker drives scale set ``key`` now."""
        return key in self._tasks

    def _live_worker(self, key: str) -> ScaleSetWorker | None:
        """The running worker of ``key``; None if there is no such (live) scale set.

        A set whose worker crashed is not "not found": that would invite a PUT to
        create it again over its own history. It raises ``WorkerCrashedError``.
        """
        worker = self._workers.get(key)
        if worker is None and self.ownership is not None and key in self._known:
            raise NotOwnedHereError(key)
        if worker is None or worker.state.deleted:
            return None
        if key not in self._tasks:
            crash = self._crashed.get(key)
            if crash is not None:
                raise WorkerCrashedError(f"the worker of scale set {key} crashed") from crash
            if key in self._restarting:
                raise WorkerRestartingError(key, self._outages.get(key))
            return None
        return worker


async def _update_model(
    worker: ScaleSetWorker, spec: ScaleSetSpec, catalog: Catalog, check: Precondition
) -> None:
    check(worker.state)
    old = worker.state.spec
    assert old is not None
    if not spec.image.is_gallery and old.image.family[:2] != spec.image.family[:2]:
        raise InvalidParameterError(
            "properties.virtualMachineProfile.storageProfile.imageReference",
            "publisher and offer cannot be changed on an existing scale set",
        )
    versions = dict(worker.state.instance_versions)
    if spec.capacity != old.capacity:
        if worker.upgrade is not None:
            raise OperationNotAllowedError("cannot scale while a rolling upgrade is in progress")
        new_version = _resolve_version(spec, catalog)
        versions = {i: versions.get(i, new_version) for i in spec.instance_ids()}
        await worker.ctx.fleet.provision(spec, versions)
    enabled = spec.policy.automatic.enable_automatic_os_upgrade
    newly = enabled and not old.policy.automatic.enable_automatic_os_upgrade
    await worker.append_set(ScaleSetModelUpdated(spec, newly, versions), actor="User")


def _unconditional(state: ScaleSetState | None) -> None:
    """The precondition of a write without ``If-Match`` / ``If-None-Match``."""


def _is_active(worker: ScaleSetWorker, upgrade_id: str) -> bool:
    """Still running by the scale set's own stream (not yet ``upgrade_finished``)."""
    active = worker.state.active_upgrade
    return active is not None and active.upgrade_id == upgrade_id


def _resolve_version(spec: ScaleSetSpec, catalog: Catalog) -> str:
    if spec.image.version.lower() != "latest" and not spec.image.is_gallery:
        return spec.image.version
    latest = catalog.latest(spec.image, spec.location)
    if latest is None:
        raise InvalidParameterError(
            "properties.virtualMachineProfile.storageProfile.imageReference",
            f"no version of this image is available in {spec.location}",
        )
    return latest


def _check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise InvalidParameterError("version", f"{version!r} is not of the form major.minor.patch")
    canonical = canonical_version(version)
    if canonical != version:
        raise InvalidParameterError(
            "version", f"{version!r} has leading zeros; the version is written {canonical!r}"
        )

"""The embedding API: ``async with Engine(store=..., fleet=..., clock=...) as engine``.

Typed methods for every command validate their input, then hand the work to the scale
set's worker, so a command and the rollout it affects never race. Read methods return
the state the workers folded from the log.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog

from engine.clock import EngineClock, Participation, VirtualClock
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
from engine.domain.model import ScaleSetSpec, StartedBy, scale_set_key, version_key
from engine.domain.scale_set import EngineSettings, OperationNotAllowedError
from engine.domain.upgrade import Phase, UpgradeState
from engine.domain.validation import InvalidParameterError, validate_scale_set
from engine.fleet import Fleet
from engine.slots import UpgradeSlots
from engine.worker import ScaleSetWorker, WorkerContext
from events import EventStore, Metadata

log = structlog.get_logger("osupgrade.engine")

_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){2}")
_CATALOG_TYPES = [
    "image.version_published",
    "gallery.version_published",
    "gallery.version_replicated",
]


class ScaleSetNotFoundError(LookupError):
    """No scale set by that name (HTTP 404 ``ResourceNotFound``)."""


class WorkerCrashedError(RuntimeError):
    """A scale set worker stopped with an unexpected error."""


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
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.settings = settings or EngineSettings()
        self.catalog = Catalog()
        self._workers: dict[str, ScaleSetWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._create_lock = asyncio.Lock()
        self._failures: list[BaseException] = []
        self._crashed: dict[str, BaseException] = {}  # scale set key -> why its worker died
        self._ctx = WorkerContext(
            store, fleet, clock, self.catalog, self.settings,
            UpgradeSlots(clock, self.settings.max_concurrent_upgrades), self._notify,
        )  # fmt: skip

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the catalog from the log, then start a worker per live scale set."""
        async with self.clock.participant():
            live: dict[str, None] = {}
            last_time = None
            async for page in self._scan([*_CATALOG_TYPES, "scaleset.created", "scaleset.deleted"]):
                for recorded in page:
                    event = DOMAIN_EVENTS.decode(recorded)
                    last_time = recorded.occurred_at
                    if isinstance(event, ScaleSetCreated):
                        live[event.spec.key] = None
                    elif isinstance(event, ScaleSetDeleted):
                        live.pop(event.key, None)
                    else:
                        self._apply_catalog(event)
            tail = await self.store.read_all(after=max(0, await self.store.head() - 1))
            if tail:
                last_time = tail[-1].occurred_at
            if isinstance(self.clock, VirtualClock) and last_time is not None:
                self.clock.set_time(last_time)  # resume where the log left off
            for key in live:
                self._spawn(key)
        log.info("engine started", scale_sets=len(live))

    async def _scan(self, types: list[str]) -> Any:
        after = 0
        while True:
            page = await self.store.read_all(after=after, limit=5000, types=types)
            if not page:
                return
            yield page
            after = page[-1].position

    async def stop(self) -> None:
        """Stop every worker; raise ``WorkerCrashedError`` if any had crashed."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._failures:
            raise WorkerCrashedError(
                f"{len(self._failures)} worker(s) crashed"
            ) from self._failures[0]

    def _spawn(self, key: str) -> ScaleSetWorker:
        worker = ScaleSetWorker(self._ctx, key)
        self._workers[key] = worker
        participation = self.clock.participant()  # counts now, before the task runs
        task = asyncio.create_task(worker.run(participation), name=f"worker:{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._worker_done(key, t))
        if isinstance(participation, Participation):
            task.add_done_callback(lambda _: participation.release())
        return worker

    def _worker_done(self, key: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            assert error is not None
            self._failures.append(error)
            self._crashed[key] = error
            log.error("worker crashed", scale_set=key, error=repr(error))
        self._notify(key)

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    # -- catalog ---------------------------------------------------------------------

    def _apply_catalog(self, event: object) -> None:
        self.catalog.apply(event)
        profile = getattr(event, "simulation", None)
        if isinstance(self.fleet, SimulationControl) and isinstance(profile, SimulationProfile):
            self.fleet.set_profile(event.version, profile)  # type: ignore[attr-defined]

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
        if version in self.catalog.versions(location, publisher, offer, sku):
            raise OperationNotAllowedError(f"image version {version} is already published")
        event = ImageVersionPublished(
            location, publisher, offer, sku, version, simulation or SimulationProfile()
        )
        await self._append_catalog(catalog_stream(location, publisher, offer, sku), event)

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
        await self._append_catalog(gallery_stream(image_id), event)

    async def replicate_gallery_image_version(
        self, image_id: str, version: str, region: str
    ) -> None:
        """Record that a gallery version reached another region."""
        event = GalleryImageVersionReplicated(image_id, version, region)
        await self._append_catalog(gallery_stream(image_id), event)

    async def _append_catalog(self, stream: str, event: object) -> None:
        async with self.clock.participant():
            new = DOMAIN_EVENTS.to_new_event(
                event, metadata=Metadata(actor="Platform"), occurred_at=self.clock.now()
            )
            await self.store.append(stream, [new], None)
            self._apply_catalog(event)
            for worker in self._workers.values():
                worker.nudge()

    # -- scale sets ------------------------------------------------------------------

    async def create_or_update_scale_set(self, spec: ScaleSetSpec) -> bool:
        """Create the scale set or update its model; return True if it was created."""
        validate_scale_set(spec)
        async with self.clock.participant():
            async with self._create_lock:
                worker = self._live_worker(spec.key)
                if worker is None:
                    await self._create(spec)
                    return True
            await worker.submit(lambda w: _update_model(w, spec, self.catalog))
            return False

    async def _create(self, spec: ScaleSetSpec) -> None:
        version = _resolve_version(spec, self.catalog)
        versions = dict.fromkeys(spec.instance_ids(), version)
        stream = scale_set_stream(spec.key)
        expected = await self.store.stream_version(stream)
        event = ScaleSetCreated(spec, versions)
        new = DOMAIN_EVENTS.to_new_event(
            event,
            metadata=Metadata(correlation_id=spec.key, actor="User"),
            occurred_at=self.clock.now(),
        )
        await self.store.append(stream, [new], expected)
        await self.fleet.provision(spec, versions)
        self._spawn(spec.key)
        log.info("scale set created", scale_set=spec.key, capacity=spec.capacity, version=version)

    async def delete_scale_set(self, subscription: str, resource_group: str, name: str) -> None:
        """Delete a scale set (refused while an upgrade runs)."""
        key = scale_set_key(subscription, resource_group, name)

        async def delete(worker: ScaleSetWorker) -> None:
            if worker.upgrade is not None:
                raise OperationNotAllowedError("a rolling upgrade is in progress; cancel it first")
            await worker.append_set(ScaleSetDeleted(key), actor="User")

        await self._submit(key, delete)
        self._workers.pop(key, None)

    # -- upgrades --------------------------------------------------------------------

    async def start_os_upgrade(self, subscription: str, resource_group: str, name: str) -> str:
        """Manual upgrade to the latest version (SPEC 2.1.2); returns the upgrade id."""

        async def start(worker: ScaleSetWorker) -> str:
            spec = worker.state.spec
            assert spec is not None
            latest = self.catalog.latest(spec.image, spec.location)
            newest = max(worker.state.instance_versions.values(), key=version_key)
            target = (
                latest
                if latest is not None and version_key(latest) > version_key(newest)
                else newest
            )
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

    # -- reading ---------------------------------------------------------------------

    def scale_set(self, subscription: str, resource_group: str, name: str) -> ScaleSetWorker:
        """The worker (and through it the folded state) of a live scale set."""
        worker = self._live_worker(scale_set_key(subscription, resource_group, name))
        if worker is None:
            raise ScaleSetNotFoundError(f"scale set {name} not found")
        return worker

    def scale_sets(self) -> list[str]:
        """Keys of every live scale set."""
        return sorted(key for key, worker in self._workers.items() if not worker.state.deleted)

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
        await self.scale_set(subscription, resource_group, name).loaded.wait()
        while True:
            worker = self.scale_set(subscription, resource_group, name)
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
            changed = self._changed.setdefault(key, asyncio.Event())
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
        worker = self._live_worker(key)
        if worker is None:
            raise ScaleSetNotFoundError(f"scale set {key} not found")
        async with self.clock.participant():
            return await worker.submit(command)

    def _live_worker(self, key: str) -> ScaleSetWorker | None:
        """The running worker of ``key``; None if there is no such (live) scale set.

        A set whose worker crashed is not "not found": that would invite a PUT to
        create it again over its own history. It raises ``WorkerCrashedError``.
        """
        worker = self._workers.get(key)
        if worker is None or worker.state.deleted:
            return None
        if key not in self._tasks:
            crash = self._crashed.get(key)
            if crash is not None:
                raise WorkerCrashedError(f"the worker of scale set {key} crashed") from crash
            return None
        return worker


async def _update_model(worker: ScaleSetWorker, spec: ScaleSetSpec, catalog: Catalog) -> None:
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

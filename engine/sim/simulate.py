"""Run a scenario in virtual time and measure what happened (``osupgrade simulate``).

The engine, its workers and the simulated fleet run unchanged on a virtual clock; the
scenario's timed actions (manual starts, cancels, maintenance) are played by a driver
that is itself a clock participant, so they land at exact virtual instants. Everything
reported afterwards is folded from the event log the run wrote: the same log, the same
numbers, and the same seed gives the same log.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from engine.domain.model import Health, UpgradeStatus
from engine.domain.scale_set import OperationNotAllowedError
from engine.domain.upgrade import FAILED_PHASES, Phase
from engine.runtime.clock import Participation, VirtualClock
from engine.runtime.engine import Engine
from engine.sim.fleet import SimulatedFleet
from engine.sim.scenario import RESOURCE_GROUP, SUBSCRIPTION, Action, Scenario
from events import EventStore, InMemoryEventStore, RecordedEvent
from projections.fleet_view import FleetView
from projections.upgrade_view import JSON, expand

log = structlog.get_logger("osupgrade.simulate")

STATES = ("current", "upgrading", "upgraded", "failed", "rolled back")
"""Timeline states of an instance: on the old version untouched, being reimaged or
waited for, healthy on the new version, failed (on the new version, or being rolled
back), back on its old version after a rollback."""

_STATE_OF_EVENT = {
    "upgrade.instance_reimage_started": "upgrading",
    "upgrade.instance_healthy": "upgraded",
    "upgrade.instance_health_timeout": "failed",
    "upgrade.instance_reimage_failed": "failed",
    "upgrade.instance_rollback_started": "failed",
    "upgrade.instance_rolled_back": "rolled back",
}
_NOT_SERVING = frozenset({"upgrading", "failed"})


@dataclass(frozen=True)
class Live:
    """A snapshot of the run for a progress display (read from the workers' memory)."""

    instances_total: int
    instances_done: int
    instances_failed: int
    instances_rolled_back: int
    sets_total: int
    sets_completed: int
    sets_faulted: int
    sets_cancelled: int
    virtual_time: datetime


@dataclass(frozen=True)
class Marker:
    """Maintenance the scenario caused: an instance forced to a health, or released."""

    at: datetime
    key: str
    instance_id: str
    health: Health | None


@dataclass
class Outcome:
    """What a run did, folded from its log."""

    scenario: Scenario
    label: str
    view: FleetView
    timeline: list[tuple[float, dict[str, int]]]  # (seconds since start, counts per state)
    instances: int
    scale_sets: int
    upgrades: Counter[str] = field(default_factory=Counter)  # status -> count
    faults: Counter[str] = field(default_factory=Counter)  # error code -> count
    upgraded: int = 0
    failed: int = 0
    rolled_back: int = 0
    peak_unhealthy: int = 0
    peak_unhealthy_at: float = 0.0
    first_start: datetime | None = None
    last_end: datetime | None = None
    events: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """From the first upgrade's start to the last one's end, in virtual seconds."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return (self.last_end - self.first_start).total_seconds()

    @property
    def unfinished(self) -> int:
        """Upgrades still rolling forward when nothing was left to happen."""
        return sum(1 for u in self.view.upgrades.values() if u.code == "RollingForward")

    @property
    def peak_unhealthy_percent(self) -> float:
        """The most instances of the fleet not serving at one moment, in percent."""
        return 100 * self.peak_unhealthy / self.instances if self.instances else 0.0


Progress = Callable[[Live], None]


async def run_scenario(
    scenario: Scenario,
    *,
    label: str = "scenario",
    store: EventStore | None = None,
    clock: VirtualClock | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run ``scenario`` to its end in virtual time and return what happened.

    ``store`` defaults to an in-memory log (a what-if needs no file); ``progress`` is
    called about ten times a wall-clock second with a ``Live`` snapshot.
    """
    clock = clock or VirtualClock(scenario.start)
    store = store if store is not None else InMemoryEventStore(clock=clock)
    fleet = SimulatedFleet(clock, seed=scenario.seed)
    markers: list[Marker] = []
    notes: list[str] = []
    settings = scenario.settings
    with structlog.contextvars.bound_contextvars(scenario=scenario.name, run=label):
        async with Engine(store=store, fleet=fleet, clock=clock, settings=settings) as engine:
            # The driver counts as a participant from now on, before its task first runs,
            # so time cannot jump past its first action while it is being scheduled.
            participation = clock.participant()
            driver = asyncio.create_task(
                _play(engine, fleet, scenario, markers, notes, participation)
            )
            async with _reporting(engine, progress):
                await driver
                await clock.wait_stalled()  # nothing left to happen: every upgrade is over
    return await fold_outcome(scenario, label, store, markers, notes)


async def _set_up(engine: Engine, scenario: Scenario) -> None:
    """Publish the current version, create every scale set, publish the new version.

    All at the scenario's start instant: the caller holds the clock still meanwhile.
    """
    image = scenario.image
    await engine.publish_image_version(image.location, *image.family, image.current_version)
    for spec in scenario.specs():
        await engine.create_or_update_scale_set(spec)
    await engine.publish_image_version(
        image.location, *image.family, image.new_version, image.behaviour
    )
    log.info("scenario set up", scale_sets=len(engine.scale_sets()))


async def _play(
    engine: Engine,
    fleet: SimulatedFleet,
    scenario: Scenario,
    markers: list[Marker],
    notes: list[str],
    participation: Participation,
) -> None:
    """Set the scenario up, then carry out the timed actions at their virtual instants."""
    clock = engine.clock
    assert isinstance(clock, VirtualClock)
    async with participation:
        await _set_up(engine, scenario)
        for action in scenario.actions:
            await clock.sleep_until(scenario.start + timedelta(seconds=action.at_s))
            for name in scenario.targets(action.target):
                bound = log.bind(scale_set=name, action=action.kind)
                try:
                    await _act(engine, fleet, scenario, action, name, markers)
                except OperationNotAllowedError as exc:
                    at = action.at_s
                    notes.append(f"{action.kind} {name} at +{at}s: refused ({exc})")
                    bound.info("action refused", reason=str(exc))


async def _act(
    engine: Engine,
    fleet: SimulatedFleet,
    scenario: Scenario,
    action: Action,
    name: str,
    markers: list[Marker],
) -> None:
    if action.kind == "startUpgrade":
        await engine.start_os_upgrade(SUBSCRIPTION, RESOURCE_GROUP, name)
    elif action.kind == "cancelUpgrade":
        await engine.cancel_upgrade(SUBSCRIPTION, RESOURCE_GROUP, name)
    elif action.kind == "approveUpgrade":
        await engine.approve_upgrade(SUBSCRIPTION, RESOURCE_GROUP, name)
    else:
        worker = engine.scale_set(SUBSCRIPTION, RESOURCE_GROUP, name)
        spec = worker.state.spec
        assert spec is not None
        now = engine.clock.now()
        for instance_id in _chosen(scenario, action, name, spec.capacity):
            machine = fleet.instance(spec.key, instance_id)
            machine.forced = action.health if action.kind == "setHealth" else None
            health = action.health if action.kind == "setHealth" else None
            markers.append(Marker(now, spec.key, instance_id, health))


def _chosen(scenario: Scenario, action: Action, name: str, capacity: int) -> list[str]:
    """Which instances an action touches: listed ones, or a seeded sample of a percentage."""
    ids = [str(i) for i in range(capacity)]
    if action.kind == "clearHealth":
        return ids
    if action.instances:
        return [str(i) for i in action.instances if i < capacity]
    assert action.instance_percent is not None
    count = max(1, capacity * action.instance_percent // 100)
    sample = random.Random(f"{scenario.seed}/{name}/{action.at_s}").sample(ids, count)
    return sorted(sample, key=int)


# -- live progress --------------------------------------------------------------------


@asynccontextmanager
async def _reporting(engine: Engine, progress: Progress | None) -> AsyncIterator[None]:
    """Poll the workers' state while the body runs (wall-clock ticks, not engine work)."""
    if progress is None:
        yield
        return

    async def tick() -> None:
        while True:
            progress(snapshot(engine))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        progress(snapshot(engine))


def snapshot(engine: Engine) -> Live:
    """Counts for the progress display, from what the workers hold in memory."""
    done = failed = rolled_back = instances = 0
    statuses: Counter[str] = Counter()
    keys = engine.scale_sets()
    for key in keys:
        sub, group, name = key.split("/")
        worker = engine.scale_set(sub, group, name)
        instances += len(worker.state.instance_versions)
        upgrades = list(worker.upgrade_history.values())
        if worker.upgrade is not None:
            upgrades.append(worker.upgrade)
        for upgrade in upgrades:
            for progress in upgrade.instances.values():
                done += progress.phase == Phase.HEALTHY
                failed += progress.phase in FAILED_PHASES
                rolled_back += progress.phase == Phase.ROLLED_BACK
            if upgrade.finished:
                statuses[upgrade.status.value] += 1
    return Live(
        instances, done, failed, rolled_back, len(keys),
        statuses[UpgradeStatus.COMPLETED.value], statuses[UpgradeStatus.FAULTED.value],
        statuses[UpgradeStatus.CANCELLED.value], engine.clock.now(),
    )  # fmt: skip


# -- folding the log ------------------------------------------------------------------


async def read_log(store: EventStore) -> list[RecordedEvent]:
    """Every event, in a deterministic order: engine time, then stream, then version.

    Global positions depend on how concurrent commits interleaved; this order does not.
    """
    events: list[RecordedEvent] = []
    after = 0
    while page := await store.read_all(after=after, limit=10_000):
        events.extend(page)
        after = page[-1].position
    events.sort(key=lambda e: (e.occurred_us, e.stream_id, e.stream_version))
    return events


async def fold_outcome(
    scenario: Scenario,
    label: str,
    store: EventStore,
    markers: list[Marker] | None = None,
    notes: list[str] | None = None,
) -> Outcome:
    """Measure a finished run from its log (plus the maintenance markers it played)."""
    events = await read_log(store)
    view = FleetView()
    for event in sorted(events, key=lambda e: e.position):
        view.apply(event)
    folder = _TimelineFolder(scenario.start, markers or [])
    outcome = Outcome(scenario, label, view, [], 0, 0, events=len(events), notes=notes or [])
    for event in events:
        folder.apply(event)
        _count(outcome, event)
    folder.finish()
    outcome.timeline = folder.points
    outcome.instances = folder.total
    outcome.scale_sets = len(view.scale_sets)
    outcome.peak_unhealthy, outcome.peak_unhealthy_at = folder.peak, folder.peak_at
    return outcome


def _count(outcome: Outcome, event: RecordedEvent) -> None:
    for kind, data in expand(event.type, event.data):  # a group counts as its items
        _count_one(outcome, kind, data, event.occurred_at)


def _count_one(outcome: Outcome, kind: str, data: JSON, at: datetime) -> None:
    if kind == "upgrade.requested":
        if outcome.first_start is None or at < outcome.first_start:
            outcome.first_start = at
    elif kind in ("upgrade.completed", "upgrade.faulted", "upgrade.cancelled"):
        outcome.upgrades[kind.removeprefix("upgrade.").capitalize()] += 1
        if outcome.last_end is None or at > outcome.last_end:
            outcome.last_end = at
        if kind == "upgrade.faulted":
            outcome.faults[data["code"]] += 1
    elif kind == "upgrade.instance_healthy":
        outcome.upgraded += 1
    elif kind in ("upgrade.instance_health_timeout", "upgrade.instance_reimage_failed"):
        outcome.failed += 1
    elif kind == "upgrade.instance_rolled_back":
        outcome.rolled_back += 1


class _TimelineFolder:
    """Instances per state over virtual time, and the peak of instances not serving."""

    def __init__(self, start: datetime, markers: list[Marker]) -> None:
        self.start = start
        self.state: dict[tuple[str, str], str] = {}
        self.counts: Counter[str] = Counter()
        self.forced: set[tuple[str, str]] = set()
        self.markers = sorted(markers, key=lambda m: (m.at, m.key, int(m.instance_id)))
        self.points: list[tuple[float, dict[str, int]]] = []
        self.current_us: int | None = None
        self.total = 0
        self.peak = 0
        self.peak_at = 0.0
        self.upgrade_sets: dict[str, str] = {}  # upgrade stream -> scale set key

    def apply(self, event: RecordedEvent) -> None:
        if self.current_us is not None and event.occurred_us != self.current_us:
            self._close(self.current_us)
        self.current_us = event.occurred_us
        self._markers_until(event.occurred_at)
        for kind, data in expand(event.type, event.data):  # a group folds as its items
            self._apply_one(event.stream_id, kind, data)

    def _apply_one(self, stream_id: str, kind: str, data: JSON) -> None:
        if kind == "scaleset.created":
            key = stream_id.removeprefix("vmss-")
            for instance_id in data["instance_versions"]:
                self._set((key, instance_id), "current")
            return
        state = _STATE_OF_EVENT.get(kind)
        if state is not None and "instance_id" in data:
            key = self.upgrade_sets.get(stream_id, "")
            self._set((key, data["instance_id"]), state)
            if state in ("upgrading", "rolled back"):
                self.forced.discard((key, data["instance_id"]))  # a new OS disk
        elif kind == "upgrade.requested":
            self.upgrade_sets[stream_id] = data["scale_set"]

    def _set(self, instance: tuple[str, str], state: str) -> None:
        old = self.state.get(instance)
        if old is None:
            self.total += 1
        else:
            self.counts[old] -= 1
        self.state[instance] = state
        self.counts[state] += 1

    def _markers_until(self, when: datetime) -> None:
        while self.markers and self.markers[0].at <= when:
            marker = self.markers.pop(0)
            instance = (marker.key, marker.instance_id)
            if marker.health is None or marker.health == Health.HEALTHY:
                self.forced.discard(instance)
            else:
                self.forced.add(instance)

    def _close(self, at_us: int) -> None:
        seconds = at_us / 1e6 - self.start.timestamp()
        counts = {s: self.counts[s] for s in STATES}
        self.points.append((seconds, counts))
        forced = sum(1 for i in self.forced if self.state.get(i) not in _NOT_SERVING)
        down = self.counts["upgrading"] + self.counts["failed"] + forced
        if down > self.peak:
            self.peak, self.peak_at = down, seconds

    def finish(self) -> None:
        if self.current_us is not None:
            self._close(self.current_us)


# -- measures side by side ------------------------------------------------------------


def comparison_rows(outcomes: list[Outcome]) -> list[tuple[str, list[str]]]:
    """The measures of each run, row by row (shared by the console table and the report)."""
    codes = sorted({code for outcome in outcomes for code in outcome.faults})
    rows: list[tuple[str, list[str]]] = [
        ("total duration (engine time)", [duration(o.duration_s) for o in outcomes]),
        ("instances upgraded", [f"{o.upgraded:,}" for o in outcomes]),
        ("instances failed", [f"{o.failed:,}" for o in outcomes]),
        ("instances rolled back", [f"{o.rolled_back:,}" for o in outcomes]),
        ("peak unhealthy (fleet)", [f"{o.peak_unhealthy_percent:.1f} %" for o in outcomes]),
        ("upgrades completed", [str(o.upgrades["Completed"]) for o in outcomes]),
        ("upgrades cancelled", [str(o.upgrades["Cancelled"]) for o in outcomes]),
        ("upgrades faulted", [str(o.upgrades["Faulted"]) for o in outcomes]),
    ]
    unfinished = [str(o.unfinished) for o in outcomes]
    if any(n != "0" for n in unfinished):  # e.g. deferred instances never approved
        rows.insert(6, ("upgrades never finished", unfinished))
    rows += [(f"  {code}", [str(o.faults[code]) for o in outcomes]) for code in codes]
    rows.append(("events in the log", [f"{o.events:,}" for o in outcomes]))
    return rows


def duration(seconds: float) -> str:
    """``1h 05m 30s``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"

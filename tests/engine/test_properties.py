"""Property-based tests of the orchestrator's invariants (SPEC 2.1 and 2.2).

Each example builds a random scale set (size, policy, health source, data disks, zones,
instances held Unhealthy), publishes a new image version with a random behaviour
profile, runs one upgrade (automatic or manual) through the real ``Engine`` in virtual
time on the in-memory log with the simulated fleet, and checks the log and the machines.

Properties (numbers as in SPEC 2.2): batch size (1), whole-set limit before each batch
and at the pre-check, checked against the health the engine actually read (2), rollback
to the previous image in the log and on the machine (3), data disks (4) and SKU (5)
untouched, at most one reimage per instance (6), exactly one final event whose numbers
add up (7), one final state per instance and counts that add up (8); also the pause,
zones, unhealthy-first, cancel, expired credentials and each instance's health verdict
against a twin fleet. The last section breaks each rule in a real run and expects the
checks to notice.

To check the log against what the engine actually saw, the store and the fleet write to
one shared journal: every health read and every append, in order. The machines are
snapshotted the moment the upgrade's final event is appended (an automatic set may start
another upgrade afterwards; that one is not under test).
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import event as statistic
from hypothesis import strategies as st

from engine.domain.events import (
    BatchCompleted,
    BatchStarted,
    CancelRequested,
    HealthWaitStarted,
    InstanceHealthTimeout,
    InstanceHealthy,
    InstanceReimaged,
    InstanceReimageFailed,
    InstanceReimageStarted,
    InstanceRollbackFailed,
    InstanceRollbackStarted,
    InstanceRolledBack,
    PauseStarted,
    PreCheckPassed,
    ScaleSetUpgradeFinished,
    SimulationProfile,
    UpgradeCancelled,
    UpgradeCompleted,
    UpgradeFaulted,
    UpgradeRequested,
)
from engine.domain.grouping import decode_all
from engine.domain.model import (
    DEFAULT_ROLLING_POLICY,
    DataDisk,
    Extension,
    Health,
    HealthExtension,
    RollingUpgradePolicy,
    ScaleSetSpec,
    StartedBy,
)
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.sim.fleet import SimulatedFleet, SimulatedInstance
from events import Fence, InMemoryEventStore, NewEvent, RecordedEvent
from tests.engine.fleets import PassThroughFleet
from tests.engine.harness import LOCATION, RG, SUB, T0, UBUNTU, spec

T = TypeVar("T")
OLD, NEW = "1.0.0", "1.1.0"
NAME = "web"
FINAL_TYPES = frozenset({"upgrade.completed", "upgrade.faulted", "upgrade.cancelled"})
BEFORE = "MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade"
DURING = "MaxUnhealthyInstancePercentExceededInRollingUpgrade"
UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
EXTENSIONS = "VMExtensionProvisioningError"
MAX_STEPS = 50_000  # health reads + appends; a 40-instance run needs a few thousand
MAX_VIRTUAL_TIME = timedelta(days=7)
# No explain phase: it replays a failure hundreds of times (tens of seconds here).
QUICK = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

# -- a world that journals what the engine saw -----------------------------------------


@dataclass
class Read:
    """One ``read_health`` call and what the fleet answered."""

    health: dict[str, Health]


@dataclass
class Append:
    """One ``append`` call: the positions it stored."""

    positions: list[int]


Journal = list[Read | Append]


class JournalFleet(PassThroughFleet):
    """A simulated fleet, journaling every health read (the engine's only view of health)."""

    def __init__(self, inner: SimulatedFleet) -> None:
        super().__init__(inner)
        self.steps: Journal = []

    async def read_health(
        self, spec: ScaleSetSpec, instance_ids: Sequence[str]
    ) -> dict[str, Health]:
        """Answer as the simulated fleet does, and remember the answer."""
        health = await self.inner.read_health(spec, instance_ids)
        self.note(Read(dict(health)))
        return health

    def note(self, entry: Read | Append) -> None:
        """Journal one step; stop a run that goes on for ever (a hang hides the example)."""
        self.steps.append(entry)
        if len(self.steps) > MAX_STEPS or self.clock.now() > T0 + MAX_VIRTUAL_TIME:
            raise RunawayError(
                f"still running after {len(self.steps)} steps, at {self.clock.now()}"
            )


class RunawayError(AssertionError):
    """The engine neither finished nor stopped: a livelock or a deadlock."""


class JournalStore(InMemoryEventStore):
    """The in-memory log, journaling appends and snapshotting machines at an upgrade's end."""

    def __init__(self, clock: VirtualClock, fleet: JournalFleet) -> None:
        super().__init__(clock=clock)
        self.fleet = fleet
        self.snapshots: dict[str, dict[tuple[str, str], SimulatedInstance]] = {}
        self.on_append: Callable[[str, Sequence[NewEvent]], None] = lambda stream, events: None
        self.first_finished: str | None = None  # the first upgrade the scale set saw end
        self.finished = asyncio.Event()

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        fence: Fence | None = None,
    ) -> list[int]:
        """Append, journal, and snapshot the machines when an upgrade ends."""
        positions = await super().append(stream_id, events, expected_version, fence=fence)
        self.fleet.note(Append(list(positions)))
        if stream_id.startswith("upgrade-") and any(e.type in FINAL_TYPES for e in events):
            self.snapshots.setdefault(stream_id, copy.deepcopy(self.fleet.inner.instances))
        for e in events:
            if e.type == "scaleset.upgrade_finished" and self.first_finished is None:
                self.first_finished = str(e.data["upgrade_id"])
                self.finished.set()
        self.on_append(stream_id, events)
        return positions


# -- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One random fleet, policy, image behaviour and way of starting the upgrade."""

    capacity: int
    policy: RollingUpgradePolicy
    use_rolling_policy: bool
    profile: SimulationProfile
    disable_rollback: bool
    data_disks: tuple[DataDisk, ...]
    health: str  # "probe", "extension" or "none" (manual only)
    extension: HealthExtension | None
    zones: tuple[str, ...]
    forced: tuple[str, ...]  # instances held Unhealthy before the upgrade
    manual: bool
    extra: int  # manual only: instances added on the new version before the upgrade
    cancel_after: int | None  # cancel once the batch with this index has started
    expired_credential: bool  # an extension's credential has expired (SPEC 2.2.9)
    seed: int

    def model(self) -> ScaleSetSpec:
        """The scale set's model."""
        return spec(
            NAME,
            self.capacity,
            automatic=not self.manual,
            rolling=self.policy,
            use_rolling_policy=self.use_rolling_policy,
            disable_rollback=self.disable_rollback,
            probe=self.health == "probe",
            extension=self.extension,
            data_disks=self.data_disks,
            zones=self.zones,
            extensions=(
                Extension("monitor"),
                Extension(
                    "certs",
                    provision_after=("monitor",),
                    credential_expires_at=T0 - timedelta(days=1)
                    if self.expired_credential
                    else T0 + timedelta(days=365),
                ),
            ),
        )

    def policy_in_force(self) -> RollingUpgradePolicy:
        """SPEC 2.3: automatic upgrades use 20/20/20/PT0S unless useRollingUpgradePolicy."""
        if self.manual or self.use_rolling_policy:
            return self.policy
        return DEFAULT_ROLLING_POLICY

    @property
    def rollback(self) -> bool:
        """SPEC 2.1.2 / 2.2.4: only automatic upgrades roll back, unless disabled."""
        return not self.manual and not self.disable_rollback


policies = st.builds(
    RollingUpgradePolicy,
    max_batch_instance_percent=st.integers(5, 100),
    max_unhealthy_instance_percent=st.integers(5, 100),
    max_unhealthy_upgraded_instance_percent=st.integers(0, 100),
    pause_time_between_batches_s=st.one_of(st.just(0), st.integers(0, 600)),
    prioritize_unhealthy_instances=st.booleans(),
    enable_cross_zone_upgrade=st.booleans(),
)

profiles = st.builds(
    SimulationProfile,
    unhealthy_instance_percent=st.one_of(st.just(0), st.integers(0, 100)),
    boot_seconds=st.integers(0, 400),
    reimage_failure_percent=st.sampled_from([0, 0, 0, 1, 5, 20, 50]),
)

health_extensions = st.builds(
    HealthExtension,
    interval_s=st.integers(5, 60),
    number_of_probes=st.integers(1, 24),
    grace_period_s=st.one_of(st.none(), st.integers(0, 7200)),
)

data_disk_sets = st.lists(
    st.builds(DataDisk, lun=st.integers(0, 63), size_gb=st.integers(1, 4096)),
    max_size=3,
    unique_by=lambda d: d.lun,
).map(tuple)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A random scenario (SPEC 2.3's valid ranges)."""
    capacity = draw(st.integers(1, 40))
    manual = draw(st.booleans())
    health = draw(
        st.sampled_from(["probe", "extension", "none"] if manual else ["probe", "extension"])
    )
    held = st.sets(st.integers(0, capacity - 1), max_size=max(1, capacity // 3))
    forced = draw(st.one_of(st.just(set()), held, st.sets(st.integers(0, capacity - 1))))
    return Scenario(
        capacity=capacity,
        policy=draw(policies),
        use_rolling_policy=draw(st.sampled_from([True, True, True, False])),
        profile=draw(profiles),
        disable_rollback=draw(st.booleans()),
        data_disks=draw(data_disk_sets),
        health=health,
        extension=draw(health_extensions) if health == "extension" else None,
        zones=draw(st.sampled_from([(), (), ("1", "2", "3")])),
        forced=tuple(str(i) for i in sorted(forced)),
        manual=manual,
        extra=draw(st.integers(0, 5)) if manual else 0,
        cancel_after=draw(st.one_of(st.none(), st.none(), st.integers(0, 4))),
        expired_credential=draw(st.sampled_from([False] * 7 + [True])),
        seed=draw(st.integers(0, 2**16)),
    )


# -- running one --------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run left behind."""

    scenario: Scenario
    model: ScaleSetSpec
    upgrade_id: str
    records: list[RecordedEvent]  # the upgrade's stream, one entry per (expanded) event
    events: list[Any]  # decoded, same order
    set_events: list[Any]  # the scale set's stream, decoded
    journal: Journal
    before: dict[tuple[str, str], SimulatedInstance]
    after: dict[tuple[str, str], SimulatedInstance]
    baseline: dict[str, Health]  # the set's health just before the upgrade
    fate: dict[str, Health]  # each instance's health on the new image, once booted

    @property
    def n(self) -> int:
        """N: the number of instances in the set."""
        return self.model.capacity


async def until_done(work: Awaitable[T], guard: Awaitable[None]) -> T:
    """Await ``work`` while ``guard`` runs; the guard's error, if first, is raised."""
    work_task = asyncio.ensure_future(work)
    guard_task = asyncio.ensure_future(guard)
    try:
        await asyncio.wait([work_task, guard_task], return_when=asyncio.FIRST_COMPLETED)
        if guard_task.done():
            guard_task.result()
        return await work_task
    finally:
        for task in (work_task, guard_task):
            task.cancel()
        await asyncio.gather(work_task, guard_task, return_exceptions=True)


async def watchdog(clock: VirtualClock, store: JournalStore) -> None:
    """Fail if the engine goes quiet with no timer left before the upgrade ended."""
    while not store.finished.is_set():
        await clock.wait_quiet()  # returns after one loop turn: the autojump gets to run
        if clock.busy == 0 and clock.next_timer() is None and not store.finished.is_set():
            raise RunawayError(f"deadlock: nothing to do and no timer at {clock.now()}")


async def fate_on_new_image(s: Scenario, model: ScaleSetSpec) -> dict[str, Health]:
    """How each instance will be on the new image once booted: a twin fleet, same seed."""
    twin = SimulatedFleet(VirtualClock(T0), seed=s.seed)
    twin.set_profile(NEW, s.profile)
    await twin.provision(model, dict.fromkeys(model.instance_ids(), NEW))  # booted a day ago
    return await twin.read_health(model, model.instance_ids())


async def look(
    machines: SimulatedFleet, model: ScaleSetSpec
) -> tuple[dict[tuple[str, str], SimulatedInstance], dict[str, Health]]:
    """The machines and the set's health before the upgrade can start."""
    return copy.deepcopy(machines.instances), await machines.read_health(
        model, model.instance_ids()
    )


async def run(s: Scenario) -> Outcome:
    """Create the set, publish a new version, run one upgrade to its end."""
    clock = VirtualClock(T0)
    machines = SimulatedFleet(clock, seed=s.seed)
    fleet = JournalFleet(machines)
    store = JournalStore(clock, fleet)
    model = s.model()
    cancels: list[asyncio.Task[None]] = []
    async with Engine(store=store, fleet=fleet, clock=clock) as engine:

        def cancel_when_batch_starts(stream: str, events: Sequence[NewEvent]) -> None:
            if store.first_finished is None and any(
                e.type == "upgrade.batch_started" and e.data["index"] == s.cancel_after
                for e in events
            ):
                cancels.append(asyncio.create_task(engine.cancel_upgrade(SUB, RG, NAME)))

        store.on_append = cancel_when_batch_starts
        await engine.publish_image_version(LOCATION, *UBUNTU, OLD, SimulationProfile())
        await engine.create_or_update_scale_set(model)
        for instance_id in s.forced:
            machines.force_health(model.key, instance_id, Health.UNHEALTHY)
        # A newer version of another SKU of the same offer: never the target (SPEC 2.1.1).
        await engine.publish_image_version(
            LOCATION, UBUNTU[0], UBUNTU[1], "16.04-LTS", "9.9.9", SimulationProfile()
        )
        started = None
        if s.manual:
            await engine.publish_image_version(LOCATION, *UBUNTU, NEW, s.profile)
            if s.extra:  # scale out: the new instances come up on the new version
                model = replace(model, capacity=s.capacity + s.extra)
                await engine.create_or_update_scale_set(model)
            before, baseline = await look(machines, model)
            started = await engine.start_os_upgrade(SUB, RG, NAME)
        else:
            before, baseline = await look(machines, model)
            await engine.publish_image_version(LOCATION, *UBUNTU, NEW, s.profile)
        fate = await fate_on_new_image(s, model)
        # Not engine.wait_for_upgrade: an automatic set may start (and finish) further
        # upgrades at once; the one under test is the first one to end.
        await until_done(store.finished.wait(), watchdog(clock, store))
        upgrade_id = store.first_finished
        assert upgrade_id is not None and started in (None, upgrade_id)
        async with clock.participant():  # keep time still while reading
            records = await store.read_stream(f"upgrade-{upgrade_id}")
            set_records = await store.read_stream(f"vmss-{model.key}")
        await asyncio.gather(*cancels)  # a cancel is never refused: the upgrade was running
    return Outcome(
        scenario=s,
        model=model,
        upgrade_id=upgrade_id,
        records=[r for r in records for _ in decode_all(r)],  # one per event, groups expanded
        events=[e for r in records for e in decode_all(r)],
        set_events=[e for r in set_records for e in decode_all(r)],
        journal=list(fleet.steps),
        before=before,
        after=store.snapshots[f"upgrade-{upgrade_id}"],
        baseline=baseline,
        fate=fate,
    )


# -- checks ---------------------------------------------------------------------------


def exceeds(count: int, total: int, limit: int) -> bool:
    """SPEC 2.2.10: "more than" limit percent, in exact integers."""
    return count * 100 > limit * total


def read_before(journal: Journal, position: int) -> dict[str, Health]:
    """The last health read before the append that stored ``position``."""
    index = next(
        i for i, e in enumerate(journal) if isinstance(e, Append) and position in e.positions
    )
    for entry in reversed(journal[:index]):
        if isinstance(entry, Read):
            return entry.health
    raise AssertionError(f"no health read before position {position}")


def unhealthy(health: Mapping[str, Health]) -> int:
    """Instances whose signal is anything but Healthy."""
    return sum(1 for h in health.values() if h != Health.HEALTHY)


def of(events: Sequence[Any], kind: type) -> list[Any]:
    """Events of one type, in order."""
    return [e for e in events if isinstance(e, kind)]


def needing(o: Outcome, request: UpgradeRequested) -> set[str]:
    """Instances not on the target version: the ones this upgrade is about."""
    return {i for i, v in request.instance_versions.items() if v != request.target.version}


def check_request(o: Outcome) -> UpgradeRequested:
    """The request carries the policy in force, the old versions and the same SKU."""
    s = o.scenario
    request = o.events[0]
    assert isinstance(request, UpgradeRequested), o.events[:1]
    assert of(o.events, UpgradeRequested) == [request]
    assert request.policy == s.policy_in_force()
    assert request.instance_versions == {
        i: OLD if int(i) < s.capacity else NEW for i in o.model.instance_ids()
    }
    assert request.started_by == (StartedBy.USER if s.manual else StartedBy.PLATFORM)
    assert request.automatic_rollback == s.rollback
    # 5. the SKU is never changed: same publisher/offer/sku, newest version of that sku
    assert request.target.family == o.model.image.family
    assert request.target.version == NEW
    return request


def check_final(o: Outcome) -> Any:
    """7. Exactly one final event, and it is the last one."""
    final_types = UpgradeCompleted | UpgradeFaulted | UpgradeCancelled
    finals = [e for e in o.events if isinstance(e, final_types)]
    assert len(finals) == 1, finals
    assert o.events[-1] is finals[0]
    return finals[0]


def check_precheck(o: Outcome, request: UpgradeRequested, final: Any) -> None:
    """2. The pre-check counts the unhealthy instances, and compares with "more than"."""
    n, limit = o.n, request.policy.max_unhealthy_instance_percent
    expected = unhealthy(o.baseline)
    if not o.scenario.extra:  # everything else runs the old image, booted long ago
        assert expected == len(o.scenario.forced)
    second = o.events[1]
    assert unhealthy(read_before(o.journal, o.records[1].position)) == expected
    if exceeds(expected, n, limit):
        assert second is final and isinstance(final, UpgradeFaulted), second
        assert final.code == BEFORE
        assert (final.numerator, final.denominator, final.limit_percent) == (expected, n, limit)
    else:
        assert isinstance(second, PreCheckPassed), second
        assert (second.unhealthy, second.total, second.limit_percent) == (expected, n, limit)


def check_batches(o: Outcome, request: UpgradeRequested, final: Any) -> None:
    """1, 2 and friends: batch size, whole-set threshold, pause, zones, priority, cancel."""
    policy, n = request.policy, o.n
    size = max(1, n * policy.max_batch_instance_percent // 100)
    limit = policy.max_unhealthy_instance_percent
    todo = needing(o, request)
    started_so_far: set[str] = set()
    declared_healthy: set[str] = set()
    last_completed_at: datetime | None = None
    cancelled = False
    for record, event in zip(o.records, o.events, strict=True):
        if isinstance(event, CancelRequested):
            cancelled = True
        elif isinstance(event, InstanceHealthy):
            declared_healthy.add(event.instance_id)
        elif isinstance(event, BatchCompleted):
            last_completed_at = record.occurred_at
        elif isinstance(event, UpgradeFaulted) and event.code == DURING:
            seen = read_before(o.journal, record.position)
            assert len(seen) == n
            assert (event.numerator, event.denominator) == (unhealthy(seen), n)
            assert exceeds(event.numerator, n, limit) and event.limit_percent == limit
            check_signal(o, request, seen, declared_healthy)
        elif isinstance(event, BatchStarted):
            assert not cancelled, "a batch started after the upgrade was cancelled"
            members = event.members
            assert event.index == len(of(o.events[: o.events.index(event)], BatchStarted))
            # 1. never larger than the rule allows, never empty, no instance twice
            assert 1 <= len(members) <= size, (len(members), size)
            assert len(set(members)) == len(members)
            assert set(members) <= todo - started_so_far, "not a pending instance"
            # 2. the whole set, as the engine read it just before, is within the limit
            seen = read_before(o.journal, record.position)
            assert len(seen) == n, "the whole set was not read before the batch"
            assert (event.unhealthy, event.total) == (unhealthy(seen), n)
            if event.index > 0:
                assert not exceeds(event.unhealthy, n, limit), (event.unhealthy, n, limit)
                check_signal(o, request, seen, declared_healthy)
                # 2.2.7: the pause between batches
                assert last_completed_at is not None
                wait = timedelta(seconds=policy.pause_time_between_batches_s)
                assert record.occurred_at - last_completed_at >= wait
            check_batch_choice(o, request, members, todo - started_so_far, seen)
            started_so_far |= set(members)
    if isinstance(final, UpgradeFaulted) and final.code == BEFORE:
        assert not started_so_far


def check_signal(
    o: Outcome, request: UpgradeRequested, seen: Mapping[str, Health], declared: set[str]
) -> None:
    """An instance the upgrade found Healthy is still Healthy when the set is counted.

    True of the simulated fleet (an image's fate is fixed per instance and version), so
    a difference means the upgrade and the whole-set check disagree about health (as
    they did without a health source: Healthy at once, then Unhealthy while booting).
    """
    changed = sorted(i for i in declared if seen[i] != Health.HEALTHY)
    assert not changed, f"declared Healthy, then counted {[seen[i] for i in changed]}: {changed}"


def check_batch_choice(
    o: Outcome,
    request: UpgradeRequested,
    members: tuple[str, ...],
    pending: set[str],
    seen: Mapping[str, Health],
) -> None:
    """Zones go one at a time (unless cross-zone); unhealthy first when prioritized."""
    policy = request.policy
    one_zone = bool(o.scenario.zones) and not policy.enable_cross_zone_upgrade
    if one_zone:
        assert len({request.zones[i] for i in members}) == 1, members
        pending = {i for i in pending if request.zones[i] == request.zones[members[0]]}
    if policy.prioritize_unhealthy_instances and any(seen[i] == Health.HEALTHY for i in members):
        left = sorted(i for i in pending - set(members) if seen[i] != Health.HEALTHY)
        assert not left, f"healthy members of {members} went before unhealthy {left}"


def instance_fates(o: Outcome, request: UpgradeRequested) -> dict[str, str]:
    """3, 6, 8. Each touched instance's path through the upgrade, and where it ended."""
    by_instance: dict[str, list[Any]] = {}
    for event in o.events:
        instance_id = getattr(event, "instance_id", None)
        if instance_id is not None:
            by_instance.setdefault(instance_id, []).append(event)
    members = {i for b in of(o.events, BatchStarted) for i in b.members}
    assert set(by_instance) == members, "instance events outside the batches"
    fates: dict[str, str] = {}
    for instance_id, events in by_instance.items():
        previous = request.instance_versions[instance_id]
        kinds = Counter(type(e) for e in events)
        # 6. reimaged at most once per upgrade
        assert kinds[InstanceReimageStarted] == 1, (instance_id, events)
        started = of(events, InstanceReimageStarted)[0]
        assert (started.from_version, started.to_version) == (previous, NEW)
        assert kinds[InstanceReimaged] + kinds[InstanceReimageFailed] == 1, events
        reimaged = kinds[InstanceReimaged] == 1
        extensions_failed = False
        if reimaged:
            done = of(events, InstanceReimaged)[0]
            assert done.version == NEW
            assert kinds[InstanceHealthy] + kinds[InstanceHealthTimeout] == 1, events
            # 2.2.9: only an expired credential makes provisioning fail
            assert bool(done.failed_extensions) == o.scenario.expired_credential, done
            extensions_failed = bool(done.failed_extensions)
            assert not (extensions_failed and kinds[InstanceHealthy]), events
        else:
            assert kinds[InstanceHealthy] == kinds[InstanceHealthTimeout] == 0, events
        failed = kinds[InstanceReimageFailed] + kinds[InstanceHealthTimeout] == 1
        if failed and request.automatic_rollback and not extensions_failed:
            # 3. a failed instance of an automatic upgrade gets its previous image back
            assert kinds[InstanceRollbackStarted] == 1, events
            assert of(events, InstanceRollbackStarted)[0].to_version == previous
            assert kinds[InstanceRolledBack] + kinds[InstanceRollbackFailed] == 1, events
            for rolled in of(events, InstanceRolledBack):
                assert rolled.version == previous
            fates[instance_id] = "rolled_back" if kinds[InstanceRolledBack] else "rollback_failed"
        else:
            # manual upgrades, disableAutomaticRollback and failed extensions: no rollback
            assert kinds[InstanceRollbackStarted] == kinds[InstanceRolledBack] == 0, events
            assert kinds[InstanceRollbackFailed] == 0, events
            if not failed:
                fates[instance_id] = "healthy"
            else:
                fates[instance_id] = "failed" if reimaged else "reimage_failed"
    # 8. every touched instance ends in exactly one final state (one key each)
    assert set(fates) == members
    return fates


def check_progress(
    o: Outcome, request: UpgradeRequested, final: Any, fates: dict[str, str]
) -> None:
    """7, 8. The batches' running totals, the thresholds and the final counts add up."""
    limit = request.policy.max_unhealthy_upgraded_instance_percent
    processed = failed = 0
    batch: tuple[str, ...] = ()
    extensions_failed = {
        e.instance_id for e in of(o.events, InstanceReimaged) if e.failed_extensions
    }
    for index, event in enumerate(o.events):
        if isinstance(event, BatchStarted):
            batch = event.members
        if not isinstance(event, BatchCompleted):
            continue
        assert set(event.succeeded) | set(event.failed) == set(batch)
        assert not set(event.succeeded) & set(event.failed)
        assert all(fates[i] == "healthy" for i in event.succeeded)
        assert all(fates[i] != "healthy" for i in event.failed)
        processed += len(batch)
        failed += len(event.failed)
        assert (event.processed_total, event.failed_total) == (processed, failed)
        assert event.limit_percent == limit
        cancelled = any(isinstance(e, CancelRequested) for e in o.events[:index])
        if cancelled:  # 2.2.8: the running batch finished; a cancel wins over thresholds
            assert o.events[index + 1] is final, "went on past a cancel"
            assert isinstance(final, UpgradeCancelled), final
        elif extensions_failed & set(batch):  # 2.2.9: the batch is left failed, and it ends
            assert o.events[index + 1] is final, "went on past failed extensions"
            assert isinstance(final, UpgradeFaulted) and final.code == EXTENSIONS, final
            assert final.numerator == len(extensions_failed & set(batch))
            assert final.denominator == len(batch)
        elif exceeds(failed, processed, limit):  # 2.2.5: the upgrade stops right here
            assert o.events[index + 1] is final, "went on past the upgraded-instance limit"
            assert isinstance(final, UpgradeFaulted) and final.code == UPGRADED
    healthy = sum(1 for f in fates.values() if f == "healthy")
    if isinstance(final, UpgradeCompleted):
        assert set(fates) == needing(o, request), "completed with instances left over"
        assert (final.succeeded, final.failed) == (healthy, len(fates) - healthy)
        assert not of(o.events, CancelRequested)
    elif isinstance(final, UpgradeCancelled):
        assert of(o.events, CancelRequested), "cancelled without a cancel"
        not_started = len(needing(o, request) - set(fates))
        assert (final.succeeded, final.failed) == (healthy, len(fates) - healthy)
        assert final.not_started == not_started
    elif final.code == UPGRADED:
        assert (final.numerator, final.denominator) == (failed, processed)
        assert exceeds(final.numerator, final.denominator, limit), final
        assert final.limit_percent == limit
    else:
        assert final.code in (BEFORE, DURING, EXTENSIONS), final


def check_verdicts(o: Outcome, request: UpgradeRequested, fates: dict[str, str]) -> None:
    """2.2.4: a reimaged instance succeeds exactly when its image makes it Healthy in time.

    In time: within the 5-minute wait for a probe; for the health extension, within the
    wait or the grace period, whichever ends later (Initializing keeps it waiting).
    """
    boot = o.scenario.profile.boot_seconds
    wait = request.health_timeout_s
    in_time = {
        "probe": boot <= wait,
        "extension": boot <= max(wait, request.grace_period_s),
        "none": True,
    }[request.health_source]
    for event in of(o.events, InstanceReimaged):
        if event.failed_extensions:
            continue
        expected = in_time and o.fate[event.instance_id] == Health.HEALTHY
        got = fates[event.instance_id] == "healthy"
        assert got == expected, (event.instance_id, o.fate[event.instance_id], boot, fates)


def check_timing(o: Outcome, request: UpgradeRequested) -> None:
    """Health timeouts only after the wait, pauses as long as the policy says.

    Instances whose extensions failed are failed at once: nothing to wait for (2.2.9).
    """
    no_wait = {e.instance_id for e in of(o.events, InstanceReimaged) if e.failed_extensions}
    deadline: datetime | None = None
    for record, event in zip(o.records, o.events, strict=True):
        if isinstance(event, HealthWaitStarted):
            deadline = event.deadline
            assert deadline - record.occurred_at == timedelta(seconds=request.health_timeout_s)
        elif isinstance(event, InstanceHealthTimeout) and event.instance_id not in no_wait:
            assert deadline is not None and record.occurred_at >= deadline, event
        elif isinstance(event, BatchCompleted):
            deadline = None
        elif isinstance(event, PauseStarted):
            pause = timedelta(seconds=request.policy.pause_time_between_batches_s)
            assert event.until - record.occurred_at == pause


def check_machines(o: Outcome, request: UpgradeRequested, fates: dict[str, str]) -> None:
    """3, 4, 5, 6 on the simulated machines; the set's model agrees with them."""
    key = o.model.key
    finished = [
        e
        for e in o.set_events
        if isinstance(e, ScaleSetUpgradeFinished) and e.upgrade_id == o.upgrade_id
    ]
    assert len(finished) == 1
    for instance_id in o.model.instance_ids():
        was, now = o.before[(key, instance_id)], o.after[(key, instance_id)]
        previous = request.instance_versions[instance_id]
        # 4. data disks never change; 5. neither does the SKU
        assert was.data_disks == now.data_disks == o.model.data_disks
        assert was.sku == now.sku == o.model.sku
        assert (was.version, was.reimages, was.restores) == (previous, 0, 0)
        fate = fates.get(instance_id, "untouched")
        # 3. rolled back means on the previous image, on the machine too
        expected_version = NEW if fate in ("healthy", "failed") else previous
        assert now.version == expected_version, (instance_id, fate, now)
        # 6. at most one reimage (one per successful reimage event) and one restore
        reimaged = any(
            isinstance(e, InstanceReimaged) and e.instance_id == instance_id for e in o.events
        )
        assert now.reimages == int(reimaged), (instance_id, fate, now)
        assert now.restores == int(fate == "rolled_back"), (instance_id, fate, now)
        assert finished[0].instance_versions[instance_id] == now.version


def check(o: Outcome) -> tuple[UpgradeRequested, Any, dict[str, str]]:
    """Every invariant of one run."""
    request = check_request(o)
    final = check_final(o)
    check_precheck(o, request, final)
    check_batches(o, request, final)
    fates = instance_fates(o, request)
    check_progress(o, request, final, fates)
    check_verdicts(o, request, fates)
    check_timing(o, request)
    check_machines(o, request, fates)
    return request, final, fates


def label(o: Outcome, final: Any, fates: dict[str, str]) -> None:
    """Hypothesis statistics: how runs ended (``--hypothesis-show-statistics``)."""
    statistic(f"ended: {final.code if isinstance(final, UpgradeFaulted) else type(final).__name__}")
    statistic(f"fates: {sorted(set(fates.values()))}")
    if of(o.events, CancelRequested):
        statistic(f"cancelled, ended: {type(final).__name__} {getattr(final, 'code', '')}")


# -- the properties -------------------------------------------------------------------


@settings(QUICK, max_examples=40)
@given(scenarios())
def test_every_upgrade_keeps_the_rules(s: Scenario) -> None:
    """SPEC 2.2's invariants over random fleets, policies and image behaviour."""
    outcome = asyncio.run(run(s))
    _, final, fates = check(outcome)
    label(outcome, final, fates)


good_images = st.builds(
    SimulationProfile,
    unhealthy_instance_percent=st.just(0),
    boot_seconds=st.integers(0, 300),  # Healthy within the 5-minute health wait
    reimage_failure_percent=st.just(0),
)


@settings(QUICK, max_examples=15)
@given(
    scenarios().flatmap(
        lambda s: good_images.map(
            lambda p: replace(s, profile=p, forced=(), cancel_after=None, expired_credential=False)
        )
    )
)
def test_a_good_image_on_a_healthy_set_completes(s: Scenario) -> None:
    """Healthy set, image that boots within the health wait: the upgrade completes."""
    outcome = asyncio.run(run(s))
    _, final, fates = check(outcome)
    assert isinstance(final, UpgradeCompleted), final
    assert set(fates.values()) == {"healthy"}
    assert {m.version for m in outcome.after.values()} == {NEW}


@settings(QUICK, max_examples=10)
@given(capacity=st.integers(6, 40), batch_percent=st.integers(5, 30), seed=st.integers(0, 99))
def test_zones_are_upgraded_one_after_another(capacity: int, batch_percent: int, seed: int) -> None:
    """Without cross-zone upgrades, a zone is finished before the next one starts."""
    s = Scenario(
        capacity=capacity,
        policy=RollingUpgradePolicy(max_batch_instance_percent=batch_percent),
        use_rolling_policy=True,
        profile=SimulationProfile(boot_seconds=0),
        disable_rollback=False,
        data_disks=(),
        health="probe",
        extension=None,
        zones=("1", "2", "3"),
        forced=(),
        manual=True,
        extra=0,
        cancel_after=None,
        expired_credential=False,
        seed=seed,
    )
    outcome = asyncio.run(run(s))
    request, final, _ = check(outcome)
    assert isinstance(final, UpgradeCompleted), final
    zones = [request.zones[b.members[0]] for b in of(outcome.events, BatchStarted)]
    runs = [z for k, z in enumerate(zones) if k == 0 or zones[k - 1] != z]
    assert len(runs) == len(set(runs)), f"zones in batch order: {zones}"


# -- the checks can fail ---------------------------------------------------------------
#
# A property that never fails proves nothing. Each case below takes a real run, breaks
# one rule in its log, its journal or its machines, and expects ``check`` to object.

SOME_FAIL = Scenario(
    capacity=10,
    policy=RollingUpgradePolicy(
        max_unhealthy_instance_percent=50, max_unhealthy_upgraded_instance_percent=100
    ),
    use_rolling_policy=True,
    profile=SimulationProfile(unhealthy_instance_percent=40, boot_seconds=60),
    disable_rollback=False,
    data_disks=(DataDisk(0, 128), DataDisk(1, 256)),
    health="probe",
    extension=None,
    zones=(),
    forced=(),
    manual=False,
    extra=0,
    cancel_after=None,
    expired_credential=False,
    seed=3,
)


def nth(o: Outcome, kind: type, n: int = 0) -> int:
    """Index of the n-th event of a type in the upgrade's stream."""
    return [i for i, e in enumerate(o.events) if isinstance(e, kind)][n]


def edit(o: Outcome, index: int, **changes: Any) -> None:
    """Change fields of one logged event."""
    o.events[index] = replace(o.events[index], **changes)


def insert(o: Outcome, index: int, event: object) -> None:
    """Log one more event (a copy of the record at ``index`` carries it)."""
    o.events.insert(index, event)
    o.records.insert(index, o.records[index])


def machine(o: Outcome, fate: str) -> SimulatedInstance:
    """The machine (after the upgrade) of an instance that ended with ``fate``."""
    fates = instance_fates(o, o.events[0])
    return o.after[(o.model.key, next(i for i, f in fates.items() if f == fate))]


def oversized_batch(o: Outcome) -> None:
    """1. a batch one larger than allowed."""
    i = nth(o, BatchStarted, 1)
    edit(o, i, members=(*o.events[i].members, o.events[nth(o, BatchStarted, 2)].members[0]))


def set_over_limit(o: Outcome) -> None:
    """2. a later batch started while most of the set was unhealthy (limit 50 %)."""
    i = nth(o, BatchStarted, 1)
    seen = read_before(o.journal, o.records[i].position)
    for instance_id in list(seen)[:6]:
        seen[instance_id] = Health.UNHEALTHY
    edit(o, i, unhealthy=unhealthy(seen))


def rolled_back_elsewhere(o: Outcome) -> None:
    """3. a rollback to the new image in the log."""
    edit(o, nth(o, InstanceRolledBack), version=NEW)


def rolled_back_machine_on_new(o: Outcome) -> None:
    """3. a rolled-back machine still on the new image."""
    machine(o, "rolled_back").version = NEW


def data_disk_changed(o: Outcome) -> None:
    """4. a data disk resized."""
    machine(o, "healthy").data_disks = (DataDisk(0, 128), DataDisk(1, 512))


def sku_changed(o: Outcome) -> None:
    """5. a machine's SKU changed."""
    machine(o, "healthy").sku = "Standard_D4s_v3"


def target_sku_changed(o: Outcome) -> None:
    """5. the target image of another SKU."""
    edit(o, 0, target=replace(o.events[0].target, sku="16.04-LTS"))


def reimaged_twice_in_log(o: Outcome) -> None:
    """6. a second reimage intent for the same instance."""
    i = nth(o, InstanceReimageStarted, 2)
    insert(o, i, o.events[nth(o, InstanceReimageStarted)])


def reimaged_twice_on_machine(o: Outcome) -> None:
    """6. a machine reimaged twice."""
    machine(o, "healthy").reimages = 2


def two_final_events(o: Outcome) -> None:
    """7. a second final event."""
    insert(o, len(o.events) - 1, UpgradeCompleted(0, 0))


def completed_over_threshold(o: Outcome) -> None:
    """7. completed though the upgraded-instance limit was exceeded."""
    policy = replace(o.scenario.policy, max_unhealthy_upgraded_instance_percent=5)
    o.scenario = replace(o.scenario, policy=policy)
    edit(o, 0, policy=policy)
    for i, e in enumerate(o.events):
        if isinstance(e, BatchCompleted):
            edit(o, i, limit_percent=5)


def instance_left_without_outcome(o: Outcome) -> None:
    """8. an instance's health verdict missing."""
    i = nth(o, InstanceHealthy)
    del o.events[i], o.records[i]


def counts_do_not_add_up(o: Outcome) -> None:
    """8. the completed event's counts disagree with the instances."""
    edit(o, len(o.events) - 1, succeeded=o.events[-1].succeeded + 1)


def precheck_miscounted(o: Outcome) -> None:
    """2. the pre-check passed though most of the set was held Unhealthy (limit 50 %)."""
    held = [str(i) for i in range(6)]
    o.scenario = replace(o.scenario, forced=tuple(held))
    seen = read_before(o.journal, o.records[1].position)
    for instance_id in held:
        o.baseline[instance_id] = seen[instance_id] = Health.UNHEALTHY


def no_pause(o: Outcome) -> None:
    """2.2.7: a policy with a pause, yet batches followed each other at once."""
    policy = replace(o.scenario.policy, pause_time_between_batches_s=600)
    o.scenario = replace(o.scenario, policy=policy)
    edit(o, 0, policy=policy)


def batch_after_cancel(o: Outcome) -> None:
    """2.2.8: a batch started after a cancel."""
    insert(o, nth(o, BatchStarted, 1), CancelRequested("User"))


def wrong_verdict(o: Outcome) -> None:
    """2.2.4: an instance whose image makes it Unhealthy passed the health wait."""
    healthy = next(e.instance_id for e in of(o.events, InstanceHealthy))
    o.fate[healthy] = Health.UNHEALTHY


def extensions_failed_quietly(o: Outcome) -> None:
    """2.2.9: extensions failed to provision and the upgrade went on."""
    edit(o, nth(o, InstanceReimaged), failed_extensions=("certs",))


BREAKAGES = [
    oversized_batch,
    set_over_limit,
    rolled_back_elsewhere,
    rolled_back_machine_on_new,
    data_disk_changed,
    sku_changed,
    target_sku_changed,
    reimaged_twice_in_log,
    reimaged_twice_on_machine,
    two_final_events,
    completed_over_threshold,
    instance_left_without_outcome,
    counts_do_not_add_up,
    precheck_miscounted,
    no_pause,
    batch_after_cancel,
    wrong_verdict,
    extensions_failed_quietly,
]


@pytest.fixture(scope="module")
def some_fail_run() -> Outcome:
    """One real run in which some instances fail and are rolled back, yet it completes."""
    outcome = asyncio.run(run(SOME_FAIL))
    _, final, fates = check(outcome)
    assert isinstance(final, UpgradeCompleted), final
    assert {"healthy", "rolled_back"} <= set(fates.values()), fates
    assert len(of(outcome.events, BatchStarted)) >= 3
    return outcome


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.__name__)
def test_the_checks_catch_a_broken_rule(some_fail_run: Outcome, breakage: Any) -> None:
    o = copy.deepcopy(some_fail_run)
    breakage(o)
    with pytest.raises(AssertionError):
        check(o)


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        (
            replace(
                SOME_FAIL,
                policy=replace(SOME_FAIL.policy, max_unhealthy_upgraded_instance_percent=0),
            ),
            UPGRADED,
        ),
        (replace(SOME_FAIL, expired_credential=True), EXTENSIONS),
    ],
    ids=["upgraded-limit", "extensions"],
)
def test_the_checks_catch_a_fault_that_does_not_add_up(scenario: Scenario, code: str) -> None:
    """7. a fault whose numbers do not match the log."""
    o = asyncio.run(run(scenario))
    _, final, _ = check(o)
    assert isinstance(final, UpgradeFaulted) and final.code == code, final
    edit(o, len(o.events) - 1, numerator=final.numerator - 1)
    with pytest.raises(AssertionError):
        check(o)

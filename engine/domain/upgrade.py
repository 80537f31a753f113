"""One rolling upgrade: its state folded from events, and the pure decider (SPEC 2.2).

``UpgradeState.apply`` folds events; ``decide`` looks at the state, the health the
worker observed and the current time, and returns new events plus when to look again.
Neither does I/O, reads a clock or draws random numbers, so replaying a log with the
same code reaches the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from engine.domain.events import (
    BatchCompleted,
    BatchStarted,
    CancelRequested,
    HealthWaitStarted,
    InstanceHealthChanged,
    InstanceHealthTimeout,
    InstanceHealthy,
    InstanceReimaged,
    InstanceReimageFailed,
    InstanceReimageStarted,
    InstanceRollbackFailed,
    InstanceRollbackStarted,
    InstanceRolledBack,
    InstancesApproved,
    PauseStarted,
    PreCheckPassed,
    UpgradeCancelled,
    UpgradeCompleted,
    UpgradeFaulted,
    UpgradeRequested,
)
from engine.domain.grouping import expand
from engine.domain.model import Health, UpgradeStatus

BEFORE = "MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade"
DURING = "MaxUnhealthyInstancePercentExceededInRollingUpgrade"
UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
EXTENSIONS = "VMExtensionProvisioningError"


class Phase(StrEnum):
    """Where one instance is within this upgrade."""

    PENDING = "pending"  # to be upgraded, not started
    REIMAGING = "reimaging"  # intent recorded, no result yet
    WAITING = "waiting"  # reimaged, waiting to become Healthy
    HEALTHY = "healthy"  # upgraded and healthy: done
    FAILED = "failed"  # failed; no rollback (manual upgrade, disabled, or extensions)
    ROLLING_BACK = "rolling_back"  # rollback intent recorded, no result yet
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


SETTLED = frozenset({Phase.HEALTHY, Phase.FAILED, Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED})
FAILED_PHASES = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED})


@dataclass(slots=True)
class InstanceProgress:
    """One instance's part in the upgrade."""

    phase: Phase
    version: str
    health: Health | None = None
    failed_extensions: tuple[str, ...] = ()
    needs_rollback: bool = False


@dataclass
class UpgradeState:
    """Everything decided so far about one upgrade, folded from its stream."""

    request: UpgradeRequested | None = None
    status: UpgradeStatus = UpgradeStatus.ROLLING_FORWARD
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_action: str = "Start"
    last_action_time: datetime | None = None
    prechecked: bool = False
    batches_started: int = 0
    batch: tuple[str, ...] = ()
    batch_done: bool = True
    health_deadline: datetime | None = None
    pause_until: datetime | None = None
    cancel_requested: bool = False
    approved: set[str] = field(default_factory=set)
    instances: dict[str, InstanceProgress] = field(default_factory=dict)
    processed: int = 0
    failed: int = 0
    extension_failures: int = 0
    error: UpgradeFaulted | None = None
    version: int = 0  # stream version folded so far

    @property
    def finished(self) -> bool:
        """True once the upgrade reached a final status."""
        return self.status != UpgradeStatus.ROLLING_FORWARD

    def apply(self, event: object, at: datetime) -> None:
        """Fold one record's event (recorded at engine time ``at``) into the state.

        A group of per-instance events is one record: it counts once towards the
        stream version and folds as its items, in order.
        """
        self.version += 1
        for item in expand(event):
            handler = _FOLD.get(type(item))
            if handler is not None:
                handler(self, item, at)

    def pending_effects(self) -> list[InstanceReimageStarted | InstanceRollbackStarted]:
        """Intents recorded without a result yet: the worker must carry them out."""
        assert self.request is not None
        effects: list[InstanceReimageStarted | InstanceRollbackStarted] = []
        for instance_id in self.batch:
            progress = self.instances[instance_id]
            if progress.phase == Phase.REIMAGING:
                effects.append(
                    InstanceReimageStarted(
                        instance_id,
                        self.request.instance_versions[instance_id],
                        self.request.target.version,
                    )
                )
            elif progress.phase == Phase.ROLLING_BACK:
                target = self.request.instance_versions[instance_id]
                effects.append(InstanceRollbackStarted(instance_id, target))
        return effects

    def health_needed(self) -> tuple[str, ...]:
        """Which instances' health the next decision needs.

        Between batches, the whole set; during a health wait, the waiting instances;
        when the batch is about to complete, every instance this upgrade has upgraded
        (one that went down after its wait still counts against the threshold).
        """
        if self.finished or self.request is None:
            return ()
        if not self.prechecked or self.batch_done:
            return tuple(self.request.instance_versions)  # the whole set
        waiting = tuple(i for i in self.batch if self.instances[i].phase == Phase.WAITING)
        if waiting:
            return waiting
        return tuple(i for i, p in self.instances.items() if p.phase == Phase.HEALTHY)


# -- folding ------------------------------------------------------------------------


def _requested(state: UpgradeState, event: UpgradeRequested, at: datetime) -> None:
    state.request = event
    state.started_at = state.last_action_time = at
    target = event.target.version
    redeploy = set(event.redeploy)
    state.instances = {
        instance_id: InstanceProgress(Phase.PENDING, version)
        for instance_id, version in event.instance_versions.items()
        if version != target or instance_id in redeploy
    }


def _precheck(state: UpgradeState, event: PreCheckPassed, at: datetime) -> None:
    state.prechecked = True


def _batch_started(state: UpgradeState, event: BatchStarted, at: datetime) -> None:
    state.batches_started += 1
    state.batch = event.members
    state.batch_done = False
    state.pause_until = None


def _reimage_started(state: UpgradeState, event: InstanceReimageStarted, at: datetime) -> None:
    state.instances[event.instance_id].phase = Phase.REIMAGING


def _reimaged(state: UpgradeState, event: InstanceReimaged, at: datetime) -> None:
    progress = state.instances[event.instance_id]
    progress.version = event.version
    progress.failed_extensions = event.failed_extensions
    progress.phase = Phase.WAITING


def _reimage_failed(state: UpgradeState, event: InstanceReimageFailed, at: datetime) -> None:
    _fail(state, event.instance_id)


def _health_wait(state: UpgradeState, event: HealthWaitStarted, at: datetime) -> None:
    state.health_deadline = event.deadline


def _health_changed(state: UpgradeState, event: InstanceHealthChanged, at: datetime) -> None:
    state.instances[event.instance_id].health = event.health


def _healthy(state: UpgradeState, event: InstanceHealthy, at: datetime) -> None:
    progress = state.instances[event.instance_id]
    progress.phase = Phase.HEALTHY
    progress.health = Health.HEALTHY


def _timeout(state: UpgradeState, event: InstanceHealthTimeout, at: datetime) -> None:
    _fail(state, event.instance_id)


def _fail(state: UpgradeState, instance_id: str) -> None:
    assert state.request is not None
    progress = state.instances[instance_id]
    if progress.failed_extensions:
        progress.phase = Phase.FAILED  # "left in a failed state" (SPEC 2.2.9)
        state.extension_failures += 1
    elif state.request.automatic_rollback:
        progress.needs_rollback = True
        progress.phase = Phase.FAILED
    else:
        progress.phase = Phase.FAILED


def _rollback_started(state: UpgradeState, event: InstanceRollbackStarted, at: datetime) -> None:
    progress = state.instances[event.instance_id]
    progress.phase = Phase.ROLLING_BACK
    progress.needs_rollback = False


def _rolled_back(state: UpgradeState, event: InstanceRolledBack, at: datetime) -> None:
    progress = state.instances[event.instance_id]
    progress.phase = Phase.ROLLED_BACK
    progress.version = event.version


def _rollback_failed(state: UpgradeState, event: InstanceRollbackFailed, at: datetime) -> None:
    state.instances[event.instance_id].phase = Phase.ROLLBACK_FAILED


def _batch_completed(state: UpgradeState, event: BatchCompleted, at: datetime) -> None:
    state.batch_done = True
    state.health_deadline = None
    state.processed = event.processed_total
    state.failed = event.failed_total


def _pause(state: UpgradeState, event: PauseStarted, at: datetime) -> None:
    state.pause_until = event.until


def _approved(state: UpgradeState, event: InstancesApproved, at: datetime) -> None:
    state.approved.update(event.instance_ids)


def _cancel_requested(state: UpgradeState, event: CancelRequested, at: datetime) -> None:
    state.cancel_requested = True
    state.last_action = "Cancel"
    state.last_action_time = at


def _end(
    state: UpgradeState, event: UpgradeCancelled | UpgradeCompleted | UpgradeFaulted, at: datetime
) -> None:
    # A plain function, not a closure made when the module loads: a fold the mutation
    # tester can reach (it swaps functions when they are called, not when they are made).
    state.status = _END_STATUS[type(event)]
    state.ended_at = at
    if isinstance(event, UpgradeFaulted):
        state.error = event


_END_STATUS = {
    UpgradeCancelled: UpgradeStatus.CANCELLED,
    UpgradeCompleted: UpgradeStatus.COMPLETED,
    UpgradeFaulted: UpgradeStatus.FAULTED,
}


_FOLD: dict[type, Callable[[UpgradeState, Any, datetime], None]] = {
    UpgradeRequested: _requested,
    PreCheckPassed: _precheck,
    BatchStarted: _batch_started,
    InstanceReimageStarted: _reimage_started,
    InstanceReimaged: _reimaged,
    InstanceReimageFailed: _reimage_failed,
    HealthWaitStarted: _health_wait,
    InstanceHealthChanged: _health_changed,
    InstanceHealthy: _healthy,
    InstanceHealthTimeout: _timeout,
    InstanceRollbackStarted: _rollback_started,
    InstanceRolledBack: _rolled_back,
    InstanceRollbackFailed: _rollback_failed,
    BatchCompleted: _batch_completed,
    PauseStarted: _pause,
    InstancesApproved: _approved,
    CancelRequested: _cancel_requested,
    UpgradeCancelled: _end,
    UpgradeCompleted: _end,
    UpgradeFaulted: _end,
}


# -- deciding -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to record now, and when to look again if nothing was recorded."""

    events: tuple[object, ...] = ()
    wait_until: datetime | None = None  # None with no events: wait for a command


def batch_size(total: int, max_batch_percent: int) -> int:
    """``max(1, floor(N * percent / 100))`` (SPEC 2.2.2)."""
    return max(1, total * max_batch_percent // 100)


def exceeds(count: int, total: int, limit_percent: int) -> bool:
    """ "More than" ``limit_percent`` of ``total`` (SPEC 2.2.10), in exact integers."""
    return total > 0 and count * 100 > limit_percent * total


def unhealthy_count(health: Mapping[str, Health]) -> int:
    """Instances whose signal is anything but Healthy (Initializing counts too)."""
    return sum(1 for h in health.values() if h != Health.HEALTHY)


def decide(
    state: UpgradeState,
    health: Mapping[str, Health],
    now: datetime,
    steady_until: datetime | None = None,
) -> Decision:
    """The next step of the upgrade, as a pure function of state, health and time.

    ``steady_until`` is a promise from the fleet that no health signal it was asked
    about changes before then (simulated fleets know; real ones do not say). A wait for
    health then skips the probes before it, which would only have seen the same values:
    the events are the same, the steps far fewer.
    """
    if state.request is None or state.finished:
        return Decision()
    if not state.prechecked:
        return _precheck_decision(state, health)
    if state.batch_done:
        return _between_batches(state, health, now)
    return _within_batch(state, health, now, steady_until)


def _precheck_decision(state: UpgradeState, health: Mapping[str, Health]) -> Decision:
    assert state.request is not None
    total = len(state.request.instance_versions)
    unhealthy = unhealthy_count(health)
    limit = state.request.policy.max_unhealthy_instance_percent
    if exceeds(unhealthy, total, limit):
        return Decision((_fault(BEFORE, unhealthy, total, limit, "of the scale set's instances"),))
    return Decision((PreCheckPassed(unhealthy, total, limit),))


def _fault(code: str, count: int, total: int, limit: int, what: str) -> UpgradeFaulted:
    percent = count * 100 // total if total else 0
    message = (
        f"{percent}% {what} are unhealthy ({count} of {total}) - more than the threshold of "
        f"{limit}%."
    )
    return UpgradeFaulted(code, message, count, total, limit)


def _between_batches(state: UpgradeState, health: Mapping[str, Health], now: datetime) -> Decision:
    request = state.request
    assert request is not None
    if state.cancel_requested:
        return Decision((_cancelled(state),))
    if state.pause_until is not None and now < state.pause_until:
        return Decision(wait_until=state.pause_until)
    pending = [i for i, p in state.instances.items() if p.phase == Phase.PENDING]
    if not pending:
        succeeded = sum(1 for p in state.instances.values() if p.phase == Phase.HEALTHY)
        return Decision((UpgradeCompleted(succeeded, state.failed),))
    if request.deferral:
        pending = [i for i in pending if i in state.approved]
        if not pending:
            return Decision()  # wait for approveRollingUpgrade
    # Right before every batch, the first included (approvals may come long after the
    # pre-check), the whole set is checked again (SPEC 2.2.6).
    total = len(request.instance_versions)
    unhealthy = unhealthy_count(health)
    limit = request.policy.max_unhealthy_instance_percent
    if exceeds(unhealthy, total, limit):
        return Decision((_fault(DURING, unhealthy, total, limit, "of the scale set's instances"),))
    members, size, reason = plan_batch(state, pending, health)
    started = BatchStarted(state.batches_started, members, size, reason, unhealthy, total)
    intents = [
        InstanceReimageStarted(i, request.instance_versions[i], request.target.version)
        for i in members
    ]
    return Decision((started, *intents))


def plan_batch(
    state: UpgradeState, pending: Sequence[str], health: Mapping[str, Health]
) -> tuple[tuple[str, ...], int, str]:
    """Pick the next batch: zone/update-domain boundaries, unhealthy first, size cap."""
    request = state.request
    assert request is not None
    policy = request.policy
    size = batch_size(len(request.instance_versions), policy.max_batch_instance_percent)
    order = sorted(pending, key=int)
    reason = f"next {size} of {len(pending)} pending instances"
    if policy.prioritize_unhealthy_instances:
        order.sort(key=lambda i: health.get(i, Health.UNKNOWN) == Health.HEALTHY)
        reason += ", unhealthy first"
    if request.service_fabric:
        domain = min(request.update_domains[i] for i in order)
        members = [i for i in order if request.update_domains[i] == domain]
        return tuple(members), len(members), f"update domain {domain}"
    if request.zones and not policy.enable_cross_zone_upgrade:
        zone = min(request.zones[i] for i in order)  # finish a zone before the next
        order = [i for i in order if request.zones[i] == zone]
        reason += f", zone {zone or 'regional'}"
    return tuple(order[:size]), size, reason


def _within_batch(
    state: UpgradeState, health: Mapping[str, Health], now: datetime, steady: datetime | None
) -> Decision:
    request = state.request
    assert request is not None
    members = [state.instances[i] for i in state.batch]
    if any(p.phase in (Phase.REIMAGING, Phase.ROLLING_BACK) for p in members):
        return Decision()  # the worker is carrying out intents
    waiting = [i for i in state.batch if state.instances[i].phase == Phase.WAITING]
    if waiting:
        return _health_step(state, waiting, health, now, steady)
    rollbacks = [i for i in state.batch if state.instances[i].needs_rollback]
    if rollbacks:
        events = [InstanceRollbackStarted(i, request.instance_versions[i]) for i in rollbacks]
        return Decision(tuple(events))
    return _complete_batch(state, health, now)


def _health_step(
    state: UpgradeState,
    waiting: list[str],
    health: Mapping[str, Health],
    now: datetime,
    steady: datetime | None,
) -> Decision:
    request = state.request
    assert request is not None
    extension_failed = [i for i in waiting if state.instances[i].failed_extensions]
    if extension_failed:  # provisioning failed: no point in waiting for health
        last = Health.UNHEALTHY
        return Decision(tuple(InstanceHealthTimeout(i, last, 0) for i in extension_failed))
    if request.health_source == "none":  # running + extensions provisioned = healthy
        return Decision(tuple(InstanceHealthy(i) for i in waiting))
    if state.health_deadline is None:
        deadline = now + timedelta(seconds=request.health_timeout_s)
        return Decision((HealthWaitStarted(tuple(waiting), deadline),))
    between = _between_probes(state, now)
    if between is not None:
        return Decision(wait_until=between)
    events: list[object] = []
    for instance_id in waiting:
        observed = health.get(instance_id, Health.UNKNOWN)
        if observed == Health.HEALTHY:
            events.append(InstanceHealthy(instance_id))
        elif observed != state.instances[instance_id].health:
            events.append(InstanceHealthChanged(instance_id, observed))
    if events:
        return Decision(tuple(events))
    started = state.health_deadline - timedelta(seconds=request.health_timeout_s)
    grace_end = started + timedelta(seconds=request.grace_period_s)
    # Nothing changed now; nothing will before ``steady``: the first probe that can see
    # a change is the first one at or after it (the wait ends at the deadline anyway).
    horizon = state.health_deadline if now < state.health_deadline else grace_end
    skip_to = now if steady is None else max(now, min(steady, horizon) - _MICRO)
    next_probe = _next_probe(state, skip_to)
    if now < state.health_deadline:
        return Decision(wait_until=min(state.health_deadline, next_probe))
    # Past the deadline: Initializing means "keep waiting" until the grace period ends;
    # anything else (Unhealthy, Unknown) has failed.
    still_booting = [
        i for i in waiting if state.instances[i].health == Health.INITIALIZING and now < grace_end
    ]
    failed = [i for i in waiting if i not in still_booting]
    if failed:
        waited = int((now - started).total_seconds())
        return Decision(
            tuple(
                InstanceHealthTimeout(i, state.instances[i].health or Health.UNKNOWN, waited)
                for i in failed
            )
        )
    return Decision(wait_until=min(grace_end, next_probe))


_MICRO = timedelta(microseconds=1)


_GRID_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""Probe instants are multiples of the probe interval since this moment, for every upgrade.

One grid for all scale sets makes their observations fall on shared instants: at fleet
scale far fewer distinct instants, each with one group commit for many sets, instead of
every set probing on a grid of its own (measured: 27 % less wall time at 200 x 100). It is
as deterministic as a per-wait grid: a restarted worker observes at the same instants.
"""


def _probe_grid(state: UpgradeState, now: datetime) -> tuple[datetime, int, int]:
    """(grid origin, microseconds since it, probe interval in microseconds)."""
    assert state.request is not None and state.health_deadline is not None
    interval = state.request.probe_interval_s * 1_000_000
    return _GRID_EPOCH, (now - _GRID_EPOCH) // _MICRO, interval


def _next_probe(state: UpgradeState, now: datetime) -> datetime:
    """The next probe instant on the shared grid after ``now``."""
    started, elapsed, interval = _probe_grid(state, now)
    return started + _MICRO * ((elapsed // interval + 1) * interval)


def _between_probes(state: UpgradeState, now: datetime) -> datetime | None:
    """If ``now`` is not a probe time, the next one; None if it is.

    Health is only looked at on this grid (plus the deadline and the end of the grace
    period), so a worker restarted at any moment makes its observations at the same
    times as one that never stopped.
    """
    request, deadline = state.request, state.health_deadline
    assert request is not None and deadline is not None
    started, elapsed, interval = _probe_grid(state, now)
    wait_start = deadline - timedelta(seconds=request.health_timeout_s)
    grace_end = wait_start + timedelta(seconds=request.grace_period_s)
    if now in (deadline, grace_end) or elapsed % interval == 0:
        return None
    nxt = started + _MICRO * (-(-elapsed // interval) * interval)
    for boundary in (deadline, grace_end):
        if now < boundary < nxt:
            nxt = boundary
    return nxt


def _complete_batch(state: UpgradeState, health: Mapping[str, Health], now: datetime) -> Decision:
    request = state.request
    assert request is not None
    succeeded = tuple(i for i in state.batch if state.instances[i].phase == Phase.HEALTHY)
    failed = tuple(i for i in state.batch if state.instances[i].phase in FAILED_PHASES)
    processed = state.processed + len(state.batch)
    failed_total = state.failed + len(failed)
    # Upgraded instances that passed their wait but are not Healthy now count as failed
    # for the threshold, as long as the upgrade runs (SPEC 2.2.5).
    down = tuple(
        i
        for i, p in state.instances.items()
        if p.phase == Phase.HEALTHY and health.get(i, Health.UNKNOWN) != Health.HEALTHY
    )
    limit = request.policy.max_unhealthy_upgraded_instance_percent
    done = BatchCompleted(
        state.batches_started - 1, succeeded, failed, processed, failed_total, limit, down
    )
    if state.cancel_requested:  # SPEC 2.2.8: the running batch finishes, then Cancelled
        return Decision((done,))
    if state.extension_failures:
        message = (
            f"{state.extension_failures} instance(s) failed to provision extensions after the "
            "upgrade (an extension's credential may have expired); they are left failed."
        )
        fault = UpgradeFaulted(EXTENSIONS, message, state.extension_failures, len(state.batch), 0)
        return Decision((done, fault))
    unhealthy = failed_total + len(down)
    if exceeds(unhealthy, processed, limit):
        fault = _fault(UPGRADED, unhealthy, processed, limit, "of the upgraded instances")
        return Decision((done, fault))
    pause = request.policy.pause_time_between_batches_s
    pending = any(p.phase == Phase.PENDING for p in state.instances.values())
    if pause > 0 and pending and not state.cancel_requested:
        return Decision((done, PauseStarted(now + timedelta(seconds=pause))))
    return Decision((done,))


def _cancelled(state: UpgradeState) -> UpgradeCancelled:
    phases = [p.phase for p in state.instances.values()]
    return UpgradeCancelled(
        succeeded=phases.count(Phase.HEALTHY),
        failed=sum(1 for p in phases if p in FAILED_PHASES),
        not_started=phases.count(Phase.PENDING),
    )

"""The pure decider's boundaries, without an engine: state + health + time -> events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engine.domain.events import (
    BatchCompleted,
    BatchStarted,
    HealthWaitStarted,
    InstanceHealthTimeout,
    InstanceHealthy,
    InstanceReimaged,
    InstanceReimageStarted,
    InstanceRollbackFailed,
    InstanceRollbackStarted,
    PreCheckPassed,
    UpgradeFaulted,
    UpgradeRequested,
    gallery_stream,
)
from engine.domain.model import Health, ImageReference, RollingUpgradePolicy, StartedBy
from engine.domain.scale_set import ScaleSetState, start_upgrade
from engine.domain.upgrade import BEFORE, UpgradeState, batch_size, decide, exceeds
from tests.engine.harness import spec

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def request(n: int, **policy: int | bool) -> UpgradeRequested:
    return UpgradeRequested(
        upgrade_id="u1",
        scale_set="s/r/n",
        location="westeurope",
        started_by=StartedBy.PLATFORM,
        target=ImageReference("p", "o", "s", "2.0.0"),
        policy=RollingUpgradePolicy(**policy),  # type: ignore[arg-type]
        automatic_rollback=True,
        deferral=False,
        health_source="probe",
        instance_versions={str(i): "1.0.0" for i in range(n)},
        zones={},
        update_domains={str(i): i % 5 for i in range(n)},
        service_fabric=False,
        health_timeout_s=300,
        probe_interval_s=5,
    )


def healthy(n: int, unhealthy: int = 0) -> dict[str, Health]:
    return {str(i): Health.UNHEALTHY if i < unhealthy else Health.HEALTHY for i in range(n)}


def state_after(*events: object) -> UpgradeState:
    state = UpgradeState()
    for event in events:
        state.apply(event, NOW)
    return state


@pytest.mark.parametrize(
    ("n", "size"), [(1, 1), (4, 1), (5, 1), (6, 1), (9, 1), (10, 2), (11, 2), (99, 19), (100, 20)]
)
def test_batch_size(n: int, size: int) -> None:
    assert batch_size(n, 20) == size


@pytest.mark.parametrize(
    ("count", "total", "limit", "over"),
    [
        (20, 100, 20, False),
        (21, 100, 20, True),
        (1, 5, 20, False),
        (2, 5, 20, True),
        (0, 10, 0, False),
        (1, 10, 0, True),
        (10, 10, 100, False),
        (0, 0, 20, False),
    ],
)
def test_more_than_is_strict(count: int, total: int, limit: int, over: bool) -> None:
    assert exceeds(count, total, limit) is over


def test_precheck_boundary_and_its_inputs_are_recorded() -> None:
    ok = decide(state_after(request(10)), healthy(10, unhealthy=2), NOW)
    assert ok.events == (PreCheckPassed(2, 10, 20),)
    bad = decide(state_after(request(10)), healthy(10, unhealthy=3), NOW)
    (fault,) = bad.events
    assert isinstance(fault, UpgradeFaulted)
    assert (fault.code, fault.numerator, fault.denominator, fault.limit_percent) == (
        BEFORE,
        3,
        10,
        20,
    )


def test_initializing_counts_as_unhealthy_in_the_whole_set_checks() -> None:
    health = healthy(10, unhealthy=2)
    assert isinstance(decide(state_after(request(10)), health, NOW).events[0], PreCheckPassed)
    health["9"] = Health.INITIALIZING  # 3 of 10 not Healthy: more than 20 %
    (fault,) = decide(state_after(request(10)), health, NOW).events
    assert isinstance(fault, UpgradeFaulted)
    assert (fault.numerator, fault.denominator) == (3, 10)


def test_first_batch_records_members_reason_and_intents() -> None:
    state = state_after(request(10), PreCheckPassed(0, 10, 20))
    events = decide(state, healthy(10), NOW).events
    assert isinstance(events[0], BatchStarted)
    assert events[0].members == ("0", "1")
    assert events[1:] == (
        InstanceReimageStarted("0", "1.0.0", "2.0.0"),
        InstanceReimageStarted("1", "1.0.0", "2.0.0"),
    )


def _waiting(n: int = 1) -> UpgradeState:
    req = request(n)
    members = tuple(str(i) for i in range(n))
    return state_after(
        req,
        PreCheckPassed(0, n, 20),
        BatchStarted(0, members, 1, "x", 0, n),
        *(InstanceReimageStarted(i, "1.0.0", "2.0.0") for i in members),
        *(InstanceReimaged(i, "2.0.0") for i in members),
        HealthWaitStarted(members, NOW + timedelta(minutes=5)),
    )


def test_five_minutes_vs_five_minutes_and_one_second() -> None:
    state = _waiting()
    state.instances["0"].health = Health.UNHEALTHY  # recorded as unhealthy while booting
    deadline = NOW + timedelta(minutes=5)
    before = decide(state, {"0": Health.UNHEALTHY}, deadline - timedelta(seconds=5))
    assert before.wait_until == deadline
    (healthy_at_deadline,) = decide(state, {"0": Health.HEALTHY}, deadline).events
    assert isinstance(healthy_at_deadline, InstanceHealthy)
    (timed_out,) = decide(state, {"0": Health.UNHEALTHY}, deadline).events
    assert isinstance(timed_out, InstanceHealthTimeout)
    assert (timed_out.waited_s, timed_out.last_health) == (300, Health.UNHEALTHY)
    # between probes nothing is observed, healthy or not: the next look is on the grid
    later = decide(state, {"0": Health.HEALTHY}, deadline + timedelta(seconds=1))
    assert later.events == ()
    assert later.wait_until == deadline + timedelta(seconds=5)


def test_the_decider_waits_for_the_next_probe_or_the_deadline() -> None:
    state = _waiting()
    state.instances["0"].health = Health.UNHEALTHY
    on_grid = decide(state, {"0": Health.UNHEALTHY}, NOW + timedelta(seconds=10))
    assert (on_grid.events, on_grid.wait_until) == ((), NOW + timedelta(seconds=15))
    off_grid = decide(state, {"0": Health.HEALTHY}, NOW + timedelta(seconds=12))
    assert (off_grid.events, off_grid.wait_until) == ((), NOW + timedelta(seconds=15))


def test_decide_is_pure() -> None:
    state = _waiting(2)
    health = {"0": Health.HEALTHY, "1": Health.INITIALIZING}
    first = decide(state, health, NOW + timedelta(seconds=30))
    second = decide(state, health, NOW + timedelta(seconds=30))
    assert first == second
    assert state.instances["0"].phase == "waiting"  # deciding changed nothing


def test_fault_messages_give_the_percentage_and_the_counts() -> None:
    (fault,) = decide(state_after(request(10)), healthy(10, unhealthy=3), NOW).events
    assert isinstance(fault, UpgradeFaulted)
    assert fault.message == (
        "30% of the scale set's instances are unhealthy (3 of 10) - more than the threshold of 20%."
    )
    # 2 of 3 is 66.67 %: the message rounds down, as the integers it compares
    (fault,) = decide(state_after(request(3)), healthy(3, unhealthy=2), NOW).events
    assert isinstance(fault, UpgradeFaulted)
    assert fault.message.startswith("66% of the scale set's instances are unhealthy (2 of 3)")


def test_a_deadline_between_two_probes_is_looked_at_itself() -> None:
    state = _waiting()
    state.instances["0"].health = Health.UNHEALTHY
    state.health_deadline = NOW + timedelta(seconds=302)  # not on the 5-second grid
    # off the grid nothing is observed (not even a recovery): the next look is the deadline
    early = decide(state, {"0": Health.HEALTHY}, NOW + timedelta(seconds=301))
    assert (early.events, early.wait_until) == ((), NOW + timedelta(seconds=302))
    (timed_out,) = decide(state, {"0": Health.UNHEALTHY}, NOW + timedelta(seconds=302)).events
    assert isinstance(timed_out, InstanceHealthTimeout)


def test_the_end_of_the_grace_period_between_two_probes_is_looked_at_itself() -> None:
    state = state_after(
        replace(request(1), grace_period_s=302),
        PreCheckPassed(0, 1, 20),
        BatchStarted(0, ("0",), 1, "x", 0, 1),
        InstanceReimageStarted("0", "1.0.0", "2.0.0"),
        InstanceReimaged("0", "2.0.0"),
        HealthWaitStarted(("0",), NOW + timedelta(minutes=5)),
    )
    state.instances["0"].health = Health.INITIALIZING  # past the deadline: keep waiting
    waiting = decide(state, {"0": Health.INITIALIZING}, NOW + timedelta(seconds=301))
    assert (waiting.events, waiting.wait_until) == ((), NOW + timedelta(seconds=302))
    (timed_out,) = decide(state, {"0": Health.INITIALIZING}, NOW + timedelta(seconds=302)).events
    assert isinstance(timed_out, InstanceHealthTimeout)
    assert (timed_out.waited_s, timed_out.last_health) == (302, Health.INITIALIZING)
    # on the grid, past the deadline, still booting: the next probe, or the grace end
    on_grid = decide(state, {"0": Health.INITIALIZING}, NOW + timedelta(seconds=300))
    assert (on_grid.events, on_grid.wait_until) == ((), NOW + timedelta(seconds=302))


def test_gallery_streams_are_named_by_the_image_id_in_lower_case() -> None:
    """Logs already written name them so: the name is part of the log's contract."""
    image = "/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/galleries/X/images/App"
    assert gallery_stream(image) == (
        "gallery-subscriptions/s/resourcegroups/g/providers/microsoft.compute/galleries/x/images/app"
    )


def test_a_failed_instance_is_failed_until_its_rollback_and_a_failed_rollback_counts() -> None:
    state = _waiting(2)
    timed_out = InstanceHealthTimeout("0", Health.UNHEALTHY, 300)
    state.apply(timed_out, NOW)
    failed = state.instances["0"]
    assert (failed.phase, failed.needs_rollback) == ("failed", True)  # "1" still waits
    state.apply(InstanceHealthy("1"), NOW)
    (rollback,) = decide(state, {}, NOW).events
    assert rollback == InstanceRollbackStarted("0", "1.0.0")
    state.apply(rollback, NOW)
    assert (failed.phase, failed.needs_rollback) == ("rolling_back", False)
    state.apply(InstanceRollbackFailed("0", "OSProvisioningTimedOut"), NOW)
    assert failed.phase == "rollback_failed"
    done, fault = decide(state, {"0": Health.UNHEALTHY, "1": Health.HEALTHY}, NOW).events
    assert isinstance(done, BatchCompleted) and isinstance(fault, UpgradeFaulted)
    assert (done.succeeded, done.failed, done.failed_total) == (("1",), ("0",), 1)


def test_starting_on_a_missing_or_deleted_set_is_a_lookup_error() -> None:
    for state in (ScaleSetState(), ScaleSetState(spec=spec("gone", 2), deleted=True)):
        with pytest.raises(LookupError, match=r"^the scale set does not exist$"):
            start_upgrade(state, StartedBy.USER, "2.0.0")

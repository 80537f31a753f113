"""The automatic schedule and the upgrade request as pure functions (SPEC 2.1).

Through the engine the catalog always knows when a version came, a deleted set has no
worker and a pinned version cannot have automatic upgrades; these call the deciders
directly, so the rules hold whoever calls them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from engine.domain.catalog import Catalog
from engine.domain.events import (
    GalleryImageVersionPublished,
    GalleryImageVersionReplicated,
    ImageVersionPublished,
    ScaleSetCreated,
    ScaleSetDeleted,
    ScaleSetUpgradeFinished,
    ScaleSetUpgradeStarted,
)
from engine.domain.model import HealthExtension, ImageReference, StartedBy
from engine.domain.scale_set import (
    EngineSettings,
    ScaleSetState,
    build_request,
    manual_target,
    schedule_automatic,
)
from tests.engine.harness import LOCATION, T0, UBUNTU, spec

SETTINGS = EngineSettings()
GALLERY = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/App"


def created(capacity: int = 2, version: str = "1.0.0", **kwargs: object) -> ScaleSetState:
    state = ScaleSetState()
    model = spec("s", capacity, **kwargs)  # type: ignore[arg-type]
    state.apply(ScaleSetCreated(model, dict.fromkeys(model.instance_ids(), version)), T0)
    return state


def after_platform_upgrade(state: ScaleSetState, status: str, versions: dict[str, str]) -> None:
    state.apply(ScaleSetUpgradeStarted("u1", StartedBy.PLATFORM, "1.1.0"), T0)
    state.apply(ScaleSetUpgradeFinished("u1", status, versions), T0)


def test_a_later_version_is_timed_from_its_availability_or_from_now_if_unknown() -> None:
    state = created()
    after_platform_upgrade(state, "Completed", {"0": "1.1.0", "1": "1.1.0"})
    now = T0 + timedelta(hours=5)
    came = T0 + timedelta(hours=4)
    timer = schedule_automatic(state, "1.2.0", now, SETTINGS, came)
    assert timer is not None
    assert (timer.reason, timer.counted_from) == ("new version available", came)
    assert timer.due_at == now  # came 60 min ago or more: its window has passed
    unknown = schedule_automatic(state, "1.2.0", now, SETTINGS, None)
    assert unknown is not None and unknown.counted_from == now
    assert unknown.due_at == now + timedelta(seconds=unknown.delay_s)
    assert 30 * 60 <= unknown.delay_s < 60 * 60


def test_the_first_rollout_is_counted_from_the_later_of_enabling_and_availability() -> None:
    state = created()
    came = T0 + timedelta(hours=7)
    timer = schedule_automatic(state, "1.1.0", came, SETTINGS, came)
    assert timer is not None and timer.reason == "first rollout after enabling"
    assert (timer.counted_from, timer.due_at) == (came, came + timedelta(seconds=timer.delay_s))
    before = schedule_automatic(state, "1.1.0", T0, SETTINGS, T0 - timedelta(days=3))
    assert before is not None and before.counted_from == T0  # there before the enabling


def test_a_newer_version_moves_the_timer_and_says_so() -> None:
    state = created()
    first = schedule_automatic(state, "1.1.0", T0, SETTINGS, T0)
    assert first is not None
    state.apply(first, T0)
    newer = schedule_automatic(state, "1.2.0", T0 + timedelta(minutes=5), SETTINGS, None)
    assert newer == replace(first, target_version="1.2.0", reason="newer version available")


def test_no_schedule_for_deleted_sets_or_pinned_versions() -> None:
    deleted = created()
    deleted.apply(ScaleSetDeleted(deleted.spec.key), T0)  # type: ignore[union-attr]
    assert schedule_automatic(deleted, "1.1.0", T0, SETTINGS, T0) is None
    pinned = created()
    assert pinned.spec is not None
    pinned.spec = replace(pinned.spec, image=ImageReference(*UBUNTU, "1.0.0"))
    assert schedule_automatic(pinned, "1.1.0", T0, SETTINGS, T0) is None


@pytest.mark.parametrize(
    ("status", "ended_on", "not_retried"),
    [
        ("Faulted", ("1.1.0", "1.0.0"), "1.1.0"),
        ("Cancelled", ("1.1.0", "1.0.0"), "1.1.0"),
        ("Completed", ("1.1.0", "1.0.0"), "1.1.0"),  # one rolled back
        ("Completed", ("1.1.0", "1.1.0"), None),
    ],
)
def test_a_platform_upgrade_that_did_not_bring_every_instance_is_not_retried(
    status: str, ended_on: tuple[str, str], not_retried: str | None
) -> None:
    state = created()
    after_platform_upgrade(state, status, dict(zip(("0", "1"), ended_on, strict=True)))
    assert state.not_retried == not_retried
    if not_retried is not None:
        assert schedule_automatic(state, "1.1.0", T0, SETTINGS, T0) is None
    assert schedule_automatic(state, "1.2.0", T0, SETTINGS, T0) is not None  # a newer one is


def test_a_manual_upgrade_targets_the_highest_version_by_number() -> None:
    state = created(version="1.9.0")
    assert manual_target(state, "1.10.0") == "1.10.0"  # not the larger string "1.9.0"
    assert manual_target(state, None) == "1.9.0"
    empty = created(0)
    assert manual_target(empty, None) == "latest"  # the model's version: nothing to go by


def test_the_request_carries_the_location_the_gallery_image_and_the_grace_period() -> None:
    extension = HealthExtension(interval_s=60, number_of_probes=24)
    state = created(extension=extension, image=ImageReference(id=GALLERY))
    started = ScaleSetUpgradeStarted("u1", StartedBy.PLATFORM, "2.0.0")
    request = build_request(state, started, SETTINGS)
    assert request.location == LOCATION
    assert request.target == ImageReference(id=GALLERY, version="2.0.0")
    assert request.grace_period_s == 60 * 24  # interval x probes when no gracePeriod is set


def test_a_gallery_version_is_available_where_and_when_it_was_replicated() -> None:
    catalog = Catalog()
    image = ImageReference(id=GALLERY)
    catalog.apply(GalleryImageVersionPublished(GALLERY, "2.0.0", ("eastus",)), T0)
    assert catalog.available_at(image, "eastus", "2.0.0") == T0
    assert catalog.available_at(image, LOCATION, "2.0.0") is None
    later = T0 + timedelta(hours=2)
    catalog.apply(GalleryImageVersionReplicated(GALLERY.upper(), "2.0.0", "WestEurope"), later)
    assert catalog.latest(image, LOCATION) == "2.0.0"
    assert catalog.available_at(image, LOCATION.upper(), "2.0.0") == later
    catalog.apply(
        GalleryImageVersionReplicated(GALLERY, "2.0.0", LOCATION), later + timedelta(hours=1)
    )
    assert catalog.available_at(image, LOCATION, "2.0.0") == later  # the first time counts
    catalog.apply(GalleryImageVersionReplicated(GALLERY, "9.0.0", LOCATION), later)  # unknown
    assert catalog.available_at(image, LOCATION, "9.0.0") is None
    platform = ImageReference(*UBUNTU)
    catalog.apply(ImageVersionPublished("WestEurope", *UBUNTU, "1.0.0"), T0)
    assert catalog.available_at(platform, LOCATION, "1.0.0") == T0
    assert catalog.latest(platform, LOCATION) == "1.0.0"

"""Every numbered rule of SPEC section 2, through the embedding API, in virtual time."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from engine.domain.events import (
    BatchStarted,
    HealthWaitStarted,
    InstanceHealthTimeout,
    InstanceReimaged,
    InstanceRolledBack,
    UpgradeFaulted,
    UpgradeRequested,
)
from engine.domain.model import (
    DataDisk,
    Extension,
    Health,
    HealthExtension,
    ImageReference,
    RollingUpgradePolicy,
    UpgradeStatus,
)
from engine.domain.scale_set import EngineSettings, OperationNotAllowedError
from engine.domain.upgrade import BEFORE, DURING, EXTENSIONS, UPGRADED
from engine.domain.validation import InvalidParameterError
from engine.runtime.engine import EngineStalledError
from tests.engine.harness import LOCATION, RG, SUB, T0, World, spec, world


def key(name: str) -> str:
    return f"{SUB}/{RG}/{name}"


async def batches(w: World) -> list[tuple[str, ...]]:
    return [e.members for t, e in await w.events("upgrade-") if isinstance(e, BatchStarted)]


async def run_upgrade(w: World, name: str = "web") -> object:
    return await w.engine.wait_for_upgrade(SUB, RG, name)


# -- 2.1 what starts an upgrade ---------------------------------------------------------


async def test_first_automatic_rollout_is_within_three_hours_of_enabling() -> None:
    async with world() as w:
        await w.create(spec("a", 5, automatic=False))
        await w.publish("1.1.0")
        await w.clock.advance(10 * 3600)
        enabled_at = w.clock.now()
        await w.engine.create_or_update_scale_set(spec("a", 5))
        upgrade = await run_upgrade(w, "a")
        assert upgrade.request.started_by == "Platform"
        assert enabled_at <= upgrade.started_at < enabled_at + timedelta(hours=3)


async def test_waiting_for_an_upgrade_that_cannot_come_fails_fast() -> None:
    async with world() as w:
        await w.create(spec("idle", 3, automatic=False))
        with pytest.raises(EngineStalledError):
            await run_upgrade(w, "idle")


async def test_later_rollouts_start_30_to_60_minutes_after_publication() -> None:
    async with world() as w:
        await w.create(spec("a", 5))
        await w.publish("1.1.0")
        await run_upgrade(w, "a")
        published_at = w.clock.now()
        await w.publish("1.2.0")
        second = await w.engine.wait_for_upgrade(SUB, RG, "a", upgrade_id=None)
        while second.request.target.version != "1.2.0":
            await w.clock.advance(60)
            second = await w.engine.wait_for_upgrade(SUB, RG, "a")
        delay = second.started_at - published_at
        assert timedelta(minutes=30) <= delay < timedelta(minutes=60)
        assert second.status == UpgradeStatus.COMPLETED


async def test_no_automatic_upgrade_without_enabling_or_without_latest() -> None:
    async with world() as w:
        await w.create(spec("off", 5, automatic=False))
        await w.create(spec("pinned", 5, automatic=False, image=ImageReference(
            "Canonical", "UbuntuServer", "18.04-LTS", "1.0.0")))  # fmt: skip
        await w.publish("1.1.0")
        await w.clock.advance(24 * 3600)
        for name in ("off", "pinned"):
            worker = w.engine.scale_set(SUB, RG, name)
            assert worker.state.upgrades == []
            assert set(worker.state.instance_versions.values()) == {"1.0.0"}


async def test_automatic_upgrades_never_change_the_sku() -> None:
    async with world() as w:
        await w.create(spec("a", 5))
        await w.engine.publish_image_version(
            LOCATION, "Canonical", "UbuntuServer", "20.04-LTS", "9.0.0"
        )
        await w.publish("1.1.0")
        upgrade = await run_upgrade(w, "a")
        assert upgrade.request.target == ImageReference(
            "Canonical", "UbuntuServer", "18.04-LTS", "1.1.0"
        )
        assert {w.fleet.instance(key("a"), str(i)).version for i in range(5)} == {"1.1.0"}


async def test_gallery_versions_must_be_replicated_here_and_not_excluded() -> None:
    image_id = (
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/gal/images/app"
    )
    gallery = ImageReference(id=image_id)
    async with world() as w:
        await w.engine.publish_gallery_image_version(image_id, "1.0.0", [LOCATION])
        await w.create(spec("g", 4, image=gallery))
        await w.engine.publish_gallery_image_version(image_id, "2.0.0", ["eastus"])
        await w.engine.publish_gallery_image_version(
            image_id, "3.0.0", [LOCATION], exclude_from_latest=True
        )
        await w.clock.advance(6 * 3600)
        assert w.engine.scale_set(SUB, RG, "g").state.upgrades == []
        await w.engine.replicate_gallery_image_version(image_id, "2.0.0", LOCATION)
        upgrade = await run_upgrade(w, "g")
        assert upgrade.request.target.version == "2.0.0"
        assert upgrade.status == UpgradeStatus.COMPLETED


async def test_manual_upgrade_moves_to_latest_and_skips_instances_already_there() -> None:
    async with world() as w:
        await w.create(spec("m", 6, automatic=False))
        await w.publish("1.1.0")
        w.fleet.force_health(key("m"), "0", Health.HEALTHY)
        upgrade_id = await w.engine.start_os_upgrade(SUB, RG, "m")
        first = await w.engine.wait_for_upgrade(SUB, RG, "m", upgrade_id)
        assert first.status == UpgradeStatus.COMPLETED
        assert first.request.started_by == "User"
        second = await w.engine.wait_for_upgrade(
            SUB, RG, "m", await w.engine.start_os_upgrade(SUB, RG, "m")
        )
        assert second.status == UpgradeStatus.COMPLETED
        assert second.instances == {}  # everyone already on 1.1.0: nobody touched
        assert all(w.fleet.instance(key("m"), str(i)).reimages == 1 for i in range(6))


async def test_manual_upgrade_never_rolls_back() -> None:
    async with world() as w:
        await w.create(spec("m", 5, automatic=False))
        await w.publish("1.1.0", unhealthy_instance_percent=100)
        upgrade = await w.engine.wait_for_upgrade(
            SUB, RG, "m", await w.engine.start_os_upgrade(SUB, RG, "m")
        )
        assert upgrade.status == UpgradeStatus.FAULTED
        assert not any(isinstance(e, InstanceRolledBack) for _, e in await w.events("upgrade-"))
        assert w.fleet.instance(key("m"), "0").version == "1.1.0"


async def test_a_second_start_while_one_runs_is_refused() -> None:
    async with world() as w:
        await w.create(spec("m", 5, automatic=False))
        await w.publish("1.1.0", boot_seconds=100)
        await w.engine.start_os_upgrade(SUB, RG, "m")
        with pytest.raises(OperationNotAllowedError):
            await w.engine.start_os_upgrade(SUB, RG, "m")
        upgrade = await run_upgrade(w, "m")
        assert upgrade.status == UpgradeStatus.COMPLETED


# -- 2.2 the algorithm ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unhealthy", "expected"), [(2, UpgradeStatus.COMPLETED), (3, UpgradeStatus.FAULTED)]
)
async def test_precheck_allows_exactly_the_limit(unhealthy: int, expected: UpgradeStatus) -> None:
    async with world() as w:
        await w.create(spec("p", 10))
        for i in range(unhealthy):
            w.fleet.force_health(key("p"), str(i), Health.UNHEALTHY)
        await w.publish("1.1.0")
        upgrade = await run_upgrade(w, "p")
        assert upgrade.status == expected
        if expected == UpgradeStatus.FAULTED:
            assert upgrade.error.code == BEFORE
            assert (upgrade.error.numerator, upgrade.error.denominator) == (3, 10)
            assert await batches(w) == []


@pytest.mark.parametrize(
    ("capacity", "size"), [(1, 1), (5, 1), (6, 1), (9, 1), (10, 2), (14, 2), (15, 3), (100, 20)]
)
async def test_batch_size_is_a_fifth_rounded_down_at_least_one(capacity: int, size: int) -> None:
    async with world() as w:
        await w.create(spec("b", capacity))
        await w.publish("1.1.0", boot_seconds=0)
        await run_upgrade(w, "b")
        sizes = [len(m) for m in await batches(w)]
        assert max(sizes) == size
        assert sum(sizes) == capacity


async def test_unhealthy_instances_go_first_when_prioritised() -> None:
    async with world() as w:
        policy = RollingUpgradePolicy(prioritize_unhealthy_instances=True)
        await w.create(spec("u", 10, rolling=policy, use_rolling_policy=True))
        w.fleet.force_health(key("u"), "7", Health.UNHEALTHY)
        w.fleet.force_health(key("u"), "9", Health.UNHEALTHY)
        await w.publish("1.1.0", boot_seconds=0)
        await run_upgrade(w, "u")
        assert (await batches(w))[0] == ("7", "9")
        (first, *_) = [e for _, e in await w.events("upgrade-") if isinstance(e, BatchStarted)]
        assert first.reason == "next 2 of 10 pending instances, unhealthy first"
        assert (first.batch_size, first.unhealthy, first.total) == (2, 2, 10)


async def test_service_fabric_goes_update_domain_by_update_domain() -> None:
    async with world() as w:
        sf = spec(
            "sf", 10, service_fabric=True, service_fabric_durability="Silver", update_domains=5
        )
        await w.create(sf)
        await w.publish("1.1.0", boot_seconds=0)
        await run_upgrade(w, "sf")
        assert await batches(w) == [("0", "5"), ("1", "6"), ("2", "7"), ("3", "8"), ("4", "9")]


async def test_zones_go_one_at_a_time_unless_cross_zone() -> None:
    async with world() as w:
        await w.create(spec("z", 12, zones=("1", "2", "3")))
        cross = RollingUpgradePolicy(enable_cross_zone_upgrade=True)
        await w.create(spec("x", 12, zones=("1", "2", "3"), rolling=cross, use_rolling_policy=True))
        await w.publish("1.1.0", boot_seconds=0)
        await run_upgrade(w, "z")
        await run_upgrade(w, "x")
        events = [e for _, e in await w.events("upgrade-") if isinstance(e, BatchStarted)]
        requests = {
            e.upgrade_id: e
            for _, e in await w.events("upgrade-")
            if isinstance(e, UpgradeRequested)
        }
        assert len(requests) == 2
        zoned = [b.members for b in events if "zone" in b.reason]
        assert all(len({int(i) % 3 for i in members}) == 1 for members in zoned)
        assert any(
            len({int(i) % 3 for i in b.members}) > 1 for b in events if "zone" not in b.reason
        )
        # zone "1" holds instances 0, 3, 6, 9 (and goes first): two batches of 2
        assert [(b.members, b.reason) for b in events if "zone" in b.reason][:2] == [
            (("0", "3"), "next 2 of 12 pending instances, zone 1"),
            (("6", "9"), "next 2 of 10 pending instances, zone 1"),
        ]


async def test_data_disks_are_kept_and_extensions_provisioned_again() -> None:
    disks = (DataDisk(0, 128), DataDisk(1, 512))
    app = Extension("app", credential_expires_at=T0 + timedelta(hours=4))
    async with world() as w:
        await w.create(spec("d", 5, data_disks=disks, extensions=(Extension("monitor"), app)))
        await w.publish("1.1.0")
        first = await run_upgrade(w, "d")
        assert first.status == UpgradeStatus.COMPLETED
        assert w.clock.now() < T0 + timedelta(hours=4)  # every credential still valid
        assert all(w.fleet.instance(key("d"), str(i)).data_disks == disks for i in range(5))
        await w.clock.advance((T0 + timedelta(hours=5) - w.clock.now()).total_seconds())
        await w.publish("1.2.0")  # app's credential has expired since the last reimage
        await w.clock.advance(2 * 3600)
        second = await w.engine.wait_for_upgrade(
            SUB, RG, "d", w.engine.scale_set(SUB, RG, "d").state.upgrades[1]
        )
        reimaged = [
            (e.instance_id, e.version, e.failed_extensions)
            for _, e in await w.events("upgrade-")
            if isinstance(e, InstanceReimaged)
        ]
        # every reimage provisions the model's extensions again: the first five found
        # them all valid, the next one found app's credential expired (monitor is fine)
        assert reimaged == [(str(i), "1.1.0", ()) for i in range(5)] + [("0", "1.2.0", ("app",))]
        assert second.status == UpgradeStatus.FAULTED
        assert second.error.code == EXTENSIONS
        assert all(w.fleet.instance(key("d"), str(i)).data_disks == disks for i in range(5))


@pytest.mark.parametrize(("boot", "healthy"), [(300, True), (301, False)])
async def test_health_wait_is_five_minutes(boot: int, healthy: bool) -> None:
    async with world() as w:
        await w.create(spec("h", 1))
        await w.publish("1.1.0", boot_seconds=boot)
        upgrade = await run_upgrade(w, "h")
        progress = upgrade.instances["0"]
        assert (progress.phase == "healthy") is healthy
        if not healthy:
            assert progress.phase == "rolled_back"
            assert w.fleet.instance(key("h"), "0").version == "1.0.0"


@pytest.mark.parametrize(
    ("forced", "phase"), [(Health.INITIALIZING, "healthy"), (Health.UNKNOWN, "rolled_back")]
)
async def test_initializing_keeps_waiting_unknown_counts_as_unhealthy(
    forced: Health, phase: str
) -> None:
    extension = HealthExtension(interval_s=5, number_of_probes=1, grace_period_s=900)
    async with world(autojump=False) as w:
        await w.create(spec("i", 1, extension=extension))
        await w.publish("1.1.0", boot_seconds=60)
        worker = await w.in_batch("i")
        w.fleet.force_health(key("i"), "0", forced)
        assert worker.upgrade is not None and worker.upgrade.request is not None
        upgrade_id = worker.upgrade.request.upgrade_id
        await w.clock.advance(400)  # past the 300 s deadline
        w.fleet.force_health(key("i"), "0", Health.HEALTHY)  # recovers after the deadline
        upgrade = await w.finish("i", upgrade_id)
        assert upgrade.instances["0"].phase == phase


async def test_failed_instances_are_rolled_back_unless_disabled() -> None:
    async with world() as w:
        await w.create(spec("r", 5))
        await w.create(spec("n", 5, disable_rollback=True))
        await w.publish("1.1.0", unhealthy_instance_percent=100)
        rolled = await run_upgrade(w, "r")
        kept = await run_upgrade(w, "n")
        assert rolled.instances["0"].phase == "rolled_back"
        assert w.fleet.instance(key("r"), "0").version == "1.0.0"
        assert kept.instances["0"].phase == "failed"
        assert w.fleet.instance(key("n"), "0").version == "1.1.0"


async def test_without_a_health_source_healthy_means_extensions_provisioned() -> None:
    expired = Extension("app", credential_expires_at=T0 - timedelta(days=1))
    async with world() as w:
        await w.create(spec("plain", 5, automatic=False, probe=False))
        await w.create(spec("broken", 5, automatic=False, probe=False, extensions=(expired,)))
        await w.publish("1.1.0", unhealthy_instance_percent=100)  # the signal is not consulted
        upgrade = await w.engine.wait_for_upgrade(
            SUB, RG, "plain", await w.engine.start_os_upgrade(SUB, RG, "plain")
        )
        assert upgrade.status == UpgradeStatus.COMPLETED
        assert not any(isinstance(e, InstanceHealthTimeout) for _, e in await w.events("upgrade-"))
        # running is not enough: an extension that failed to provision makes it unhealthy
        broken = await w.engine.wait_for_upgrade(
            SUB, RG, "broken", await w.engine.start_os_upgrade(SUB, RG, "broken")
        )
        assert broken.status == UpgradeStatus.FAULTED
        assert broken.error.code == EXTENSIONS
        assert broken.instances["0"].phase == "failed"
        plain_and_broken = [e for _, e in await w.events("upgrade-")]
        assert not any(isinstance(e, HealthWaitStarted) for e in plain_and_broken)
        (timeout,) = [e for e in plain_and_broken if isinstance(e, InstanceHealthTimeout)]
        assert (timeout.instance_id, timeout.last_health, timeout.waited_s) == (
            "0",
            Health.UNHEALTHY,
            0,
        )
        assert [i for i, p in broken.instances.items() if p.phase == "healthy"] == []


@pytest.mark.parametrize(
    ("limit", "status"), [(20, UpgradeStatus.FAULTED), (100, UpgradeStatus.COMPLETED)]
)
async def test_upgraded_instance_threshold(limit: int, status: UpgradeStatus) -> None:
    policy = RollingUpgradePolicy(max_unhealthy_upgraded_instance_percent=limit)
    async with world() as w:
        await w.create(spec("t", 10, rolling=policy, use_rolling_policy=True))
        await w.publish("1.1.0", unhealthy_instance_percent=100, boot_seconds=0)
        upgrade = await run_upgrade(w, "t")
        assert upgrade.status == status
        if status == UpgradeStatus.FAULTED:
            assert upgrade.error.code == UPGRADED
            assert len(await batches(w)) == 1  # stopped after the first batch: 2 of 2 failed


async def test_exactly_twenty_percent_of_upgraded_failing_is_allowed() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("e", 10, disable_rollback=True))
        await w.publish("1.1.0", boot_seconds=60)
        worker = w.engine.scale_set(SUB, RG, "e")
        await w.run_until(
            lambda: worker.upgrade is not None and worker.upgrade.batches_started == 5
        )
        for instance_id in worker.upgrade.batch:  # the last batch fails: 2 of 10 = 20 %
            w.fleet.force_health(key("e"), instance_id, Health.UNHEALTHY)
        upgrade = await w.finish("e")
        assert upgrade.status == UpgradeStatus.COMPLETED
        assert upgrade.failed == 2


async def test_more_than_twenty_percent_of_upgraded_failing_faults() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("f", 10, disable_rollback=True))
        await w.publish("1.1.0", boot_seconds=60)
        worker = await w.in_batch("f")
        w.fleet.force_health(key("f"), worker.upgrade.batch[0], Health.UNHEALTHY)
        upgrade = await w.finish("f")
        faults = [e for _, e in await w.events("upgrade-") if isinstance(e, UpgradeFaulted)]
        assert upgrade.status == UpgradeStatus.FAULTED  # 1 of 2 processed = 50 % > 20 %
        assert (faults[0].numerator, faults[0].denominator, faults[0].limit_percent) == (1, 2, 20)


async def test_whole_set_check_before_each_batch_stops_the_run() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("w", 10))
        await w.publish("1.1.0", boot_seconds=60)
        await w.in_batch("w")
        for i in ("6", "7", "8"):  # maintenance the engine did not cause
            w.fleet.force_health(key("w"), i, Health.UNHEALTHY)
        upgrade = await w.finish("w")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error.code == DURING
        assert len(await batches(w)) == 1  # the running batch finished; no next one


async def test_pause_between_batches() -> None:
    policy = RollingUpgradePolicy(pause_time_between_batches_s=120)
    async with world() as w:
        await w.create(spec("p", 10, rolling=policy, use_rolling_policy=True))
        await w.publish("1.1.0", boot_seconds=0)
        upgrade = await run_upgrade(w, "p")
        assert upgrade.ended_at - upgrade.started_at == timedelta(seconds=4 * 120)


async def test_automatic_upgrades_use_default_policy_unless_told_otherwise() -> None:
    custom = RollingUpgradePolicy(max_batch_instance_percent=50, pause_time_between_batches_s=60)
    async with world() as w:
        await w.create(spec("default", 10, rolling=custom))
        await w.create(spec("custom", 10, rolling=custom, use_rolling_policy=True))
        await w.publish("1.1.0", boot_seconds=0)
        default = await run_upgrade(w, "default")
        own = await run_upgrade(w, "custom")
        assert default.request.policy == RollingUpgradePolicy()
        assert own.request.policy == custom
        sizes = {}
        for _, event in await w.events("upgrade-"):
            if isinstance(event, UpgradeRequested):
                name = event.scale_set.rsplit("/", 1)[1]
            elif isinstance(event, BatchStarted):
                sizes.setdefault(name, set()).add(len(event.members))
        assert sizes == {"default": {2}, "custom": {5}}
        assert own.ended_at - own.started_at == timedelta(seconds=60)  # one pause


async def test_cancel_lets_the_running_batch_finish_then_stops() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("c", 10))
        await w.publish("1.1.0", boot_seconds=90)
        await w.in_batch("c")
        await w.engine.cancel_upgrade(SUB, RG, "c")
        upgrade = await w.finish("c")
        assert upgrade.status == UpgradeStatus.CANCELLED
        assert upgrade.last_action == "Cancel"
        first = (await batches(w))[0]
        assert len(await batches(w)) == 1
        assert all(upgrade.instances[i].phase == "healthy" for i in first)
        with pytest.raises(OperationNotAllowedError, match="There is no ongoing Rolling Upgrade"):
            await w.engine.cancel_upgrade(SUB, RG, "c")


async def test_expired_credentials_fault_the_first_batch_and_a_redeploy_fixes_all() -> None:
    expired = Extension("app", credential_expires_at=T0 - timedelta(days=1))
    async with world() as w:
        broken = spec("x", 10, extensions=(expired,))
        await w.create(broken)
        await w.publish("1.1.0", boot_seconds=0)
        upgrade = await run_upgrade(w, "x")
        assert upgrade.status == UpgradeStatus.FAULTED
        assert upgrade.error.code == EXTENSIONS
        error = upgrade.error
        assert (error.numerator, error.denominator, error.limit_percent) == (2, 2, 0)
        assert error.message == (
            "2 instance(s) failed to provision extensions after the upgrade (an extension's "
            "credential may have expired); they are left failed."
        )
        failed = [i for i, p in upgrade.instances.items() if p.phase == "failed"]
        assert sorted(failed) == ["0", "1"]  # the first batch, left failed (no rollback)
        fresh = Extension("app", credential_expires_at=T0 + timedelta(days=365))
        await w.engine.create_or_update_scale_set(replace(broken, extensions=(fresh,)))
        redeploy = await w.engine.wait_for_upgrade(
            SUB, RG, "x", await w.engine.start_os_upgrade(SUB, RG, "x")
        )
        assert redeploy.status == UpgradeStatus.COMPLETED
        assert set(redeploy.instances) == {str(i) for i in range(10)}  # failed ones too
        assert all(
            w.fleet.instance(key("x"), str(i)).reimages == (2 if str(i) in failed else 1)
            for i in range(10)
        )


async def test_deferral_waits_for_approval() -> None:
    async with world() as w:
        await w.create(spec("d", 5, deferral=True))
        await w.publish("1.1.0", boot_seconds=0)
        await w.clock.advance(6 * 3600)
        worker = w.engine.scale_set(SUB, RG, "d")
        assert worker.upgrade is not None and await batches(w) == []
        await w.engine.approve_upgrade(SUB, RG, "d", ["3"])
        await w.engine.settle()
        assert await batches(w) == [("3",)]
        await w.engine.approve_upgrade(SUB, RG, "d")
        upgrade = await run_upgrade(w, "d")
        assert upgrade.status == UpgradeStatus.COMPLETED


async def test_fleet_wide_limit_on_concurrent_upgrades() -> None:
    async with world(
        settings=EngineSettings(max_concurrent_upgrades=2, first_rollout_max_delay_s=0)
    ) as w:
        for i in range(5):
            await w.create(spec(f"s{i}", 5))
        await w.publish("1.1.0", boot_seconds=60)
        ends = []
        for i in range(5):
            ends.append(await run_upgrade(w, f"s{i}"))
        assert all(u.status == UpgradeStatus.COMPLETED for u in ends)
        starts = sorted(u.started_at for u in ends)
        # every upgrade takes 5 minutes; with 2 slots the rollout takes three rounds
        assert max(u.ended_at for u in ends) - min(starts) == timedelta(minutes=15)


# -- 2.3 validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "target"),
    [
        ({"image": ImageReference("Canonical", "UbuntuServer", "18.04-LTS", "1.0.0")}, "version"),
        ({"health_probe": False}, "enableAutomaticOSUpgrade"),
        ({"health_extension": HealthExtension()}, "enableAutomaticOSUpgrade"),
        ({"image": ImageReference("Someone", "Custom", "1")}, "imageReference"),
        ({"api_version": "2018-06-01"}, "api-version"),
        ({"os_type": "Windows", "enable_automatic_updates": True}, "enableAutomaticUpdates"),
        ({"service_fabric": True, "service_fabric_durability": "Bronze"}, "durabilityLevel"),
        (
            {
                "policy": replace(
                    spec().policy, rolling=RollingUpgradePolicy(max_batch_instance_percent=4)
                )
            },
            "maxBatchInstancePercent",
        ),
        (
            {
                "policy": replace(
                    spec().policy, rolling=RollingUpgradePolicy(pause_time_between_batches_s=601)
                )
            },
            "pauseTimeBetweenBatches",
        ),
        (
            {"health_extension": HealthExtension(interval_s=61), "health_probe": False},
            "intervalInSeconds",
        ),
    ],
)
async def test_invalid_models_are_refused_with_the_property_named(
    change: dict[str, object], target: str
) -> None:
    async with world() as w:
        with pytest.raises(InvalidParameterError) as caught:
            await w.create(replace(spec("v", 3), **change))
        assert target in caught.value.target
        assert w.engine.scale_sets() == []

"""The engine upgrades a scale set end to end in virtual time."""

from __future__ import annotations

from datetime import timedelta

from engine.domain.model import UpgradeStatus
from tests.engine.harness import RG, SUB, T0, spec, world


async def test_an_automatic_upgrade_completes_in_virtual_time() -> None:
    async with world() as w:
        await w.create(spec("web", 10))
        await w.publish("1.1.0", boot_seconds=60)
        upgrade = await w.engine.wait_for_upgrade(SUB, RG, "web")
        assert upgrade.status == UpgradeStatus.COMPLETED
        assert upgrade.started_at is not None and upgrade.ended_at is not None
        assert T0 < upgrade.started_at <= T0 + timedelta(hours=3)
        # 5 batches x 60 s boot; health is observed on the shared 5 s probe grid, so the
        # first observation may come up to one interval after the boot
        took = upgrade.ended_at - upgrade.started_at
        assert timedelta(minutes=5) <= took < timedelta(minutes=5, seconds=5)
        versions = w.engine.scale_set(SUB, RG, "web").state.instance_versions
        assert set(versions.values()) == {"1.1.0"}

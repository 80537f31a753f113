"""What the HTTP API relies on: commands name their upgrade, ``durable`` means in the log."""

from __future__ import annotations

from tests.engine.harness import RG, SUB, spec, world


async def test_start_cancel_and_approve_return_the_upgrade_id() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("d", 5, automatic=False, deferral=True))
        await w.publish("1.1.0", boot_seconds=60)
        started = await w.engine.start_os_upgrade(SUB, RG, "d")
        assert await w.engine.approve_upgrade(SUB, RG, "d", ["0"]) == started
        assert await w.engine.cancel_upgrade(SUB, RG, "d") == started
        assert (await w.finish("d", started)).request.upgrade_id == started


async def test_durable_means_every_decision_is_in_the_log() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("e", 10))
        await w.publish("1.1.0", boot_seconds=60)
        await w.in_batch("e")
        await w.engine.durable()
        worker = w.engine.scale_set(SUB, RG, "e")
        assert worker.upgrade is not None and worker.upgrade.request is not None
        stream = f"upgrade-{worker.upgrade.request.upgrade_id}"
        assert await w.store.stream_version(stream) == worker.upgrade.version

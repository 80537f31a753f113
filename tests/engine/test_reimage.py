"""Reimage and manual upgrade in the engine: intent, fleet, result; recovery; the fold."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.domain.events import DOMAIN_EVENTS, ReimageRequested, scale_set_stream
from engine.domain.model import Identity, ImageReference
from engine.domain.scale_set import OperationNotAllowedError
from engine.domain.validation import InvalidParameterError
from events import InMemoryEventStore, Metadata
from tests.engine.harness import RG, SUB, T0, UBUNTU, spec, world

KEY = f"{SUB}/{RG}/m".lower()


async def test_manual_upgrade_records_intent_then_result_and_moves_the_instances() -> None:
    async with world() as w:
        await w.create(spec("m", 3, automatic=False, image=ImageReference(*UBUNTU, "1.0.0")))
        await w.publish("1.1.0")
        pinned = spec("m", 3, automatic=False, image=ImageReference(*UBUNTU, "1.1.0"))
        await w.engine.create_or_update_scale_set(pinned)
        operation = await w.engine.reimage(SUB, RG, "m", "manualupgrade", ["1"])
        types = [t for t, _ in await w.events(scale_set_stream(KEY))]
        assert types[-2:] == ["scaleset.reimage_requested", "scaleset.reimage_finished"]
        state = w.engine.scale_set(SUB, RG, "m").state
        assert state.instance_versions == {"0": "1.0.0", "1": "1.1.0", "2": "1.0.0"}
        assert state.reimages.operations[operation].finished_at == T0
        assert w.fleet.instance(KEY, "1").reimages == 1
        assert w.fleet.instance(KEY, "0").reimages == 0
        with pytest.raises(InvalidParameterError):
            await w.engine.reimage(SUB, RG, "m", "reimage", ["7"])


async def test_an_intent_left_without_its_result_is_carried_out_on_the_next_start() -> None:
    store = InMemoryEventStore()
    async with world(store=store) as w:
        await w.create(spec("m", 2, automatic=False))
        await w.publish("1.1.0")
    intent = ReimageRequested("op1", "reimage", ("0",), "1.1.0")  # then the engine died
    new = DOMAIN_EVENTS.to_new_event(intent, metadata=Metadata(actor="User"), occurred_at=T0)
    await store.append(scale_set_stream(KEY), [new], None)
    async with world(store=store) as w:
        worker = w.engine.scale_set(SUB, RG, "m")
        await w.engine.settle()
        await worker.durable()
        assert worker.state.reimages.pending() == []
        assert worker.state.instance_versions == {"0": "1.1.0", "1": "1.0.0"}
        types = [t for t, _ in await w.events(scale_set_stream(KEY))]
        assert types.count("scaleset.reimage_finished") == 1


async def test_reimage_is_refused_while_an_upgrade_runs() -> None:
    async with world(autojump=False) as w:
        await w.create(spec("m", 5, automatic=False))
        await w.publish("1.1.0", boot_seconds=60)
        await w.engine.start_os_upgrade(SUB, RG, "m")
        await w.in_batch("m")
        with pytest.raises(OperationNotAllowedError):
            await w.engine.reimage(SUB, RG, "m", "reimage", None)


async def test_the_fold_gives_etag_unique_id_and_creation_times_from_the_log() -> None:
    async with world(autojump=False) as w:
        model = spec(
            "m", 2, automatic=False, tags=(("a", "1"),), identity=Identity("SystemAssigned")
        )
        await w.create(model)
        state = await w.engine.scale_set_state(SUB, RG, "m")
        first_id = state.unique_id
        assert (state.model_generation, state.created_at) == (1, T0)
        await w.engine.create_or_update_scale_set(model)  # the same model: the same etag
        assert state.model_generation == 1
        await w.clock.advance(60)
        await w.engine.create_or_update_scale_set(replace(model, capacity=3))
        state = await w.engine.scale_set_state(SUB, RG, "m")
        assert state.model_generation == 2
        assert state.instances_created["0"] == T0 and state.instances_created["2"] > T0
        assert state.spec is not None and state.spec.tags == (("a", "1"),)
        again = await w.engine.scale_set_state(SUB, RG, "m")
        assert again.unique_id == first_id


def test_a_model_logged_before_tags_and_identity_existed_still_loads() -> None:
    old_spec = {
        "subscription": SUB, "resource_group": RG, "name": "old", "location": "westeurope",
        "capacity": 1, "image": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
        "health_probe": True,
    }  # fmt: skip
    created = DOMAIN_EVENTS.build("scaleset.created", {"spec": old_spec, "instance_versions": {}})
    assert (created.spec.tags, created.spec.identity, created.spec.health_probe_id) == (
        (),
        None,
        "",
    )

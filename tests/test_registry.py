"""Typed event classes: registration, round trips, upcasting errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from events import (
    EventRegistry,
    InMemoryEventStore,
    InvalidEventError,
    Metadata,
    NewEvent,
    UnknownEventTypeError,
    UpcastError,
)


@dataclass(frozen=True)
class Disk:
    lun: int
    size_gb: int


registry = EventRegistry()


@registry.register("test.scale_set_created", version=2)
@dataclass(frozen=True)
class ScaleSetCreated:
    name: str
    instances: tuple[str, ...]
    disks: tuple[Disk, ...]
    created_at: datetime
    zone: str | None = None


@registry.upcaster("test.scale_set_created", 1)
def _add_disks(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "disks": []}


async def test_typed_events_round_trip_through_a_store() -> None:
    store = InMemoryEventStore(registry=registry)
    created = ScaleSetCreated(
        "web", ("0", "1"), (Disk(0, 128),), datetime(2026, 1, 1, tzinfo=UTC), zone="2"
    )
    new = registry.to_new_event(created, metadata=Metadata(actor="User"))
    assert (new.type, new.schema_version) == ("test.scale_set_created", 2)
    await store.append("vmss-web", [new], 0)
    (recorded,) = await store.read_stream("vmss-web")
    assert registry.decode(recorded) == created


async def test_an_old_version_is_upcast_then_decoded() -> None:
    store = InMemoryEventStore(registry=registry)
    old = {"name": "api", "instances": ["0"], "created_at": "2026-01-01T00:00:00+00:00"}
    await store.append("vmss-api", [NewEvent("test.scale_set_created", old, 1)], 0)
    (recorded,) = await store.read_stream("vmss-api")
    decoded = registry.decode(recorded)
    assert decoded == ScaleSetCreated("api", ("0",), (), datetime(2026, 1, 1, tzinfo=UTC))


async def test_a_schema_newer_than_the_code_is_an_error() -> None:
    store = InMemoryEventStore(registry=registry)
    await store.append("s", [NewEvent("test.scale_set_created", {}, 7)], 0)
    with pytest.raises(UpcastError, match="newer than this code"):
        await store.read_stream("s")


async def test_a_missing_upcaster_is_an_error() -> None:
    local = EventRegistry()

    @local.register("test.thing", version=3)
    @dataclass(frozen=True)
    class Thing:
        x: int

    @local.upcaster("test.thing", 1)
    def one(data: dict[str, Any]) -> dict[str, Any]:
        return data

    store = InMemoryEventStore(registry=local)
    await store.append("s", [NewEvent("test.thing", {"x": 1}, 1)], 0)
    with pytest.raises(UpcastError, match="from v2 to v3"):
        await store.read_stream("s")


async def test_a_failing_upcaster_names_the_position() -> None:
    local = EventRegistry()

    @local.register("test.thing", version=2)
    @dataclass(frozen=True)
    class Thing:
        x: int

    @local.upcaster("test.thing", 1)
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        return {"x": data["missing"]}

    store = InMemoryEventStore(registry=local)
    await store.append("s", [NewEvent("test.thing", {}, 1)], 0)
    with pytest.raises(UpcastError, match="position 1"):
        await store.read_stream("s")


def test_registration_rules() -> None:
    local = EventRegistry()

    class NotADataclass:
        pass

    @dataclass
    class Mutable:
        x: int

    with pytest.raises(TypeError):
        local.register("test.a")(NotADataclass)
    with pytest.raises(TypeError):
        local.register("test.b")(Mutable)

    @local.register("test.c")
    @dataclass(frozen=True)
    class C:
        x: int

    with pytest.raises(ValueError, match="already registered"):
        local.register("test.c")(dataclass(frozen=True)(type("D", (), {"__annotations__": {}})))
    local.upcaster("test.c", 1)(lambda d: d)
    with pytest.raises(ValueError, match="exists already"):
        local.upcaster("test.c", 1)(lambda d: d)
    with pytest.raises(InvalidEventError):
        local.to_new_event(ScaleSetCreated("x", (), (), datetime.now(UTC)))
    with pytest.raises(UnknownEventTypeError):
        local.class_for("test.unknown")
    assert local.current_version("test.c") == 1
    assert local.current_version("test.unknown") is None


async def test_unknown_types_pass_through_reads_untouched() -> None:
    store = InMemoryEventStore(registry=registry)
    await store.append("s", [NewEvent("test.someone_elses", {"a": 1}, 4)], 0)
    (recorded,) = await store.read_stream("s")
    assert (recorded.type, recorded.schema_version, recorded.data) == (
        "test.someone_elses",
        4,
        {"a": 1},
    )
    with pytest.raises(UnknownEventTypeError):
        registry.decode(recorded)

"""Typed, immutable event classes, their stable type names and their upcasters.

The log stores a stable name (``"upgrade.batch_started"``), never a Python import path,
so code can be moved and renamed freely. Old schema versions stay in the log as they
were written; upcasters turn them into the current shape when they are read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar, cast

from events.envelope import NO_METADATA, JSONObject, Metadata, NewEvent, RecordedEvent
from events.errors import InvalidEventError, UnknownEventTypeError, UpcastError
from events.ids import uuid7


class DomainEvent(Protocol):
    """What a registered event class provides (set by ``EventRegistry.register``)."""

    type_name: ClassVar[str]
    schema_version: ClassVar[int]


E = TypeVar("E")
Upcaster = Callable[[JSONObject], JSONObject]
_Convert = Callable[[Any], Any]


class EventRegistry:
    """Maps stable type names to frozen dataclasses and holds upcasters between versions."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Any]] = {}
        self._versions: dict[str, int] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._converters: dict[type[Any], dict[str, _Convert]] = {}

    def register(self, type_name: str, *, version: int = 1) -> Callable[[type[E]], type[E]]:
        """Class decorator: store instances under ``type_name`` at schema ``version``."""

        def decorate(cls: type[E]) -> type[E]:
            params = getattr(cls, "__dataclass_params__", None)
            if params is None or not params.frozen:
                raise TypeError(f"{cls.__name__} must be a frozen dataclass")
            if type_name in self._classes:
                raise ValueError(f"event type {type_name!r} is already registered")
            if version < 1:
                raise ValueError("schema version must be >= 1")
            self._classes[type_name] = cls
            self._versions[type_name] = version
            type.__setattr__(cls, "type_name", type_name)
            type.__setattr__(cls, "schema_version", version)
            return cls

        return decorate

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: a function taking ``from_version`` data to ``from_version + 1``."""

        def decorate(fn: Upcaster) -> Upcaster:
            key = (type_name, from_version)
            if key in self._upcasters:
                raise ValueError(f"an upcaster for {type_name} v{from_version} exists already")
            self._upcasters[key] = fn
            return fn

        return decorate

    def class_for(self, type_name: str) -> type[Any]:
        """Return the class registered for ``type_name``."""
        try:
            return self._classes[type_name]
        except KeyError:
            raise UnknownEventTypeError(f"no event class registered for {type_name!r}") from None

    def current_version(self, type_name: str) -> int | None:
        """The schema version new events of this type are written with, if registered."""
        return self._versions.get(type_name)

    def to_new_event(
        self,
        event: object,
        *,
        metadata: Metadata = NO_METADATA,
        event_id: uuid.UUID | None = None,
        occurred_at: datetime | None = None,
    ) -> NewEvent:
        """Wrap a registered event object for appending."""
        cls = type(event)
        type_name = getattr(cls, "type_name", None)
        if type_name is None or self._classes.get(type_name) is not cls:
            raise InvalidEventError(f"{cls.__name__} is not registered with this registry")
        data = {f.name: getattr(event, f.name) for f in dataclasses.fields(cast("Any", event))}
        return NewEvent(
            type=type_name,
            data=data,
            schema_version=self._versions[type_name],
            metadata=metadata,
            event_id=event_id or uuid7(),
            occurred_at=occurred_at,
        )

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """Return ``event`` at the current schema version of its type (unknown types pass)."""
        current = self._versions.get(event.type)
        if current is None or event.schema_version == current:
            return event
        where = f"at position {event.position}"
        data = self.upcast_data(event.type, event.schema_version, event.data, where)
        return event.with_payload(event.type, current, data)

    def upcast_data(
        self, type_name: str, version: int, data: JSONObject, where: str = ""
    ) -> JSONObject:
        """``data`` of ``type_name`` written at ``version``, brought to the current version."""
        current = self._versions.get(type_name)
        if current is None or version == current:
            return data
        if version > current:
            raise UpcastError(
                f"{type_name} {where} has schema v{version}, newer than this code's v{current}"
            )
        for step_from in range(version, current):
            step = self._upcasters.get((type_name, step_from))
            if step is None:
                raise UpcastError(
                    f"no upcaster for {type_name} from v{step_from} to v{step_from + 1}"
                )
            try:
                data = step(dict(data))
            except Exception as exc:
                raise UpcastError(
                    f"upcasting {type_name} {where} from v{step_from}: {exc}"
                ) from exc
        return data

    def decode(self, event: RecordedEvent) -> Any:
        """Return the typed event object for a recorded event (upcasting first)."""
        current = self.upcast(event)
        return self.build(current.type, current.data, f"from position {event.position}")

    def build(self, type_name: str, data: JSONObject, where: str = "") -> Any:
        """The typed event of ``type_name`` from current-version ``data``."""
        cls = self.class_for(type_name)
        converters = self._converters_for(cls)
        kwargs = {}
        for name, convert in converters.items():
            if name in data:
                kwargs[name] = convert(data[name])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise UpcastError(f"cannot build {cls.__name__} {where}: {exc}") from exc

    def _converters_for(self, cls: type[Any]) -> dict[str, _Convert]:
        found = self._converters.get(cls)
        if found is None:
            hints = typing.get_type_hints(cls)
            found = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}
            self._converters[cls] = found
        return found


def _identity(value: Any) -> Any:
    return value


def _converter(hint: Any) -> _Convert:
    """Build a function turning a JSON value back into the annotated Python type."""
    origin = typing.get_origin(hint)
    if hint is datetime:
        return lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v
    if origin is tuple:
        args = typing.get_args(hint)
        item = _converter(args[0]) if args else _identity
        return lambda v: tuple(item(x) for x in v) if isinstance(v, list) else v
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            convert = _converter(inner[0])
            return lambda v: None if v is None else convert(v)
        return _identity
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = typing.get_type_hints(hint)
        parts = {f.name: _converter(fields[f.name]) for f in dataclasses.fields(hint)}
        target = hint
        return lambda v: (
            target(**{k: parts[k](x) for k, x in v.items() if k in parts})
            if isinstance(v, Mapping)
            else v
        )
    return _identity

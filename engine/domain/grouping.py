"""Pack runs of per-instance events into one ``InstanceEvents`` record; expand them back.

Packing is a storage decision only: the decider and the folds speak in per-instance
events, and every reader expands groups before folding, so a log written with groups
folds to exactly the state its per-instance events would give.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from engine.domain.events import (
    DOMAIN_EVENTS,
    InstanceEvents,
    InstanceHealthChanged,
    InstanceHealthTimeout,
    InstanceHealthy,
    InstanceReimaged,
    InstanceReimageFailed,
    InstanceReimageStarted,
    InstanceRollbackFailed,
    InstanceRollbackStarted,
    InstanceRolledBack,
)
from events import RecordedEvent

PACKABLE: frozenset[type[Any]] = frozenset(
    {
        InstanceReimageStarted,
        InstanceReimaged,
        InstanceReimageFailed,
        InstanceHealthChanged,
        InstanceHealthy,
        InstanceHealthTimeout,
        InstanceRollbackStarted,
        InstanceRolledBack,
        InstanceRollbackFailed,
    }
)


def pack(events: Sequence[object]) -> list[object]:
    """``events`` with every run of two or more same-kind instance events as one group."""
    out: list[object] = []
    run: list[object] = []
    for event in events:
        if run and type(event) is not type(run[0]):
            out.extend(_close(run))
            run = []
        if type(event) in PACKABLE:
            run.append(event)
        else:
            out.append(event)
    out.extend(_close(run))
    return out


def _close(run: list[object]) -> list[object]:
    if len(run) < 2:
        return run
    cls: Any = type(run[0])
    names = [f.name for f in dataclasses.fields(cls)]
    items = tuple({name: getattr(e, name) for name in names} for e in run)
    return [InstanceEvents(cls.type_name, cls.schema_version, items)]


def expand(event: object) -> list[object]:
    """The per-instance events a decoded record stands for (itself if not a group)."""
    if not isinstance(event, InstanceEvents):
        return [event]
    return [
        DOMAIN_EVENTS.build(event.event, DOMAIN_EVENTS.upcast_data(event.event, event.version, i))
        for i in event.items
    ]


def decode_all(recorded: RecordedEvent) -> list[object]:
    """Decode one record into the domain events it holds."""
    return expand(DOMAIN_EVENTS.decode(recorded))

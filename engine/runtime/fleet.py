"""The fleet adapter protocol: the only way the engine touches machines.

Like httpx's transport, it is a small protocol with one simulated implementation
(``engine.sim.fleet``); real adapters (processes with real health probes, Azure)
implement the same methods. Every call that changes a machine carries an
``operation_id``: an adapter must make a repeated call with the same id a no-op that
returns the first outcome, which is what lets a restarted engine retry an intent
without reimaging an instance twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from engine.domain.model import Health, ImageReference, ScaleSetSpec


@dataclass(frozen=True)
class ReimageOutcome:
    """What happened to one instance's OS disk replacement."""

    ok: bool
    error: str = ""
    failed_extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreOutcome:
    """What happened to restoring one instance's previous OS disk."""

    ok: bool
    error: str = ""


class Fleet(Protocol):
    """Machines of scale sets, as the orchestrator sees them."""

    async def reimage(
        self, spec: ScaleSetSpec, instance_id: str, image: ImageReference, operation_id: str
    ) -> ReimageOutcome:
        """Replace the OS disk from ``image`` (a concrete version), keep data disks, and
        provision the model's extensions again in ``provision_after`` order."""
        ...

    async def restore(
        self, spec: ScaleSetSpec, instance_id: str, version: str, operation_id: str
    ) -> RestoreOutcome:
        """Put back the OS disk the instance had before (image ``version``)."""
        ...

    async def read_health(
        self, spec: ScaleSetSpec, instance_ids: Sequence[str]
    ) -> dict[str, Health]:
        """The current health signal of each instance."""
        ...

    async def provision(self, spec: ScaleSetSpec, versions: Mapping[str, str]) -> None:
        """Make sure these instances exist, each on its image version (idempotent)."""
        ...


@dataclass(frozen=True, slots=True)
class Reimage:
    """One reimage of a batch (see ``Fleet.reimage``)."""

    instance_id: str
    image: ImageReference
    operation_id: str


@dataclass(frozen=True, slots=True)
class Restore:
    """One restore of a batch (see ``Fleet.restore``)."""

    instance_id: str
    version: str
    operation_id: str


@runtime_checkable
class BatchFleet(Protocol):
    """Optional: several operations on one scale set in one call.

    Azure reimages a list of instance ids in one request; a simulation does the work in
    one pass. Without it the engine makes one call per instance, concurrently.
    """

    async def apply(
        self, spec: ScaleSetSpec, operations: Sequence[Reimage | Restore]
    ) -> list[ReimageOutcome | RestoreOutcome]:
        """Carry out ``operations``; one outcome each, in the same order."""
        ...


@runtime_checkable
class FleetWatch(Protocol):
    """Optional: a fleet whose machines can change by means other than the engine's calls
    (a simulation's forced health); the engine's workers then look again at once."""

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """Call ``changed(scale set key)`` (None: any set) on every such change."""
        ...


@runtime_checkable
class HealthForecast(FleetWatch, Protocol):
    """Optional: a fleet that knows when health signals will next change (simulations).

    Lets the engine skip probes that could only see what it already recorded. Every
    change the forecast cannot foresee must be reported through ``watch``, or the
    engine would sleep through it.
    """

    def steady_until(self, spec: ScaleSetSpec, instance_ids: Sequence[str]) -> datetime:
        """No signal of these instances changes before this time (by itself)."""
        ...

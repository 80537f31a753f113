"""Test fleets that wrap the simulated one: every call passes through unchanged.

Subclasses override the one method they are about (journal health reads, hide the
forecast); the engine sees a plain ``Fleet`` plus ``set_profile``, and nothing else of
the simulation (no forecast, no watch) unless a subclass offers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.domain.events import SimulationProfile
from engine.domain.model import Health, ImageReference, ScaleSetSpec
from engine.runtime.fleet import ReimageOutcome, RestoreOutcome
from engine.sim.fleet import SimulatedFleet


class PassThroughFleet:
    """The simulated fleet behind the ``Fleet`` protocol and ``set_profile`` only."""

    def __init__(self, inner: SimulatedFleet) -> None:
        self.inner = inner
        self.clock = inner.clock

    async def read_health(
        self, spec: ScaleSetSpec, instance_ids: Sequence[str]
    ) -> dict[str, Health]:
        """See ``Fleet.read_health``."""
        return await self.inner.read_health(spec, instance_ids)

    async def reimage(
        self, spec: ScaleSetSpec, instance_id: str, image: ImageReference, operation_id: str
    ) -> ReimageOutcome:
        """See ``Fleet.reimage``."""
        return await self.inner.reimage(spec, instance_id, image, operation_id)

    async def restore(
        self, spec: ScaleSetSpec, instance_id: str, version: str, operation_id: str
    ) -> RestoreOutcome:
        """See ``Fleet.restore``."""
        return await self.inner.restore(spec, instance_id, version, operation_id)

    async def provision(self, spec: ScaleSetSpec, versions: Mapping[str, str]) -> None:
        """See ``Fleet.provision``."""
        await self.inner.provision(spec, versions)

    def set_profile(self, version: str, profile: SimulationProfile) -> None:
        """See ``SimulationControl.set_profile``."""
        self.inner.set_profile(version, profile)

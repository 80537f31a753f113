"""The image catalog: which versions exist where, and which one is "latest" (SPEC 2.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.domain.events import (
    GalleryImageVersionPublished,
    GalleryImageVersionReplicated,
    ImageVersionPublished,
    SimulationProfile,
)
from engine.domain.model import ImageReference, canonical_version, version_key
from engine.domain.names import fold


@dataclass
class GalleryVersion:
    """One gallery image version: where it is replicated, whether "latest" may pick it."""

    regions: set[str]
    exclude_from_latest: bool
    simulation: SimulationProfile


@dataclass
class Catalog:
    """Folded from the catalog streams; answers "what is the latest version here?"."""

    platform: dict[tuple[str, str, str, str], dict[str, SimulationProfile]] = field(
        default_factory=dict
    )
    gallery: dict[str, dict[str, GalleryVersion]] = field(default_factory=dict)
    available: dict[tuple[str, ...], datetime] = field(default_factory=dict)
    """When each version became available in a location: (location, image..., version)."""

    def apply(self, event: object, at: datetime | None = None) -> None:
        """Fold one catalog event, recorded at engine time ``at``, keyed by the canonical
        version.

        A version is published once: a later publish of the same version (which older
        logs may hold, or an engine following the log sees after its own) changes
        nothing, so every engine folds the same catalog whatever the order it saw.
        """
        if isinstance(event, ImageVersionPublished):
            key = (
                event.location.lower(),
                event.publisher.lower(),
                event.offer.lower(),
                event.sku.lower(),
            )
            version = canonical_version(event.version)
            self.platform.setdefault(key, {}).setdefault(version, event.simulation)
            self._available_from(at, *key, version)
        elif isinstance(event, GalleryImageVersionPublished):
            image_id, version = fold(event.image_id), canonical_version(event.version)
            self.gallery.setdefault(image_id, {}).setdefault(
                version,
                GalleryVersion(
                    {r.lower() for r in event.regions}, event.exclude_from_latest, event.simulation
                ),
            )
            for region in event.regions:
                self._available_from(at, region.lower(), image_id, version)
        elif isinstance(event, GalleryImageVersionReplicated):
            image_id, version = fold(event.image_id), canonical_version(event.version)
            found = self.gallery.get(image_id, {}).get(version)
            if found is not None:
                found.regions.add(event.region.lower())
                self._available_from(at, event.region.lower(), image_id, version)

    def _available_from(self, at: datetime | None, *key: str) -> None:
        if at is not None:
            self.available.setdefault(key, at)  # the first time counts

    def available_at(self, image: ImageReference, location: str, version: str) -> datetime | None:
        """When ``version`` of ``image`` became available in ``location`` (None: unknown).

        Later automatic rollouts are timed from this moment (SPEC 2.1.1).
        """
        version = canonical_version(version)
        if image.is_gallery:
            assert image.id is not None
            return self.available.get((location.lower(), fold(image.id), version))
        return self.available.get((location.lower(), *image.family, version))

    def has(self, event: ImageVersionPublished | GalleryImageVersionPublished) -> bool:
        """True if the version ``event`` publishes is already in the catalog."""
        version = canonical_version(event.version)
        if isinstance(event, GalleryImageVersionPublished):
            return version in self.gallery.get(fold(event.image_id), {})
        family = (event.publisher, event.offer, event.sku)
        return version in self.versions(event.location, *family)

    def versions(self, location: str, publisher: str, offer: str, sku: str) -> list[str]:
        """Platform versions of one image family in one location, oldest first."""
        key = (location.lower(), publisher.lower(), offer.lower(), sku.lower())
        return sorted(self.platform.get(key, {}), key=version_key)

    def latest(self, image: ImageReference, location: str) -> str | None:
        """The newest version usable by a scale set in ``location`` (same SKU always)."""
        if image.is_gallery:
            assert image.id is not None
            usable = [
                version
                for version, info in self.gallery.get(fold(image.id), {}).items()
                if location.lower() in info.regions and not info.exclude_from_latest
            ]
        else:
            usable = self.versions(location, image.publisher, image.offer, image.sku)
        return max(usable, key=version_key) if usable else None

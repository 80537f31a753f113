"""Encoded JSON of upgrade views, reused until the view folds another event.

GET latest and osUpgradeHistory are the hot reads; an upgrade's view changes only when
an event of its stream is folded (its ``position`` moves), so between events every read
of it can send the same bytes instead of building and encoding the dictionaries again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from projections.upgrade_view import UpgradeView

LIMIT = 50_000  # entries per kind; past that the cache starts over (memory stays bounded)


class RenderCache:
    """``latest()`` and ``history_item()`` of each view, as JSON bytes."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._history: dict[str, tuple[int, bytes]] = {}

    def latest(self, view: UpgradeView) -> bytes:
        """``RollingUpgradeStatusInfo`` of the view, encoded."""
        return _cached(self._latest, view, view.latest)

    def history_item(self, view: UpgradeView) -> bytes:
        """``UpgradeOperationHistoricalStatusInfo`` of the view, encoded."""
        return _cached(self._history, view, view.history_item)


def _cached(
    entries: dict[str, tuple[int, bytes]], view: UpgradeView, render: Callable[[], Any]
) -> bytes:
    hit = entries.get(view.upgrade_id)
    if hit is not None and hit[0] == view.position:
        return hit[1]
    if len(entries) >= LIMIT:
        entries.clear()
    encoded = orjson.dumps(render())
    entries[view.upgrade_id] = (view.position, encoded)
    return encoded

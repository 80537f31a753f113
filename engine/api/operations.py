"""Long-running operations: the ``Azure-AsyncOperation`` / ``Location`` resources.

An operation id names its kind and the upgrade it follows (``start.<upgrade id>``), so
its status is derived from the upgrade's projection and needs no registry of its own:
it survives a restart of the server, and polling it costs a dictionary lookup.

- ``start``: InProgress while the upgrade rolls forward; Succeeded when it completes,
  Failed (with the upgrade's error) when it faults, Canceled when it is cancelled.
- ``cancel``: Succeeded once the upgrade has stopped, whatever its end.
- ``approve``: Succeeded at once (the approval is recorded before the 202).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from projections.upgrade_view import UpgradeView, rfc3339

KINDS = ("start", "cancel", "approve")
_RUNNING = "RollingForward"


@dataclass(frozen=True)
class OperationRef:
    """Which upgrade an operation follows, and what was asked of it."""

    kind: str
    upgrade_id: str
    at_ms: int | None = None  # an approval's own time (epoch ms): several per upgrade

    @property
    def name(self) -> str:
        """The operation id as it appears in URLs and in the status body."""
        stamp = "" if self.at_ms is None else f".{self.at_ms}"
        return f"{self.kind}.{self.upgrade_id}{stamp}"


def parse_operation(name: str) -> OperationRef | None:
    """The inverse of ``OperationRef.name``; None for anything else."""
    kind, _, rest = name.partition(".")
    upgrade_id, _, stamp = rest.partition(".")
    if kind not in KINDS or not upgrade_id.isalnum():
        return None
    if stamp and (kind != "approve" or not stamp.isdigit() or len(stamp) > 15):
        return None
    return OperationRef(kind, upgrade_id, int(stamp) if stamp else None)


def is_done(ref: OperationRef, view: UpgradeView) -> bool:
    """Whether the operation has reached a terminal status."""
    return ref.kind == "approve" or view.code != _RUNNING


def status_body(ref: OperationRef, view: UpgradeView) -> dict[str, Any]:
    """``{"name", "status", "startTime", "endTime", "error"}`` (ARM async operation)."""
    started = view.last_action_time if ref.kind == "cancel" else view.start_time
    if ref.at_ms is not None:  # an approval: when it was given, not when the upgrade began
        started = datetime.fromtimestamp(ref.at_ms / 1000, UTC)
    body: dict[str, Any] = {"name": ref.name, "status": "InProgress", "startTime": rfc3339(started)}
    if not is_done(ref, view):
        return body
    body["endTime"] = rfc3339(view.end_time if ref.kind != "approve" else started)
    body["status"] = "Succeeded"
    if ref.kind == "start" and view.code == "Faulted":
        body["status"] = "Failed"
        body["error"] = view.error or {"code": "InternalExecutionError", "message": "faulted"}
    elif ref.kind == "start" and view.code == "Cancelled":
        body["status"] = "Canceled"
        body["error"] = {
            "code": "OperationCanceled",
            "message": "The rolling upgrade was cancelled before it finished.",
        }
    return body


def operation_headers(
    base_url: str, subscription: str, location: str, ref: OperationRef, api_version: str
) -> dict[str, str]:
    """The 202's ``Azure-AsyncOperation`` and ``Location`` (absolute URLs to this server)."""
    url = (
        f"{base_url}/subscriptions/{quote(subscription)}/providers/Microsoft.Compute"
        f"/locations/{quote(location)}/operations/{ref.name}"
    )
    return {
        "Azure-AsyncOperation": f"{url}?api-version={api_version}",
        "Location": f"{url}?monitor=true&api-version={api_version}",
    }

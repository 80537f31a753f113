"""The read model of one rolling upgrade, in Azure's shapes (SPEC 4, azure-spec 3.14).

A pure fold over the upgrade's events: ``runningStatus``, ``progress``, ``rollbackInfo``,
``error``, ``startedBy``, ``targetImageReference`` and ``policy``. It reads the recorded
events' JSON directly (no engine objects), so it can be folded from any log, at any
position, by any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import RecordedEvent

JSON = dict[str, Any]

_DONE = "done"
_FAILED = "failed"
_ACTIVE = "active"
_PENDING = "pending"


def rfc3339(when: datetime | None) -> str | None:
    """Azure's timestamp form: RFC 3339, UTC, ``+00:00``."""
    return when.isoformat() if when is not None else None


GROUP = "upgrade.instance_events"


def expand(type_name: str, data: JSON) -> list[tuple[str, JSON]]:
    """The (type, data) pairs one record stands for: a group's items, or itself.

    The engine stores per-instance events decided at one instant as one
    ``upgrade.instance_events`` record; read models fold its items one by one.
    """
    if type_name != GROUP:
        return [(type_name, data)]
    item_type: str = data["event"]
    return [(item_type, item) for item in data["items"]]


@dataclass
class UpgradeView:
    """Everything the API shows about one upgrade, as of the events folded so far."""

    upgrade_id: str
    scale_set: str = ""
    location: str = ""
    started_by: str = "Unknown"
    target: JSON = field(default_factory=dict)
    policy: JSON = field(default_factory=dict)
    code: str = "RollingForward"
    start_time: datetime | None = None
    end_time: datetime | None = None
    last_action: str = "Start"
    last_action_time: datetime | None = None
    instances: dict[str, str] = field(default_factory=dict)
    rolled_back: int = 0
    rollback_failed: int = 0
    rollback_error: str | None = None
    error: JSON | None = None
    position: int = 0

    def apply(self, event: RecordedEvent) -> None:
        """Fold one event of this upgrade's stream (a group folds as its items)."""
        for type_name, data in expand(event.type, event.data):
            handler = _HANDLERS.get(type_name)
            if handler is not None:
                handler(self, data, event.occurred_at)
        self.position = event.position

    @property
    def progress(self) -> JSON:
        """``RollingUpgradeProgressInfo``: the four counts add up to the instance count."""
        states = list(self.instances.values())
        return {
            "successfulInstanceCount": states.count(_DONE),
            "failedInstanceCount": states.count(_FAILED),
            "inProgressInstanceCount": states.count(_ACTIVE),
            "pendingInstanceCount": states.count(_PENDING),
        }

    def latest(self) -> JSON:
        """``RollingUpgradeStatusInfo`` (GET .../rollingUpgrades/latest)."""
        running: JSON = {
            "code": self.code,
            "startTime": rfc3339(self.start_time),
            "lastAction": self.last_action,
            "lastActionTime": rfc3339(self.last_action_time),
        }
        properties: JSON = {
            "policy": self.policy,
            "runningStatus": running,
            "progress": self.progress,
        }
        return self._resource(properties)

    def history_item(self) -> JSON:
        """``UpgradeOperationHistoricalStatusInfo`` (one entry of osUpgradeHistory)."""
        rollback: JSON = {
            "successfullyRolledbackInstanceCount": self.rolled_back,
            "failedRolledbackInstanceCount": self.rollback_failed,
        }
        if self.rollback_error is not None:
            rollback["rollbackError"] = {"code": "RollbackFailed", "message": self.rollback_error}
        properties: JSON = {
            "runningStatus": {
                "code": self.code,
                "startTime": rfc3339(self.start_time),
                "endTime": rfc3339(self.end_time),
            },
            "progress": self.progress,
            "startedBy": self.started_by,
            "targetImageReference": self.target,
            "rollbackInfo": rollback,
        }
        return self._resource(properties)

    def _resource(self, properties: JSON) -> JSON:
        if self.error is not None:
            properties["error"] = self.error
        return {
            "type": "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades",
            "location": self.location,
            "properties": properties,
        }


def _requested(view: UpgradeView, data: JSON, at: datetime) -> None:
    view.scale_set = data["scale_set"]
    view.location = data["location"]
    view.started_by = data["started_by"]
    target = dict(data["target"])
    if target.get("id") is None:
        target.pop("id", None)
    target["exactVersion"] = target.get("version")
    view.target = {k: v for k, v in target.items() if v not in ("", None)}
    view.policy = _policy(data["policy"])
    view.start_time = view.last_action_time = at
    redeploy = set(data.get("redeploy", []))
    version = target.get("version")
    view.instances = {
        i: _PENDING if v != version or i in redeploy else _DONE
        for i, v in data["instance_versions"].items()
    }


def _policy(policy: JSON) -> JSON:
    return {
        "maxBatchInstancePercent": policy["max_batch_instance_percent"],
        "maxUnhealthyInstancePercent": policy["max_unhealthy_instance_percent"],
        "maxUnhealthyUpgradedInstancePercent": policy["max_unhealthy_upgraded_instance_percent"],
        "pauseTimeBetweenBatches": f"PT{policy['pause_time_between_batches_s']}S",
        "prioritizeUnhealthyInstances": policy["prioritize_unhealthy_instances"],
        "enableCrossZoneUpgrade": policy["enable_cross_zone_upgrade"],
        "maxSurge": policy["max_surge"],
        "rollbackFailedInstancesOnPolicyBreach": policy[
            "rollback_failed_instances_on_policy_breach"
        ],
    }


def _mark(state: str) -> Any:
    def mark(view: UpgradeView, data: JSON, at: datetime) -> None:
        view.instances[data["instance_id"]] = state

    return mark


def _rolled_back(view: UpgradeView, data: JSON, at: datetime) -> None:
    view.rolled_back += 1
    view.instances[data["instance_id"]] = _FAILED


def _rollback_failed(view: UpgradeView, data: JSON, at: datetime) -> None:
    view.rollback_failed += 1
    view.rollback_error = data["error"]
    view.instances[data["instance_id"]] = _FAILED


def _health_timeout(view: UpgradeView, data: JSON, at: datetime) -> None:
    view.instances[data["instance_id"]] = _FAILED


def _cancel_requested(view: UpgradeView, data: JSON, at: datetime) -> None:
    view.last_action = "Cancel"
    view.last_action_time = at


def _end(code: str) -> Any:
    def end(view: UpgradeView, data: JSON, at: datetime) -> None:
        view.code = code
        view.end_time = at
        if code == "Faulted":
            view.error = {"code": data["code"], "message": data["message"]}

    return end


_HANDLERS: dict[str, Any] = {
    "upgrade.requested": _requested,
    "upgrade.instance_reimage_started": _mark(_ACTIVE),
    "upgrade.instance_reimage_failed": _mark(_FAILED),
    "upgrade.instance_healthy": _mark(_DONE),
    "upgrade.instance_health_timeout": _health_timeout,
    "upgrade.instance_rollback_started": _mark(_FAILED),
    "upgrade.instance_rolled_back": _rolled_back,
    "upgrade.instance_rollback_failed": _rollback_failed,
    "upgrade.cancel_requested": _cancel_requested,
    "upgrade.completed": _end("Completed"),
    "upgrade.cancelled": _end("Cancelled"),
    "upgrade.faulted": _end("Faulted"),
}

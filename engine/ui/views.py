"""One scale set, or one upgrade, as of a position: folded from their own streams only.

A set's page needs the set's stream and its upgrades' streams, a few dozen events, so it
is folded fresh for every moment (``FleetView`` over just those events) instead of from
the fleet's snapshots. Each upgrade event comes with a one-line summary and the inputs of
the decision it records: the counts and the limit a threshold was checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine.domain.events import scale_set_stream, upgrade_stream
from events import EventStore, RecordedEvent
from projections.fleet_view import FleetView
from projections.upgrade_view import GROUP, UpgradeView, expand, rfc3339

JSON = dict[str, Any]
LIST_LIMIT = 50  # instance ids shown per event; the count is always complete

_PHASE = {"pending": "pending", "active": "upgrading", "done": "upgraded", "failed": "failed"}


def iso(time_us: int | None) -> str | None:
    """An engine time in µs as RFC 3339 (None stays None)."""
    if time_us is None:
        return None
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).isoformat()


async def set_events(store: EventStore, key: str) -> list[RecordedEvent]:
    """Every event of the set's stream and of its upgrades' streams, in log order."""
    own = await store.read_stream(scale_set_stream(key))
    ids = [e.data["upgrade_id"] for e in own if e.type == "scaleset.upgrade_started"]
    events = list(own)
    for upgrade_id in dict.fromkeys(ids):
        events.extend(await store.read_stream(upgrade_stream(upgrade_id)))
    events.sort(key=lambda e: e.position)
    return events


def set_body(key: str, events: list[RecordedEvent], at: int, time_us: int | None) -> JSON | None:
    """The set page at ``at``; None if the log never had the set."""
    if not events:
        return None
    view = FleetView()
    requested: dict[str, JSON] = {}
    by_upgrade: dict[str, list[RecordedEvent]] = {}
    spec: JSON = {}
    for event in events:
        if event.position > at:
            break
        view.apply(event)
        if event.type in ("scaleset.created", "scaleset.model_updated"):
            spec = event.data["spec"]
        upgrade_id = event.stream_id.removeprefix("upgrade-")
        if event.stream_id.startswith("upgrade-"):
            by_upgrade.setdefault(upgrade_id, []).append(event)
            if event.type == "upgrade.requested":
                requested[upgrade_id] = event.data
    latest = view.latest_view(key)
    zones: dict[str, str] = requested[latest.upgrade_id]["zones"] if latest else {}
    states = latest.instances if latest else {}
    instances = [
        {
            "id": i,
            "version": inst.version,
            "health": inst.health,
            "phase": _PHASE.get(states.get(i, ""), "idle"),
            "zone": zones.get(i),
        }
        for i, inst in sorted(view.instances.get(key, {}).items(), key=lambda kv: _id_order(kv[0]))
    ]
    now = datetime.fromtimestamp((time_us or 0) / 1_000_000, UTC)
    return {
        "key": key,
        "exists": key in view.instances,
        "location": spec.get("location"),
        "mode": spec.get("policy", {}).get("mode"),
        "image": spec.get("image", {}),
        "instances": instances,
        "upgrade": _upgrade_summary(latest, by_upgrade.get(latest.upgrade_id, []))
        if latest
        else None,
        "history": [_history_item(v) for v in view.history_views(key, now)],
        "changes": [e.position for e in events],
    }


def _id_order(instance_id: str) -> tuple[int, str]:
    return (int(instance_id), "") if instance_id.isdigit() else (1 << 62, instance_id)


def _history_item(view: UpgradeView) -> JSON:
    return {
        "id": view.upgrade_id,
        "code": view.code,
        "startedBy": view.started_by,
        "target": view.target.get("version"),
        "start": rfc3339(view.start_time),
        "end": rfc3339(view.end_time),
        "progress": view.progress,
        "rolledBack": view.rolled_back,
        "error": view.error,
    }


def _upgrade_summary(view: UpgradeView, events: list[RecordedEvent]) -> JSON:
    body = _history_item(view)
    body["lastAction"] = view.last_action
    body["policy"] = view.policy
    body["batches"] = batches(events, view.instances)
    return body


def batches(events: list[RecordedEvent], states: dict[str, str]) -> list[JSON]:
    """The upgrade's batches so far: members, why, and how each member is doing."""
    found: dict[int, JSON] = {}
    for event in events:
        data = event.data
        if event.type == "upgrade.batch_started":
            found[data["index"]] = {
                "index": data["index"],
                "reason": data["reason"],
                "size": len(data["members"]),
                "unhealthyBefore": data["unhealthy"],
                "total": data["total"],
                "started": event.position,
                "members": {m: _PHASE.get(states.get(m, ""), "idle") for m in data["members"]},
            }
        elif event.type == "upgrade.batch_completed" and data["index"] in found:
            found[data["index"]]["completed"] = {
                "position": event.position,
                "succeeded": len(data["succeeded"]),
                "failed": len(data["failed"]),
                "check": _check(
                    data["failed_total"], data["processed_total"], data["limit_percent"]
                ),
            }
    return [found[i] for i in sorted(found)]


async def upgrade_body(store: EventStore, upgrade_id: str, at: int) -> JSON | None:
    """The upgrade's event timeline, every event with its decision inputs; None if unknown."""
    events = await store.read_stream(upgrade_stream(upgrade_id))
    if not events:
        return None
    view = UpgradeView(upgrade_id)
    for event in events:
        if event.position <= at:
            view.apply(event)
    body = _history_item(view)
    body["requested"] = view.start_time is not None
    body["scaleSet"] = events[0].data.get("scale_set")
    body["events"] = [timeline_item(e, at) for e in events]
    return body


def timeline_item(event: RecordedEvent, at: int) -> JSON:
    """One event of an upgrade's timeline: what happened and what it was decided from."""
    items = expand(event.type, event.data)
    type_name = items[0][0] if event.type == GROUP and items else event.type
    summary, inputs = describe(type_name, event.data if event.type != GROUP else {}, items)
    return {
        "position": event.position,
        "time": event.occurred_at.isoformat(),
        "type": type_name,
        "count": len(items),
        "summary": summary,
        "inputs": inputs,
        "future": event.position > at,
    }


def event_body(event: RecordedEvent) -> JSON:
    """The event at one position, for the "what changed" line of every view."""
    items = expand(event.type, event.data)
    type_name = items[0][0] if event.type == GROUP and items else event.type
    summary, _ = describe(type_name, event.data if event.type != GROUP else {}, items)
    stream = event.stream_id
    scale_set = stream.removeprefix("vmss-") if stream.startswith("vmss-") else None
    if stream.startswith("upgrade-") and items:
        scale_set = items[0][1].get("scale_set")
    return {
        "position": event.position,
        "time": event.occurred_at.isoformat(),
        "stream": stream,
        "type": type_name,
        "count": len(items),
        "summary": summary,
        "upgrade": stream.removeprefix("upgrade-") if stream.startswith("upgrade-") else None,
        "scaleSet": scale_set,
    }


def _check(value: int, total: int, limit: int) -> JSON:
    """A threshold check as the engine made it: value of total against limit %."""
    percent = round(100 * value / total, 1) if total else 0.0
    return {"value": value, "total": total, "percent": percent, "limit": limit}


def describe(type_name: str, data: JSON, items: list[tuple[str, JSON]]) -> tuple[str, JSON]:
    """A one-line summary and the decision's inputs (the numbers a threshold saw)."""
    describer = _DESCRIBERS.get(type_name)
    if describer is not None:
        return describer(data)
    short = type_name.split(".", 1)[-1].replace("_", " ")
    ids = [str(item.get("instance_id")) for _, item in items if "instance_id" in item]
    if not ids:
        return short, {k: v for k, v in data.items() if not isinstance(v, list | dict)}
    text = f"{short}: {len(ids)} instance{'s' if len(ids) != 1 else ''}"
    detail: JSON = {"instances": ids[:LIST_LIMIT]}
    health = {item.get("health") for _, item in items if "health" in item}
    if health:
        detail["health"] = sorted(str(h) for h in health)
    return text, detail


def _requested(data: JSON) -> tuple[str, JSON]:
    target = data["target"].get("version")
    count = len(data["instance_versions"])
    policy = data["policy"]
    inputs = {
        "maxBatchInstancePercent": policy["max_batch_instance_percent"],
        "maxUnhealthyInstancePercent": policy["max_unhealthy_instance_percent"],
        "maxUnhealthyUpgradedInstancePercent": policy["max_unhealthy_upgraded_instance_percent"],
        "healthSource": data["health_source"],
        "automaticRollback": data["automatic_rollback"],
    }
    return f"{data['started_by']} requested an upgrade of {count} instances to {target}", inputs


def _precheck(data: JSON) -> tuple[str, JSON]:
    check = _check(data["unhealthy"], data["total"], data["limit_percent"])
    text = f"pre-check passed: {check['percent']} % unhealthy, limit {check['limit']} %"
    return text, {"check": check}


def _batch_started(data: JSON) -> tuple[str, JSON]:
    members = data["members"]
    text = f"batch {data['index']} started: {len(members)} instances ({data['reason']})"
    inputs = {
        "batchSize": data["batch_size"],
        "unhealthyBefore": f"{data['unhealthy']} of {data['total']}",
        "members": members[:LIST_LIMIT],
    }
    return text, inputs


def _batch_completed(data: JSON) -> tuple[str, JSON]:
    check = _check(data["failed_total"], data["processed_total"], data["limit_percent"])
    text = (
        f"batch {data['index']} done: {len(data['succeeded'])} upgraded, "
        f"{len(data['failed'])} failed; {check['percent']} % of upgraded unhealthy, "
        f"limit {check['limit']} %"
    )
    return text, {"check": check, "failed": data["failed"][:LIST_LIMIT]}


def _faulted(data: JSON) -> tuple[str, JSON]:
    check = _check(data["numerator"], data["denominator"], data["limit_percent"])
    return f"Faulted: {data['code']}", {"check": check, "message": data["message"]}


def _health_wait(data: JSON) -> tuple[str, JSON]:
    text = f"waiting for {len(data['instances'])} instances to be healthy"
    return text, {"deadline": data["deadline"]}


_DESCRIBERS: dict[str, Callable[[JSON], tuple[str, JSON]]] = {
    "upgrade.requested": _requested,
    "upgrade.precheck_passed": _precheck,
    "upgrade.batch_started": _batch_started,
    "upgrade.batch_completed": _batch_completed,
    "upgrade.faulted": _faulted,
    "upgrade.completed": lambda data: ("Completed", dict(data)),
    "upgrade.cancelled": lambda data: ("Cancelled", dict(data)),
    "upgrade.health_wait_started": _health_wait,
    "upgrade.pause_started": lambda data: ("pause between batches", {"until": data["until"]}),
}

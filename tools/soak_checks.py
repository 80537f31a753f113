"""The soak's invariants, checked from the log itself with the project's own code.

The log is read page by page (``EventStore.read_all``), folded with the engine's folds
(``ScaleSetState``, ``projections.fleet_view.FleetView``), audited with
``engine.scaleout.fence_audit`` and verified with the store's own ``verify``. The API's reads are
then compared, server by server, with that fresh fold.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
from soak_traffic import API, GROUPS, SUBSCRIPTIONS, Promise, SetShape, list_path

from engine.domain.events import (
    DOMAIN_EVENTS,
    InstanceReimaged,
    ScaleSetCreated,
    ScaleSetModelUpdated,
)
from engine.domain.grouping import decode_all
from engine.domain.model import ScaleSetSpec
from engine.domain.scale_set import ScaleSetState
from engine.scaleout.fence_audit import audit_fences
from events import EventStore, RecordedEvent
from events.verify import VerifyReport
from projections.fleet_view import FleetView

PAGE = 5000
SHOWN = 5  # problems shown per invariant
TERMINAL = ("upgrade.completed", "upgrade.cancelled", "upgrade.faulted")


@dataclass
class Invariant:
    """One invariant's verdict: how many things were checked, how many failed, examples."""

    name: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    failed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # failures by kind of problem

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return self.failed == 0

    def fail(self, problem: str) -> None:
        """Count one failure (the first few are kept as examples, every one by kind)."""
        self.failed += 1
        self.kinds[problem_kind(problem)] += 1
        if len(self.problems) < SHOWN:
            self.problems.append(problem)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready form, for the report."""
        return {
            "name": self.name,
            "status": "PASS" if self.ok else "FAIL",
            "checked": self.checked,
            "failed": self.failed,
            "problems": self.problems,
            "problem_kinds": dict(self.kinds.most_common()),
        }


def problem_kind(problem: str) -> str:
    """A problem without its particulars (names, positions, numbers), to count alike ones."""
    tail = problem.rsplit("): ", 1)[-1] if "): " in problem else problem
    tail = re.sub(r"\b(vm|engine)-\S+", "ENGINE", tail)
    tail = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}/\S+", "SET", tail)
    tail = re.sub(r"\(log: .*\)$", "(log: ...)", tail)
    tail = re.sub(r"\{.*\}|\[.*\]", "...", tail)
    return re.sub(r"\d+", "N", tail)[:120]


async def read_log(store: EventStore) -> list[RecordedEvent]:
    """Every event in position order."""
    records: list[RecordedEvent] = []
    while page := await store.read_all(after=records[-1].position if records else 0, limit=PAGE):
        records.extend(page)
    return records


@dataclass
class Folded:
    """The log folded fresh: each set's state, and the fleet's read model."""

    sets: dict[str, ScaleSetState]
    fleet: FleetView

    @classmethod
    def of(cls, records: list[RecordedEvent]) -> Folded:
        """Fold ``records`` (the whole log, in order) with the engine's folds."""
        folded = cls({}, FleetView())
        folded.feed(records)
        return folded

    def feed(self, records: list[RecordedEvent]) -> None:
        """Fold the next records (in position order)."""
        for record in records:
            self.fleet.apply(record)
            if record.stream_id.startswith("vmss-"):
                key = record.stream_id.removeprefix("vmss-")
                state = self.sets.setdefault(key, ScaleSetState())
                state.apply(DOMAIN_EVENTS.decode(record), record.occurred_at)

    def live(self) -> dict[str, ScaleSetSpec]:
        """The sets that exist now, by key."""
        return {k: s.spec for k, s in self.sets.items() if s.spec is not None and not s.deleted}

    def running(self) -> list[str]:
        """Upgrades not finished, by the upgrade streams or the sets' own streams."""
        views = [u for u, v in self.fleet.upgrades.items() if v.code == "RollingForward"]
        active = [
            s.active_upgrade.upgrade_id
            for s in self.sets.values()
            if s.active_upgrade is not None and not s.deleted
        ]
        return sorted(set(views) | set(active))

    def scheduled_after(self, now: datetime) -> list[str]:
        """Sets with an automatic upgrade scheduled for later than ``now`` (engine time)."""
        return sorted(
            k
            for k, s in self.sets.items()
            if s.scheduled is not None and not s.deleted and s.scheduled.due_at > now
        )


def hash_chain(report: VerifyReport) -> Invariant:
    """The store's own verification of the SHA-256 chain."""
    verdict = Invariant("hash chain intact", checked=report.checked)
    if not report.ok:
        verdict.fail(f"first bad position {report.first_bad_position}: {report.problem}")
    return verdict


def fences(records: list[RecordedEvent]) -> Invariant:
    """``engine.scaleout.fence_audit``: no scale set driven by two engines at once."""
    audit = audit_fences(records)
    verdict = Invariant("fence audit clean", checked=audit.scale_sets)
    for problem in audit.problems:
        verdict.fail(problem)
    return verdict


def reimaged_once(records: list[RecordedEvent]) -> Invariant:
    """No instance is reimaged twice by one upgrade (a takeover redoes no reimage)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        if record.stream_id.startswith("upgrade-"):
            for event in decode_all(record):
                if isinstance(event, InstanceReimaged):
                    counts[record.stream_id][event.instance_id] += 1
    verdict = Invariant("no instance reimaged twice by one upgrade", checked=len(counts))
    for stream, per_instance in sorted(counts.items()):
        twice = sorted(i for i, n in per_instance.items() if n > 1)
        if twice:
            verdict.fail(f"{stream}: instances {twice[:5]} reimaged more than once")
    return verdict


def shape_of(spec: ScaleSetSpec) -> SetShape:
    """The ``SetShape`` a stored model has (compared with what a PUT sent)."""
    rolling, automatic = spec.policy.rolling, spec.policy.automatic
    return SetShape(
        capacity=spec.capacity,
        mode=spec.policy.mode,
        automatic=automatic.enable_automatic_os_upgrade,
        use_rolling_policy=automatic.use_rolling_upgrade_policy,
        disable_rollback=automatic.disable_automatic_rollback,
        max_batch_percent=rolling.max_batch_instance_percent,
        max_unhealthy_percent=rolling.max_unhealthy_instance_percent,
        max_unhealthy_upgraded_percent=rolling.max_unhealthy_upgraded_instance_percent,
        pause_s=rolling.pause_time_between_batches_s,
    )


@dataclass
class _Written:
    """What the log holds, indexed the way promises ask for it."""

    shapes: dict[str, set[SetShape]] = field(default_factory=lambda: defaultdict(set))
    deleted: set[str] = field(default_factory=set)
    published: Counter[str] = field(default_factory=Counter)
    started: set[tuple[str, str]] = field(default_factory=set)
    upgrade_events: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, records: list[RecordedEvent]) -> _Written:
        written = cls()
        for record in records:
            stream, kind = record.stream_id, record.type
            if stream.startswith("vmss-"):
                written._scale_set(stream.removeprefix("vmss-"), record)
            elif stream.startswith("upgrade-"):
                written.upgrade_events[stream.removeprefix("upgrade-")].add(kind)
            elif kind == "image.version_published":
                written.published[f"{stream}@{record.data['version']}"] += 1
        return written

    def _scale_set(self, key: str, record: RecordedEvent) -> None:
        if record.type in ("scaleset.created", "scaleset.model_updated"):
            event = DOMAIN_EVENTS.decode(record)
            assert isinstance(event, ScaleSetCreated | ScaleSetModelUpdated)
            self.shapes[key].add(shape_of(event.spec))
        elif record.type == "scaleset.deleted":
            self.deleted.add(key)
        elif record.type == "scaleset.upgrade_started":
            self.started.add((key, record.data["upgrade_id"]))

    def versions(self) -> set[str]:
        return {k.rsplit("@", 1)[1] for k in self.published}

    def missing(self, promise: Promise) -> str | None:
        """Why the log does not hold what ``promise`` promised (None when it does)."""
        kind, target, upgrade = promise.kind, promise.target, promise.upgrade_id
        if kind == "put" and promise.shape not in self.shapes.get(target, set()):
            return f"PUT {target} acknowledged; no created/model_updated with {promise.shape}"
        if kind == "delete" and target not in self.deleted:
            return f"DELETE {target} acknowledged; no scaleset.deleted"
        if kind == "publish" and target not in self.versions():
            return f"version {target} acknowledged; no image.version_published"
        if kind == "start" and (target, upgrade) not in self.started:
            return f"start of {target} acknowledged as {upgrade}; no upgrade_started"
        wanted = {"cancel": "upgrade.cancel_requested", "approve": "upgrade.instances_approved"}
        if kind in wanted and wanted[kind] not in self.upgrade_events.get(upgrade, set()):
            return f"{kind} of {target} ({upgrade}) acknowledged; no {wanted[kind]}"
        return None


def acknowledged(records: list[RecordedEvent], promises: list[Promise]) -> Invariant:
    """Every 2xx answer to a command is reflected in the log."""
    written = _Written.of(records)
    verdict = Invariant("every acknowledged write present", checked=len(promises))
    for promise in promises:
        problem = written.missing(promise)
        if problem is not None:
            verdict.fail(problem)
    return verdict


def published_once(records: list[RecordedEvent]) -> Invariant:
    """Each image version is recorded once, however many clients published it at once."""
    written = _Written.of(records)
    verdict = Invariant("each image version published once", checked=len(written.published))
    for version, count in sorted(written.published.items()):
        if count > 1:
            verdict.fail(f"{version} recorded {count} times")
    return verdict


def finished(folded: Folded, records: list[RecordedEvent]) -> Invariant:
    """No upgrade is still running after the quiet period."""
    requested = {r.stream_id for r in records if r.type == "upgrade.requested"}
    verdict = Invariant("every upgrade finished", checked=len(requested))
    for upgrade_id in folded.running():
        view = folded.fleet.upgrades.get(upgrade_id)
        where = f" ({view.scale_set}, {view.progress})" if view is not None else ""
        verdict.fail(f"upgrade {upgrade_id}{where} still running")
    terminal = {r.stream_id for r in records if r.type in TERMINAL}
    running = set(folded.running())
    for stream in sorted(requested - terminal):
        if stream.removeprefix("upgrade-") not in running:
            verdict.fail(f"{stream}: no completed/cancelled/faulted event")
    return verdict


# -- the API's reads against the fresh fold ----------------------------------------------


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


async def _get(http: httpx.AsyncClient, url: str, query: dict[str, str] | None = None) -> Any:
    response = await http.get(url, params={"api-version": API, **(query or {})})
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        return f"HTTP {response.status_code} {response.text[:120]}"
    return response.json()


async def _set_differences(
    http: httpx.AsyncClient, base: str, key: str, spec: ScaleSetSpec, folded: Folded, now: datetime
) -> list[str]:
    """What the server shows for one live set that a fresh fold does not."""
    path = (
        f"{base}/subscriptions/{spec.subscription}/resourceGroups/{spec.resource_group}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{spec.name}"
    )
    out: list[str] = []
    model = await _get(http, path)
    if not isinstance(model, dict) or model.get("sku", {}).get("capacity") != spec.capacity:
        out.append(f"{key}: model {str(model)[:80]} (log: capacity {spec.capacity})")
    instances = await _get(http, f"{path}/virtualMachines")
    shown = {
        i["instanceId"]: i["properties"]["storageProfile"]["imageReference"]["exactVersion"]
        for i in (instances or {}).get("value", [])
        if isinstance(instances, dict)
    }
    logged = {i: v.version for i, v in folded.fleet.instances.get(key, {}).items()}
    if shown != logged:
        out.append(f"{key}: instances {shown} (log: {logged})")
    latest = await _get(http, f"{path}/rollingUpgrades/latest")
    if latest != _json(folded.fleet.latest(key)):
        code = (latest or {}).get("properties", {}).get("runningStatus", {}).get("code")
        view = folded.fleet.latest_view(key)
        out.append(f"{key}: latest {code} (log: {view.code if view else None})")
    history = await _get(http, f"{path}/osUpgradeHistory")
    expected = _json(folded.fleet.history(key, now))
    if not isinstance(history, dict) or history.get("value") != expected:
        out.append(f"{key}: osUpgradeHistory differs from the log")
    return out


async def _server_differences(
    http: httpx.AsyncClient, base: str, folded: Folded, now: datetime
) -> list[str]:
    """Every difference between one server's reads and the fresh fold."""
    live = folded.live()
    out: list[str] = []
    for key, spec in sorted(live.items()):
        out += await _set_differences(http, base, key, spec, folded, now)
    for key in sorted(set(folded.sets) - set(live)):
        sub, group, name = key.split("/")
        gone = await _get(http, f"{base}{list_path(sub, group)}/{name}")
        if gone is not None:
            out.append(f"{key}: deleted in the log, the API still shows it")
    for sub in SUBSCRIPTIONS:
        for group in GROUPS:
            listed = await _get(http, f"{base}{list_path(sub, group)}")
            names = {m["name"].lower() for m in (listed or {}).get("value", [])}
            expected = {k.rsplit("/", 1)[1] for k in live if k.startswith(f"{sub}/{group}/")}
            if names != expected:
                out.append(f"{sub}/{group}: list {sorted(names)} (log: {sorted(expected)})")
    return out


async def projection_agrees(
    http: httpx.AsyncClient,
    servers: list[str],
    refold: Callable[[], Awaitable[tuple[Folded, datetime | None]]],
    deadline_s: float,
) -> Invariant:
    """Each server's reads equal a fresh fold of the log, for every set.

    Retried until ``deadline_s``, re-reading the log each time: a server's projection
    may trail the log by its last page.
    """
    verdict = Invariant("API reads agree with a fresh fold")
    until = time.monotonic() + deadline_s
    for index, base in enumerate(servers):
        while True:
            folded, now = await refold()
            try:
                if now is None:
                    raise ValueError("no server tells the engine's time")
                problems = await _server_differences(http, base, folded, now)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems = [f"reading failed: {exc!r}"]
            if not problems or time.monotonic() > until:
                break
            await asyncio.sleep(1.0)  # another process's projection: poll it
        verdict.checked += len(folded.sets)
        for problem in problems:
            verdict.fail(f"server {index}: {problem}")
    return verdict

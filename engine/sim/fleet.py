"""A deterministic, seeded fleet of simulated machines (the ``Fleet`` for tests and demos).

Whether an instance comes back healthy on a version, how long it boots and whether its
reimage fails are drawn from a hash of (seed, scale set, instance, version or operation),
never from shared random state, so the outcome does not depend on the order in which
concurrent workers happen to call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from engine.domain.events import SimulationProfile
from engine.domain.model import DataDisk, Health, ImageReference, ScaleSetSpec
from engine.runtime.clock import EngineClock
from engine.runtime.fleet import Reimage, ReimageOutcome, Restore, RestoreOutcome

DEFAULT_PROFILE = SimulationProfile(unhealthy_instance_percent=0, boot_seconds=30)
_FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True)
class SimulatedInstance:
    """One simulated machine."""

    version: str
    booted_at: datetime
    data_disks: tuple[DataDisk, ...]
    sku: str
    forced: Health | None = None
    reimages: int = 0
    restores: int = 0
    timing: tuple[str, datetime, datetime, Health] | None = None
    """Cached (version, booted_at, ready_at, health once up): read on every probe."""


@dataclass
class SimulatedFleet:
    """Machines that boot, fail and report health as their image versions say."""

    clock: EngineClock
    seed: int = 0
    profiles: dict[str, SimulationProfile] = field(default_factory=dict)
    instances: dict[tuple[str, str], SimulatedInstance] = field(default_factory=dict)
    operations: dict[str, ReimageOutcome | RestoreOutcome] = field(default_factory=dict)
    journal: Path | None = None
    """If set, every machine change is appended (and fsynced) here before the call
    returns, and replayed on start: the simulated machines outlive a killed engine."""
    _replayed: dict[tuple[str, str], tuple[str, datetime, int, int]] = field(
        default_factory=dict, repr=False
    )
    _watchers: list[Callable[[str | None], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.journal is not None and self.journal.exists():
            for line in self.journal.read_bytes().splitlines():
                if line.strip():
                    self._replay(orjson.loads(line))

    def _replay(self, entry: dict[str, object]) -> None:
        key = (str(entry["key"]), str(entry["instance"]))
        _, _, reimages, restores = self._replayed.get(key, ("", datetime.min, 0, 0))
        ok = bool(entry["ok"])
        if entry["op"] == "reimage":
            self.operations[str(entry["id"])] = ReimageOutcome(
                ok,
                str(entry["error"]),
                tuple(entry["failed_extensions"]),  # type: ignore[arg-type]
            )
            reimages += int(ok)
        else:
            self.operations[str(entry["id"])] = RestoreOutcome(ok, str(entry["error"]))
            restores += int(ok)
        if ok:
            at = datetime.fromisoformat(str(entry["at"]))
            self._replayed[key] = (str(entry["version"]), at, reimages, restores)

    def _record(self, entry: dict[str, object]) -> None:
        if self.journal is None:
            return
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_profile(self, version: str, profile: SimulationProfile) -> None:
        """Say how instances behave on ``version`` (from the publish request)."""
        self.profiles[version] = profile
        for machine in self.instances.values():  # boot times may have changed
            machine.timing = None
        self._changed(None)

    def force_health(self, key: str, instance_id: str, health: Health) -> None:
        """Hold an instance at ``health`` until it is next reimaged or restored."""
        self._instance(key, instance_id).forced = health
        self._changed(key)

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """Be told of changes no forecast foresaw (``force_health``, ``set_profile``)."""
        self._watchers.append(changed)

    def _changed(self, key: str | None) -> None:
        for watcher in self._watchers:
            watcher(key)

    def steady_until(self, spec: ScaleSetSpec, instance_ids: Sequence[str]) -> datetime:
        """The earliest moment one of these machines finishes booting (health changes then).

        Up, forced or missing machines keep their signal until something that is not
        a time passing (a reimage, a forced health) changes it.
        """
        until = _FOREVER
        if not spec.has_health_source:
            return until
        now, key, machines = self.clock.now(), spec.key, self.instances
        for instance_id in instance_ids:
            machine = machines.get((key, instance_id))
            if machine is None or machine.forced is not None:
                continue
            timing = self._current_timing(key, instance_id, machine)
            if now < timing[2] < until:
                until = timing[2]
        return until

    def instance(self, key: str, instance_id: str) -> SimulatedInstance:
        """The simulated machine (for tests and the HTTP API)."""
        return self._instance(key, instance_id)

    def _instance(self, key: str, instance_id: str) -> SimulatedInstance:
        try:
            return self.instances[(key, instance_id)]
        except KeyError:
            raise LookupError(f"no instance {instance_id} in scale set {key}") from None

    async def provision(self, spec: ScaleSetSpec, versions: Mapping[str, str]) -> None:
        """Create the machines that do not exist yet, already booted."""
        key = spec.key
        for instance_id, version in versions.items():
            machine = self.instances.setdefault(
                (key, instance_id),
                SimulatedInstance(
                    version=version,
                    booted_at=self.clock.now() - timedelta(days=1),
                    data_disks=spec.data_disks,
                    sku=spec.sku,
                ),
            )
            replayed = self._replayed.pop((key, instance_id), None)
            if replayed is not None:  # the journal knows better than the model
                machine.version, machine.booted_at, machine.reimages, machine.restores = replayed

    async def reimage(
        self, spec: ScaleSetSpec, instance_id: str, image: ImageReference, operation_id: str
    ) -> ReimageOutcome:
        """Replace the OS disk, unless this operation already ran (then say how it went)."""
        done = self.operations.get(operation_id)
        if isinstance(done, ReimageOutcome):
            return done
        machine = self._instance(spec.key, instance_id)
        profile = self.profiles.get(image.version, DEFAULT_PROFILE)
        if self._draw(operation_id) < profile.reimage_failure_percent:
            outcome = ReimageOutcome(ok=False, error="OSProvisioningTimedOut")
        else:
            self._boot(machine, image.version)
            machine.reimages += 1
            now = self.clock.now()
            expired = tuple(
                e.name
                for e in spec.extensions
                if e.credential_expires_at is not None and e.credential_expires_at <= now
            )
            outcome = ReimageOutcome(ok=True, failed_extensions=expired)
        self._done("reimage", operation_id, spec.key, instance_id, image.version, outcome)
        return outcome

    async def restore(
        self, spec: ScaleSetSpec, instance_id: str, version: str, operation_id: str
    ) -> RestoreOutcome:
        """Restore the previous OS disk (idempotent per ``operation_id``)."""
        done = self.operations.get(operation_id)
        if isinstance(done, RestoreOutcome):
            return done
        machine = self._instance(spec.key, instance_id)
        self._boot(machine, version)
        machine.restores += 1
        outcome = RestoreOutcome(ok=True)
        self._done("restore", operation_id, spec.key, instance_id, version, outcome)
        return outcome

    async def apply(
        self, spec: ScaleSetSpec, operations: Sequence[Reimage | Restore]
    ) -> list[ReimageOutcome | RestoreOutcome]:
        """A batch in one pass (no task per instance): each as ``reimage``/``restore``."""
        outcomes: list[ReimageOutcome | RestoreOutcome] = []
        for op in operations:
            if isinstance(op, Reimage):
                outcomes.append(await self.reimage(spec, op.instance_id, op.image, op.operation_id))
            else:
                outcomes.append(
                    await self.restore(spec, op.instance_id, op.version, op.operation_id)
                )
        return outcomes

    def _boot(self, machine: SimulatedInstance, version: str) -> None:
        """A new OS disk on ``version``: the machine boots now, forced health is gone."""
        machine.version = version
        machine.booted_at = self.clock.now()
        machine.forced = None

    def _done(
        self,
        kind: str,
        operation_id: str,
        key: str,
        instance_id: str,
        version: str,
        outcome: ReimageOutcome | RestoreOutcome,
    ) -> None:
        """Remember the outcome (repeats return it) and journal it before answering."""
        self.operations[operation_id] = outcome
        failed = list(outcome.failed_extensions) if isinstance(outcome, ReimageOutcome) else []
        self._record(
            {"op": kind, "id": operation_id, "key": key, "instance": instance_id,
             "version": version, "at": self.clock.now().isoformat(), "ok": outcome.ok,
             "error": outcome.error, "failed_extensions": failed}
        )  # fmt: skip

    async def read_health(
        self, spec: ScaleSetSpec, instance_ids: Sequence[str]
    ) -> dict[str, Health]:
        """Each instance's signal now: forced, booting, or its version's fate.

        Read on every probe of every waiting instance, so the per-instance work is
        kept to a dictionary lookup and two comparisons (see ``_timing``).
        """
        now, key, machines = self.clock.now(), spec.key, self.instances
        # SPEC 2.2.4: without a probe or extension, running and provisioned is healthy.
        sourced = spec.has_health_source
        booting = Health.INITIALIZING if spec.health_extension else Health.UNHEALTHY
        health: dict[str, Health] = {}
        for instance_id in instance_ids:
            machine = machines.get((key, instance_id))
            if machine is None:
                health[instance_id] = Health.UNKNOWN
            elif machine.forced is not None:
                health[instance_id] = machine.forced
            elif not sourced:
                health[instance_id] = Health.HEALTHY
            else:
                health[instance_id] = self._health(key, instance_id, machine, now, booting)
        return health

    def _health(
        self, key: str, instance_id: str, machine: SimulatedInstance, now: datetime, booting: Health
    ) -> Health:
        timing = self._current_timing(key, instance_id, machine)
        if now < timing[2]:
            return booting
        return timing[3]

    def _current_timing(
        self, key: str, instance_id: str, machine: SimulatedInstance
    ) -> tuple[str, datetime, datetime, Health]:
        """The machine's cached timing, computed again after a boot or a new profile."""
        timing = machine.timing
        if timing is None or timing[0] != machine.version or timing[1] != machine.booted_at:
            timing = machine.timing = self._timing(key, instance_id, machine)
        return timing

    def _timing(
        self, key: str, instance_id: str, machine: SimulatedInstance
    ) -> tuple[str, datetime, datetime, Health]:
        """When the machine is up on its version, and its health from then on (a hash)."""
        profile = self.profiles.get(machine.version, DEFAULT_PROFILE)
        ready_at = machine.booted_at + timedelta(seconds=profile.boot_seconds)
        fate = self._draw(f"{key}/{instance_id}/{machine.version}")
        up = Health.UNHEALTHY if fate < profile.unhealthy_instance_percent else Health.HEALTHY
        return machine.version, machine.booted_at, ready_at, up

    def _draw(self, key: str) -> float:
        """A number in [0, 100) fixed by the seed and ``key``."""
        digest = hashlib.blake2b(f"{self.seed}/{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 10_000 / 100

"""Scenario files for ``osupgrade simulate``: a described fleet, parsed and checked.

A scenario says which scale sets exist (sizes, policies, health sources, zones, Service
Fabric), how the new image version behaves, and what happens on the way (manual starts,
cancels, maintenance that makes instances unhealthy mid-rollout). Policy files for
``--compare`` replace the rolling upgrade policy of every scale set. The format is
documented in ``docs/SIMULATE.md``.

Every mistake is reported as ``FILE:LINE:COLUMN: message (at /json/pointer)``: a what-if
tool that says "invalid scenario" without saying where wastes the user's afternoon.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from engine.domain.events import SimulationProfile
from engine.domain.model import (
    AutomaticOSUpgradePolicy,
    Health,
    HealthExtension,
    ImageReference,
    RollingUpgradePolicy,
    ScaleSetSpec,
    UpgradePolicy,
    version_key,
)
from engine.domain.scale_set import EngineSettings
from engine.domain.validation import InvalidParameterError, validate_scale_set
from engine.jsonpos import Located, escape, loads_located

T = TypeVar("T")
ACTIONS = ("startUpgrade", "cancelUpgrade", "approveUpgrade", "setHealth", "clearHealth")
HEALTH_SOURCES = ("probe", "extension", "none")
MODES = ("Automatic", "Manual", "Rolling")
_NO_FLAGS: dict[str, bool] = {}
SUBSCRIPTION = "sim"
RESOURCE_GROUP = "rg"
_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,50}")
_VERSION = re.compile(r"\d{1,9}\.\d{1,9}\.\d{1,9}")
_IDENT = re.compile(r"[A-Za-z0-9._-]{1,128}")


class ScenarioError(ValueError):
    """A scenario or policy file is wrong; the message names file, line and column."""

    def __init__(self, source: str, line: int, column: int, pointer: str, message: str) -> None:
        where = f" (at {pointer})" if pointer else ""
        super().__init__(f"{source}:{line}:{column}: {message}{where}")
        self.source = source
        self.line = line
        self.column = column
        self.pointer = pointer
        self.message = message


@dataclass(frozen=True)
class ImagePlan:
    """The image every scale set runs, the version they start on, and the new one."""

    location: str = "westeurope"
    publisher: str = "Canonical"
    offer: str = "UbuntuServer"
    sku: str = "18.04-LTS"
    current_version: str = "1.0.0"
    new_version: str = "1.1.0"
    behaviour: SimulationProfile = field(default_factory=SimulationProfile)

    @property
    def family(self) -> tuple[str, str, str]:
        """(publisher, offer, sku)."""
        return (self.publisher, self.offer, self.sku)


@dataclass(frozen=True)
class ScaleSetGroup:
    """``count`` scale sets alike but for their size, named ``name-000``, ``name-001``..."""

    name: str
    count: int
    capacity: tuple[int, int]  # inclusive range; each set's size is drawn from the seed
    health_source: str
    policy: UpgradePolicy
    zones: tuple[str, ...] = ()
    service_fabric: bool = False
    update_domains: int = 5

    def set_names(self) -> list[str]:
        """The names of this group's scale sets (a single set keeps the group's name)."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i:03d}" for i in range(self.count)]


@dataclass(frozen=True)
class Action:
    """Something that happens ``at_s`` seconds after the new version is published."""

    at_s: int
    kind: str  # one of ACTIONS
    target: str  # a group name (all its sets) or one scale set's name
    instance_percent: int | None = None
    instances: tuple[int, ...] = ()
    health: Health = Health.UNHEALTHY


@dataclass(frozen=True)
class Scenario:
    """A whole what-if: fleet, image behaviour, engine timings and timed actions."""

    name: str
    seed: int
    start: datetime
    image: ImagePlan
    groups: tuple[ScaleSetGroup, ...]
    actions: tuple[Action, ...] = ()
    settings: EngineSettings = field(default_factory=EngineSettings)

    def specs(self) -> list[ScaleSetSpec]:
        """Every scale set's model; sizes drawn from the seed, so reruns match."""
        return [spec for group in self.groups for spec in group_specs(self, group)]

    def targets(self, name: str) -> list[str]:
        """Scale set names an action's ``scaleSets`` refers to."""
        for group in self.groups:
            if name == group.name:
                return group.set_names()
            if name in group.set_names():
                return [name]
        return []


@dataclass(frozen=True)
class PolicyVariant:
    """A ``--compare`` policy: replaces every scale set's rolling upgrade policy."""

    name: str
    rolling: RollingUpgradePolicy
    automatic: dict[str, bool]  # automaticOSUpgradePolicy fields to override

    def apply(self, scenario: Scenario) -> Scenario:
        """The scenario with this policy in every scale set."""
        groups = []
        for group in scenario.groups:
            automatic = replace(group.policy.automatic, **self.automatic)
            policy = replace(group.policy, rolling=self.rolling, automatic=automatic)
            groups.append(replace(group, policy=policy))
        return replace(scenario, groups=tuple(groups))


def group_specs(scenario: Scenario, group: ScaleSetGroup) -> list[ScaleSetSpec]:
    """The models of one group's scale sets."""
    low, high = group.capacity
    specs = []
    for name in group.set_names():
        capacity = random.Random(f"{scenario.seed}/{name}").randint(low, high)
        specs.append(_spec(scenario, group, name, capacity))
    return specs


def _spec(scenario: Scenario, group: ScaleSetGroup, name: str, capacity: int) -> ScaleSetSpec:
    image = scenario.image
    return ScaleSetSpec(
        subscription=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        name=name,
        location=image.location,
        capacity=capacity,
        image=ImageReference(*image.family),
        policy=group.policy,
        health_probe=group.health_source == "probe",
        health_extension=HealthExtension() if group.health_source == "extension" else None,
        zones=group.zones,
        service_fabric=group.service_fabric,
        service_fabric_durability="Silver" if group.service_fabric else None,
        update_domains=group.update_domains,
    )


# -- reading files ----------------------------------------------------------------------


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; raise ``ScenarioError`` naming line and column."""
    doc = _load(path)
    return _Reader(doc, str(path)).scenario()


def load_policy(path: Path) -> PolicyVariant:
    """Read and check a ``--compare`` policy file."""
    doc = _load(path)
    return _Reader(doc, str(path)).policy_variant(path.stem)


def parse_duration(text: str) -> int:
    """ISO 8601 duration (``PT1H30M``, ``P1D``, ``PT0S``) to seconds; ValueError if not one."""
    match = _DURATION.fullmatch(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration like PT30M")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _load(path: Path) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), 0, 0, "", f"cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), 1, 1, "", "the file is not UTF-8 text") from None
    try:
        return loads_located(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(str(path), exc.lineno, exc.colno, "", f"not JSON: {exc.msg}") from None


class _Reader:
    """Typed access to a located JSON document; every check knows its pointer."""

    def __init__(self, doc: Located, source: str) -> None:
        self.doc = doc
        self.source = source

    def fail(self, pointer: str, message: str) -> ScenarioError:
        line, column = self.doc.line_col(pointer)
        return ScenarioError(self.source, line, column, pointer, message)

    def get(self, pointer: str) -> Any:
        value: Any = self.doc.value
        for token in pointer.split("/")[1:]:
            key = token.replace("~1", "/").replace("~0", "~")
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value

    def obj(self, pointer: str, allowed: Sequence[str], required: Sequence[str] = ()) -> set[str]:
        """Check an object's keys (typos are errors); return the keys present."""
        value = self.get(pointer)
        if not isinstance(value, dict):
            raise self.fail(pointer, "must be an object")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{pointer}/{escape(key)}",
                    f"unknown field {key!r}; expected one of: {', '.join(allowed)}",
                )
        for key in required:
            if key not in value:
                raise self.fail(pointer, f"missing required field {key!r}")
        return set(value)

    def opt(self, pointer: str, key: str, read: Callable[[str], T], default: T) -> T:
        """``read`` the field if the object has it, else ``default``."""
        value = self.get(pointer)
        return read(f"{pointer}/{escape(key)}") if key in value else default

    def integer(self, pointer: str, low: int, high: int) -> int:
        value = self.get(pointer)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(pointer, f"must be an integer from {low} to {high}, not {value!r}")
        return value

    def boolean(self, pointer: str) -> bool:
        value = self.get(pointer)
        if not isinstance(value, bool):
            raise self.fail(pointer, f"must be true or false, not {value!r}")
        return value

    def string(self, pointer: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        value = self.get(pointer)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.fail(pointer, f"must be {what or 'a string'}, not {value!r}")
        return value

    def choice(self, pointer: str, options: Sequence[str]) -> str:
        value = self.get(pointer)
        if value not in options:
            raise self.fail(pointer, f"must be one of {', '.join(options)}, not {value!r}")
        return str(value)

    def duration(self, pointer: str, maximum: int) -> int:
        value = self.string(pointer, what="an ISO 8601 duration like PT30M")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.fail(pointer, str(exc)) from None
        if seconds > maximum:
            raise self.fail(pointer, f"must be at most {maximum} seconds, not {seconds}")
        return seconds

    def array(self, pointer: str, min_items: int = 0) -> int:
        value = self.get(pointer)
        if not isinstance(value, list) or len(value) < min_items:
            raise self.fail(pointer, f"must be a list of at least {min_items} item(s)")
        return len(value)

    # -- the scenario ---------------------------------------------------------------

    def scenario(self) -> Scenario:
        fields = ("name", "seed", "start", "image", "engine", "scaleSets", "actions")
        self.obj("", fields, required=("scaleSets",))
        start = self.opt("", "start", self.time, datetime(2026, 3, 1, tzinfo=UTC))
        scenario = Scenario(
            name=self.opt("", "name", self.string, "scenario"),
            seed=self.opt("", "seed", lambda p: self.integer(p, 0, 2**31), 1),
            start=start,
            image=self.opt("", "image", self.image, ImagePlan()),
            groups=self.groups("/scaleSets"),
            settings=self.opt("", "engine", self.settings, EngineSettings()),
        )
        self.check_models(scenario)
        no_actions: tuple[Action, ...] = ()
        actions = self.opt("", "actions", lambda p: self.actions(p, scenario), no_actions)
        return replace(scenario, actions=actions)

    def time(self, pointer: str) -> datetime:
        text = self.string(pointer, what="an RFC 3339 time")
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(pointer, f"must be an RFC 3339 time, not {text!r}") from None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    def image(self, pointer: str) -> ImagePlan:
        fields = {  # JSON name -> (ImagePlan attribute, pattern, what it must be)
            "location": ("location", _IDENT, "a name of letters, digits, '.', '_' or '-'"),
            "publisher": ("publisher", _IDENT, "a name of letters, digits, '.', '_' or '-'"),
            "offer": ("offer", _IDENT, "a name of letters, digits, '.', '_' or '-'"),
            "sku": ("sku", _IDENT, "a name of letters, digits, '.', '_' or '-'"),
            "currentVersion": ("current_version", _VERSION, "a version like 1.2.3"),
            "newVersion": ("new_version", _VERSION, "a version like 1.2.3"),
        }
        present = self.obj(pointer, (*fields, "newVersionBehaviour"))
        values: dict[str, Any] = {
            attr: self.string(f"{pointer}/{name}", pattern, what)
            for name, (attr, pattern, what) in fields.items()
            if name in present
        }
        behaviour = self.opt(pointer, "newVersionBehaviour", self.behaviour, SimulationProfile())
        plan = ImagePlan(**values, behaviour=behaviour)
        if version_key(plan.new_version) <= version_key(plan.current_version):
            raise self.fail(f"{pointer}/newVersion", "must be newer than currentVersion")
        return plan

    def behaviour(self, pointer: str) -> SimulationProfile:
        self.obj(pointer, ("unhealthyInstancePercent", "bootSeconds", "reimageFailurePercent"))
        percent = lambda p: self.integer(p, 0, 100)  # noqa: E731
        return SimulationProfile(
            unhealthy_instance_percent=self.opt(pointer, "unhealthyInstancePercent", percent, 0),
            boot_seconds=self.opt(pointer, "bootSeconds", lambda p: self.integer(p, 0, 7200), 30),
            reimage_failure_percent=self.opt(pointer, "reimageFailurePercent", percent, 0),
        )

    def settings(self, pointer: str) -> EngineSettings:
        names = ("firstRolloutMaxDelay", "healthTimeout", "maxConcurrentUpgrades")
        self.obj(pointer, names)
        default = EngineSettings()
        return EngineSettings(
            first_rollout_max_delay_s=self.opt(
                pointer,
                "firstRolloutMaxDelay",
                lambda p: self.duration(p, 86_400),
                default.first_rollout_max_delay_s,
            ),
            health_timeout_s=self.opt(
                pointer, "healthTimeout", lambda p: self.duration(p, 7200), default.health_timeout_s
            ),
            max_concurrent_upgrades=self.opt(
                pointer, "maxConcurrentUpgrades", lambda p: self.integer(p, 1, 100_000), None
            ),
        )

    def groups(self, pointer: str) -> tuple[ScaleSetGroup, ...]:
        count = self.array(pointer, min_items=1)
        groups = tuple(self.group(f"{pointer}/{i}") for i in range(count))
        seen: dict[str, int] = {}
        for index, group in enumerate(groups):
            for name in group.set_names():
                if name in seen:
                    raise self.fail(
                        f"{pointer}/{index}/name",
                        f"scale set name {name!r} is also made by /scaleSets/{seen[name]}",
                    )
                seen[name] = index
        return groups

    def group(self, pointer: str) -> ScaleSetGroup:
        fields = ("name", "count", "capacity", "healthSource", "upgradePolicy", "zones")
        self.obj(pointer, (*fields, "serviceFabric", "updateDomains"), required=("name",))
        name_what = "a lower-case name of letters, digits and '-' (at most 51)"
        service_fabric = self.opt(pointer, "serviceFabric", self.boolean, False)
        return ScaleSetGroup(
            name=self.string(f"{pointer}/name", _NAME, name_what),
            count=self.opt(pointer, "count", lambda p: self.integer(p, 1, 10_000), 1),
            capacity=self.opt(pointer, "capacity", self.capacity, (10, 10)),
            health_source=self.opt(
                pointer,
                "healthSource",
                lambda p: self.choice(p, HEALTH_SOURCES),
                "none" if service_fabric else "probe",
            ),
            policy=self.opt(pointer, "upgradePolicy", self.upgrade_policy, _automatic_default()),
            zones=self.opt(pointer, "zones", self.zones, ()),
            service_fabric=service_fabric,
            update_domains=self.opt(pointer, "updateDomains", lambda p: self.integer(p, 1, 20), 5),
        )

    def capacity(self, pointer: str) -> tuple[int, int]:
        value = self.get(pointer)
        if isinstance(value, list):
            if len(value) != 2:
                raise self.fail(pointer, "must be a number of instances or [min, max]")
            low = self.integer(f"{pointer}/0", 1, 1000)
            high = self.integer(f"{pointer}/1", 1, 1000)
            if high < low:
                raise self.fail(pointer, f"[min, max] with max {high} below min {low}")
            return low, high
        size = self.integer(pointer, 1, 1000)
        return size, size

    def zones(self, pointer: str) -> tuple[str, ...]:
        count = self.array(pointer)
        return tuple(self.string(f"{pointer}/{i}", what="a zone name") for i in range(count))

    def upgrade_policy(self, pointer: str) -> UpgradePolicy:
        self.obj(pointer, ("mode", "rollingUpgradePolicy", "automaticOSUpgradePolicy"))
        return UpgradePolicy(
            mode=self.opt(pointer, "mode", lambda p: self.choice(p, MODES), "Manual"),
            rolling=self.opt(
                pointer, "rollingUpgradePolicy", self.rolling_policy, RollingUpgradePolicy()
            ),
            automatic=AutomaticOSUpgradePolicy(
                **self.opt(pointer, "automaticOSUpgradePolicy", self.automatic_policy, _NO_FLAGS)
            ),
        )

    def rolling_policy(self, pointer: str) -> RollingUpgradePolicy:
        ranges = {
            "maxBatchInstancePercent": ("max_batch_instance_percent", 5),
            "maxUnhealthyInstancePercent": ("max_unhealthy_instance_percent", 5),
            "maxUnhealthyUpgradedInstancePercent": ("max_unhealthy_upgraded_instance_percent", 0),
        }
        flags = {
            "prioritizeUnhealthyInstances": "prioritize_unhealthy_instances",
            "enableCrossZoneUpgrade": "enable_cross_zone_upgrade",
            "maxSurge": "max_surge",
            "rollbackFailedInstancesOnPolicyBreach": "rollback_failed_instances_on_policy_breach",
        }
        present = self.obj(pointer, (*ranges, "pauseTimeBetweenBatches", *flags))
        values: dict[str, Any] = {}
        for name, (attr, low) in ranges.items():
            if name in present:
                values[attr] = self.integer(f"{pointer}/{name}", low, 100)
        for name, attr in flags.items():
            if name in present:
                values[attr] = self.boolean(f"{pointer}/{name}")
        if "pauseTimeBetweenBatches" in present:
            values["pause_time_between_batches_s"] = self.duration(
                f"{pointer}/pauseTimeBetweenBatches", 600
            )
        return RollingUpgradePolicy(**values)

    def automatic_policy(self, pointer: str) -> dict[str, bool]:
        flags = {
            "enableAutomaticOSUpgrade": "enable_automatic_os_upgrade",
            "disableAutomaticRollback": "disable_automatic_rollback",
            "useRollingUpgradePolicy": "use_rolling_upgrade_policy",
            "osRollingUpgradeDeferral": "os_rolling_upgrade_deferral",
        }
        present = self.obj(pointer, tuple(flags))
        return {attr: self.boolean(f"{pointer}/{n}") for n, attr in flags.items() if n in present}

    def actions(self, pointer: str, scenario: Scenario) -> tuple[Action, ...]:
        count = self.array(pointer)
        actions = [self.action(f"{pointer}/{i}", scenario) for i in range(count)]
        return tuple(sorted(actions, key=lambda a: a.at_s))  # stable: file order at equal times

    def action(self, pointer: str, scenario: Scenario) -> Action:
        fields = ("at", "do", "scaleSets", "instancePercent", "instances", "health")
        present = self.obj(pointer, fields, required=("at", "do", "scaleSets"))
        kind = self.choice(f"{pointer}/do", ACTIONS)
        target = self.string(f"{pointer}/scaleSets", what="a group or scale set name")
        if not scenario.targets(target):
            raise self.fail(f"{pointer}/scaleSets", f"no scale set or group is named {target!r}")
        if kind != "setHealth" and present & {"instancePercent", "instances", "health"}:
            raise self.fail(pointer, f"{kind} takes only at, do and scaleSets")
        if kind == "setHealth" and len(present & {"instancePercent", "instances"}) != 1:
            raise self.fail(pointer, "setHealth needs exactly one of instancePercent or instances")
        instances: tuple[int, ...] = ()
        if "instances" in present:
            size = self.array(f"{pointer}/instances", min_items=1)
            instances = tuple(self.integer(f"{pointer}/instances/{i}", 0, 999) for i in range(size))
        return Action(
            at_s=self.duration(f"{pointer}/at", 30 * 86_400),
            kind=kind,
            target=target,
            instance_percent=self.opt(
                pointer, "instancePercent", lambda p: self.integer(p, 1, 100), None
            ),
            instances=instances,
            health=Health(
                self.opt(
                    pointer,
                    "health",
                    lambda p: self.choice(p, [h.value for h in Health]),
                    Health.UNHEALTHY.value,
                )
            ),
        )

    def check_models(self, scenario: Scenario) -> None:
        """The engine's own validation (SPEC 2.3), reported at the group that breaks it."""
        for index, group in enumerate(scenario.groups):
            spec = _spec(scenario, group, group.set_names()[0], group.capacity[0])
            try:
                validate_scale_set(spec)
            except InvalidParameterError as exc:
                message = f"the engine refuses this model: {exc}"
                raise self.fail(f"/scaleSets/{index}", message) from None

    # -- policy files ---------------------------------------------------------------

    def policy_variant(self, default_name: str) -> PolicyVariant:
        self.obj("", ("name", "rollingUpgradePolicy", "automaticOSUpgradePolicy"))
        return PolicyVariant(
            name=self.opt("", "name", self.string, default_name),
            rolling=self.opt(
                "", "rollingUpgradePolicy", self.rolling_policy, RollingUpgradePolicy()
            ),
            automatic=self.opt(
                "",
                "automaticOSUpgradePolicy",
                self.automatic_policy,
                {"use_rolling_upgrade_policy": True},
            ),
        )


def _automatic_default() -> UpgradePolicy:
    """What a scale set without ``upgradePolicy`` gets: automatic OS upgrades, defaults."""
    return UpgradePolicy(
        mode="Automatic",
        automatic=AutomaticOSUpgradePolicy(enable_automatic_os_upgrade=True),
    )

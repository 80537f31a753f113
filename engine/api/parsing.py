"""Request bodies and query parameters -> domain values, or a 400 naming the property.

Every check happens here or in the pure domain validation (``validate_scale_set``)
before the engine is called, so a refused request writes nothing. Like ARM, property
names and enum values are matched case-insensitively; values must have the JSON type
the REST spec gives them (a string where an integer belongs is refused, not coerced).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.requests import ClientDisconnect, Request

from engine.api.envelope import parse_identity, parse_tags
from engine.api.errors import ApiError, invalid
from engine.domain.events import SimulationProfile
from engine.domain.model import (
    AutomaticOSUpgradePolicy,
    DataDisk,
    Extension,
    Health,
    HealthExtension,
    ImageReference,
    RollingUpgradePolicy,
    ScaleSetSpec,
    UpgradePolicy,
    canonical_version,
)
from engine.domain.names import is_letter_or_digit
from engine.domain.validation import InvalidParameterError, validate_scale_set

JSON = dict[str, Any]

API_VERSIONS = frozenset(
    [
        "2018-10-01",
        "2019-03-01",
        "2019-07-01",
        "2019-12-01",
        "2020-06-01",
        "2020-12-01",
        "2021-03-01",
        "2021-04-01",
        "2021-07-01",
        "2021-11-01",
        "2022-03-01",
        "2022-08-01",
        "2022-11-01",
        "2023-03-01",
        "2023-07-01",
        "2023-09-01",
        "2024-03-01",
        "2024-07-01",
        "2024-11-01",
        "2025-04-01",
        "2025-11-01",
        "2026-04-01",
    ]
)
"""Published Compute api-versions from 2018-10-01 on (SDK 39 sends 2026-04-01; the az
CLI 2022-11-01, 2023-03-01 and 2023-09-01)."""

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_STRING = 256
MAX_EXTENSIONS = 50
MAX_DATA_DISKS = 64
MAX_ADVANCE_S = 366 * 24 * 3600

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?")
_GROUP_PUNCTUATION = frozenset("_-.()")
MAX_GROUP = 90
_SUBSCRIPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_LOCATION = re.compile(r"[A-Za-z0-9]{1,64}")
_IMAGE_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")
_VERSION = re.compile(r"\d{1,9}\.\d{1,9}\.\d{1,9}")
_DURATION = re.compile(
    r"P(?:(?P<d>\d{1,6})D)?(?:T(?=\d)(?:(?P<h>\d{1,6})H)?(?:(?P<m>\d{1,6})M)?(?:(?P<s>\d{1,6})S)?)?"
)
_HEALTH_TYPES = ("applicationhealthlinux", "applicationhealthwindows")
_FABRIC_TYPES = ("servicefabricnode", "servicefabriclinuxnode")
MAX_PAUSE_S = 600


def api_version(value: str | None) -> str:
    """The request's ``api-version``: required, and one we know (400 otherwise)."""
    if value is None or value == "":
        raise ApiError(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if value not in API_VERSIONS:
        raise ApiError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{value[:40]}' is invalid. The supported versions are "
            f"'{', '.join(sorted(API_VERSIONS))}'.",
        )
    return value


def query_params(request: Request) -> dict[str, str]:
    """The query string as a dict, parsed once per request (first value of each name).

    Cheaper than Starlette's ``QueryParams`` on the hot reads: most query strings here
    are just ``api-version=...`` and need no unquoting.
    """
    scope = request.scope
    cached: dict[str, str] | None = scope.get("osupgrade.query")
    if cached is not None:
        return cached
    raw = scope["query_string"].decode("latin-1")
    parsed: dict[str, str] = {}
    for pair in raw.split("&"):
        name, _, value = pair.partition("=")
        if "%" in pair or "+" in pair:
            name, value = unquote_plus(name), unquote_plus(value)
        parsed.setdefault(name, value)
    scope["osupgrade.query"] = parsed
    return parsed


async def read_body(request: Request) -> bytes:
    """The request body, refused (400) as soon as it exceeds ``MAX_BODY_BYTES``.

    Read chunk by chunk, so an oversized or endless body is never held in memory.
    """
    if "osupgrade.body" in request.scope:
        return bytes(request.scope["osupgrade.body"])
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed by the body timeout: nobody reads an answer
        raise ApiError(
            400, "InvalidRequestContent", "The request content did not arrive in time."
        ) from None
    body = b"".join(chunks)
    request.scope["osupgrade.body"] = body  # kept for forwarding to another server
    return body


def _too_large() -> ApiError:
    return ApiError(
        400, "InvalidRequestContent", f"The request content exceeds {MAX_BODY_BYTES} bytes."
    )


def load_json(body: bytes, *, optional: bool = False) -> Any:
    """Decode a request body; an empty body is ``{}`` when ``optional``."""
    if not body.strip():
        if optional:
            return {}
        raise ApiError(400, "InvalidRequestContent", "The request content is empty.")
    if len(body) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, "InvalidRequestContent", f"The request content is not valid JSON: {exc}"
        ) from None
    if _depth(value) > MAX_DEPTH:
        raise ApiError(
            400, "InvalidRequestContent", f"The request content nests deeper than {MAX_DEPTH}."
        )
    return value


def _depth(value: Any) -> int:
    """How deeply a decoded JSON value nests (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_resource_path(subscription: str, resource_group: str, name: str) -> None:
    """Names a new scale set may have: ARM's rules for each segment (docs/API.md)."""
    if not _SUBSCRIPTION.fullmatch(subscription):
        raise invalid("subscriptionId", f"'{subscription[:80]}' is not a valid subscription id")
    if not is_resource_group_name(resource_group):
        raise invalid(
            "resourceGroupName",
            f"must be 1-{MAX_GROUP} letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
        )
    if not _NAME.fullmatch(name):
        raise invalid(
            "name",
            "must be 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or "
            "digit and ending with a letter, digit or '_'",
        )


def is_resource_group_name(name: str) -> bool:
    """ARM's rule: 1-90 UTF-16 units, each a .NET letter or digit or one of ``_-.()``,
    not ending in a period."""
    if not 1 <= len(name) <= MAX_GROUP or name.endswith("."):
        return False
    return all(c in _GROUP_PUNCTUATION or is_letter_or_digit(c) for c in name)


def check_location(value: str, target: str) -> str:
    """A region name such as ``westeurope`` (ARM's canonical form; display names with
    spaces are refused, since the name goes into operation URLs)."""
    if not _LOCATION.fullmatch(value):
        raise invalid(
            target, "must be a region name of ASCII letters and digits, such as 'westeurope'"
        )
    return value


def check_image_path(location: str, publisher: str, offer: str, sku: str) -> None:
    """The path segments of a platform image family: 400 naming the first bad one."""
    check_location(location, "location")
    for target, value in (("publisherName", publisher), ("offer", offer), ("skus", sku)):
        _image_part(value, target)


def _image_part(value: str, target: str) -> str:
    if not _IMAGE_PART.fullmatch(value):
        raise invalid(target, "must be 1-128 ASCII letters, digits, '.', '_' or '-'")
    return value


# -- typed access ------------------------------------------------------------------


def _object(value: Any, path: str) -> JSON:
    """A JSON object with lower-cased keys (ARM matches property names case-insensitively);
    a missing (null) object is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(path or "body", "must be a JSON object")
    return {str(k).lower(): v for k, v in value.items()}


def _get(obj: JSON, name: str) -> Any:
    return obj.get(name.lower())


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field(obj: JSON, name: str, path: str, *, required: bool) -> tuple[Any, str]:
    """The value of ``name`` (None when absent) and its ARM target; absent and required: 400."""
    value = _get(obj, name)
    target = _join(path, name)
    if value is None and required:
        raise invalid(target, "is required")
    return value, target


def _string(obj: JSON, name: str, path: str, default: str | None = None) -> str:
    value, target = _field(obj, name, path, required=default is None)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value or len(value) > MAX_STRING:
        raise invalid(target, f"must be a non-empty string of at most {MAX_STRING} characters")
    if not value.isprintable():
        raise invalid(target, "must not contain control characters")
    return value


def _int(obj: JSON, name: str, path: str, default: int | None = None) -> int:
    value, target = _field(obj, name, path, required=default is None)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(target, "must be an integer")
    return value


def _bool(obj: JSON, name: str, path: str, default: bool | None = None) -> bool:
    value, target = _field(obj, name, path, required=default is None)
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # docs show "MaxSurge": "true"; ARM accepts it
    if not isinstance(value, bool):
        raise invalid(target, "must be true or false")
    return value


def _enum(obj: JSON, name: str, path: str, choices: tuple[str, ...], default: str | None) -> str:
    value = _string(obj, name, path, default)
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    raise invalid(_join(path, name), f"must be one of {', '.join(choices)}")


def _list(obj: JSON, name: str, path: str, limit: int) -> list[Any]:
    value = _get(obj, name)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise invalid(_join(path, name), f"must be an array of at most {limit} items")
    return value


# -- scale sets --------------------------------------------------------------------


def parse_scale_set(
    body: Any, *, subscription: str, resource_group: str, name: str, api_version: str
) -> ScaleSetSpec:
    """A ``VirtualMachineScaleSet`` body (PUT, or PATCH merged onto the current model)."""
    root = _object(body, "")
    location = check_location(_string(root, "location", ""), "location")
    sku = _object(_get(root, "sku"), "sku")
    capacity = _int(sku, "capacity", "sku")
    sku_name = _string(sku, "name", "sku", "Standard_D2s_v3")
    zones = tuple(_zone(z, f"zones[{i}]") for i, z in enumerate(_list(root, "zones", "", 3)))
    props = _object(_get(root, "properties"), "properties")
    policy = parse_policy(_get(props, "upgradePolicy"), "properties.upgradePolicy")
    vm_path = "properties.virtualMachineProfile"
    vm = _object(_get(props, "virtualMachineProfile"), vm_path)
    storage = _object(_get(vm, "storageProfile"), f"{vm_path}.storageProfile")
    image = parse_image(_get(storage, "imageReference"), f"{vm_path}.storageProfile.imageReference")
    disks = _data_disks(storage, f"{vm_path}.storageProfile")
    os_type, automatic_updates = _os(vm, storage, vm_path)
    network = _object(_get(vm, "networkProfile"), f"{vm_path}.networkProfile")
    probe = _object(_get(network, "healthProbe"), f"{vm_path}.networkProfile.healthProbe")
    probe_id = _string(probe, "id", f"{vm_path}.networkProfile.healthProbe") if probe else ""
    health_probe = bool(probe_id)
    extensions = _extensions(vm, f"{vm_path}.extensionProfile", policy)
    if (
        policy.automatic.enable_automatic_os_upgrade
        and os_type == "Windows"
        and automatic_updates is None
    ):
        automatic_updates = False  # SPEC 2.3: set false automatically
    spec = ScaleSetSpec(
        subscription=subscription,
        resource_group=resource_group,
        name=name,
        location=location,
        capacity=capacity,
        image=image,
        sku=sku_name,
        policy=policy,
        health_probe=health_probe,
        health_extension=extensions.health,
        extensions=extensions.others,
        data_disks=disks,
        zones=zones,
        os_type=os_type,
        enable_automatic_updates=automatic_updates,
        service_fabric=extensions.fabric,
        service_fabric_durability=extensions.durability,
        api_version=api_version,
        tags=parse_tags(_get(root, "tags")),
        identity=parse_identity(_get(root, "identity")),
        health_probe_id=probe_id,
    )
    try:
        validate_scale_set(spec)
    except InvalidParameterError as exc:
        raise invalid(exc.target, exc.message) from None
    return spec


def _zone(value: Any, target: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 8 or not value.isalnum():
        raise invalid(target, "must be a zone name such as '1'")
    return value


def parse_policy(value: Any, path: str) -> UpgradePolicy:
    """``properties.upgradePolicy`` with Azure's defaults (SPEC 2.3)."""
    obj = _object(value, path)
    mode = _enum(obj, "mode", path, ("Automatic", "Manual", "Rolling"), "Manual")
    rpath = f"{path}.rollingUpgradePolicy"
    r = _object(_get(obj, "rollingUpgradePolicy"), rpath)
    rolling = RollingUpgradePolicy(
        max_batch_instance_percent=_int(r, "maxBatchInstancePercent", rpath, 20),
        max_unhealthy_instance_percent=_int(r, "maxUnhealthyInstancePercent", rpath, 20),
        max_unhealthy_upgraded_instance_percent=_int(
            r, "maxUnhealthyUpgradedInstancePercent", rpath, 20
        ),
        pause_time_between_batches_s=_pause(r, rpath),
        prioritize_unhealthy_instances=_bool(r, "prioritizeUnhealthyInstances", rpath, False),
        enable_cross_zone_upgrade=_bool(r, "enableCrossZoneUpgrade", rpath, False),
        max_surge=_bool(r, "maxSurge", rpath, False),
        rollback_failed_instances_on_policy_breach=_bool(
            r, "rollbackFailedInstancesOnPolicyBreach", rpath, False
        ),
    )
    apath = f"{path}.automaticOSUpgradePolicy"
    a = _object(_get(obj, "automaticOSUpgradePolicy"), apath)
    automatic = AutomaticOSUpgradePolicy(
        enable_automatic_os_upgrade=_bool(a, "enableAutomaticOSUpgrade", apath, False),
        disable_automatic_rollback=_bool(a, "disableAutomaticRollback", apath, False),
        use_rolling_upgrade_policy=_bool(a, "useRollingUpgradePolicy", apath, False),
        os_rolling_upgrade_deferral=_bool(a, "osRollingUpgradeDeferral", apath, False),
    )
    return UpgradePolicy(mode, rolling, automatic)


def _pause(obj: JSON, path: str) -> int:
    """``pauseTimeBetweenBatches``: ISO 8601, non-negative, at most 10 minutes."""
    value = _get(obj, "pauseTimeBetweenBatches")
    if value is None:
        return 0
    match = _DURATION.fullmatch(value) if isinstance(value, str) and value != "P" else None
    seconds = None
    if match is not None:
        d, h, m, s = (int(match.group(g) or 0) for g in "dhms")
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds is None or seconds > MAX_PAUSE_S:
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        raise invalid(
            f"{path}.pauseTimeBetweenBatches",
            f"The pause time {shown[:40]} provided is invalid. It must be formatted as an ISO "
            "8601 non-negative time span of 10 minutes or less. For example a valid timespan "
            'is "PT0S" to represent 0 seconds.',
        )
    return seconds


def parse_image(value: Any, path: str) -> ImageReference:
    """``imageReference``: a platform image or a gallery image ``id``."""
    if value is None:
        raise invalid(path, "is required")
    obj = _object(value, path)
    if _get(obj, "id") is not None:
        image_id = _string(obj, "id", path)
        if not image_id.lower().startswith("/subscriptions/"):
            raise invalid(f"{path}.id", "a gallery image id starts with /subscriptions/")
        return ImageReference(id=image_id, version="latest")
    version = _string(obj, "version", path, "latest")
    if version.lower() == "latest":
        version = "latest"
    elif not _VERSION.fullmatch(version):
        raise invalid(f"{path}.version", "must be 'latest' or of the form major.minor.patch")
    elif canonical_version(version) != version:  # one spelling per version, as published
        canonical = canonical_version(version)
        raise invalid(f"{path}.version", f"has leading zeros; the version is written {canonical!r}")
    publisher, offer, sku = (
        _image_part(_string(obj, part, path), f"{path}.{part}")
        for part in ("publisher", "offer", "sku")
    )
    return ImageReference(publisher, offer, sku, version)


def _data_disks(storage: JSON, path: str) -> tuple[DataDisk, ...]:
    disks = []
    for i, item in enumerate(_list(storage, "dataDisks", path, MAX_DATA_DISKS)):
        where = f"{path}.dataDisks[{i}]"
        disk = _object(item, where)
        lun, size = _int(disk, "lun", where), _int(disk, "diskSizeGB", where, 32)
        if not 0 <= lun <= 63 or not 1 <= size <= 32767:
            raise invalid(where, "lun must be 0..63 and diskSizeGB 1..32767")
        disks.append(DataDisk(lun, size))
    return tuple(disks)


def _os(vm: JSON, storage: JSON, path: str) -> tuple[str, bool | None]:
    """(os type, Windows ``enableAutomaticUpdates`` or None when not sent)."""
    os_profile = _object(_get(vm, "osProfile"), f"{path}.osProfile")
    windows_path = f"{path}.osProfile.windowsConfiguration"
    windows = _get(os_profile, "windowsConfiguration")
    os_disk = _object(_get(storage, "osDisk"), f"{path}.storageProfile.osDisk")
    declared = _enum(
        os_disk, "osType", f"{path}.storageProfile.osDisk", ("Linux", "Windows"), "Linux"
    )
    if windows is None:
        return declared, None
    config = _object(windows, windows_path)
    updates = _get(config, "enableAutomaticUpdates")
    return "Windows", None if updates is None else _bool(
        config, "enableAutomaticUpdates", windows_path
    )


class _Extensions:
    """What the extension profile says: health extension, Service Fabric, the rest."""

    def __init__(self) -> None:
        self.health: HealthExtension | None = None
        self.fabric = False
        self.durability: str | None = None
        self.others: tuple[Extension, ...] = ()


def _extensions(vm: JSON, path: str, policy: UpgradePolicy) -> _Extensions:
    profile = _object(_get(vm, "extensionProfile"), path)
    found = _Extensions()
    others = []
    seen: set[str] = set()
    for i, item in enumerate(_list(profile, "extensions", path, MAX_EXTENSIONS)):
        where = f"{path}.extensions[{i}]"
        ext = _object(item, where)
        name = _string(ext, "name", where)
        if name.lower() in seen:
            raise invalid(f"{where}.name", f"extension name '{name}' is used twice")
        seen.add(name.lower())
        ppath = f"{where}.properties"
        props = _object(_get(ext, "properties"), ppath)
        kind = _string(props, "type", ppath)
        publisher = _string(props, "publisher", ppath, "Microsoft.Azure.Extensions")
        settings = _object(_get(props, "settings"), f"{ppath}.settings")
        if kind.lower() in _HEALTH_TYPES:
            if found.health is not None:
                raise invalid(where, "only one Application Health extension is allowed")
            found.health = _health_extension(settings, f"{ppath}.settings")
        elif kind.lower() in _FABRIC_TYPES:
            found.fabric = True
            found.durability = _string(settings, "durabilityLevel", f"{ppath}.settings", "Bronze")
            _fabric_version(props, ppath, policy)
        else:
            after = tuple(
                _plain(v, f"{ppath}.provisionAfterExtensions")
                for v in _list(props, "provisionAfterExtensions", ppath, MAX_EXTENSIONS)
            )
            expires = _time(settings, "credentialExpiresAt", f"{ppath}.settings")
            others.append(Extension(name, kind, publisher, after, expires))
    found.others = tuple(others)
    return found


def _health_extension(settings: JSON, path: str) -> HealthExtension:
    grace = _get(settings, "gracePeriod")
    return HealthExtension(
        interval_s=_int(settings, "intervalInSeconds", path, 5),
        number_of_probes=_int(settings, "numberOfProbes", path, 1),
        grace_period_s=None if grace is None else _int(settings, "gracePeriod", path),
    )


def _fabric_version(props: JSON, path: str, policy: UpgradePolicy) -> None:
    version = _string(props, "typeHandlerVersion", path, "1.1")
    if not policy.automatic.enable_automatic_os_upgrade:
        return
    parts = version.split(".")
    if not all(p.isdigit() for p in parts) or tuple(int(p) for p in parts) < (1, 1):
        raise invalid(
            f"{path}.typeHandlerVersion",
            "the Service Fabric extension needs typeHandlerVersion 1.1 or later for "
            "automatic OS upgrades",
        )


def _plain(value: Any, target: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_STRING:
        raise invalid(target, "must be an array of extension names")
    return value


def _time(obj: JSON, name: str, path: str) -> datetime | None:
    value = _get(obj, name)
    if value is None:
        return None
    text = _string(obj, name, path)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise invalid(_join(path, name), "must be an RFC 3339 time with a UTC offset")
    return when


# -- the other bodies --------------------------------------------------------------


def parse_simulation(body: Any) -> SimulationProfile | None:
    """The optional ``properties.simulation`` of an image version publish."""
    root = _object(body, "")
    props = _object(_get(root, "properties"), "properties")
    if _get(props, "simulation") is None:
        return None
    path = "properties.simulation"
    sim = _object(_get(props, "simulation"), path)
    profile = SimulationProfile(
        unhealthy_instance_percent=_int(sim, "unhealthyInstancePercent", path, 0),
        boot_seconds=_int(sim, "bootSeconds", path, 30),
        reimage_failure_percent=_int(sim, "reimageFailurePercent", path, 0),
    )
    for name, value, high in (
        ("unhealthyInstancePercent", profile.unhealthy_instance_percent, 100),
        ("bootSeconds", profile.boot_seconds, 86400),
        ("reimageFailurePercent", profile.reimage_failure_percent, 100),
    ):
        if not 0 <= value <= high:
            raise invalid(f"{path}.{name}", f"must be between 0 and {high}")
    return profile


def parse_health_state(body: Any) -> Health:
    """``{"state": "Healthy" | "Unhealthy" | "Initializing" | "Unknown"}``."""
    root = _object(body, "")
    return Health(_enum(root, "state", "", tuple(h.value for h in Health), None))


def parse_instance_ids(body: Any) -> tuple[str, ...] | None:
    """The optional ``{"instanceIds": [...]}`` of approveRollingUpgrade."""
    root = _object(body, "")
    if _get(root, "instanceIds") is None:
        return None
    ids = _list(root, "instanceIds", "", 1000)
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not value.isdigit() or len(value) > 9:
            raise invalid(f"instanceIds[{i}]", "must be an instance id such as '0'")
    return tuple(ids)


def parse_advance(body: Any) -> float:
    """``{"seconds": n}`` of ``POST /admin/clock/advance``."""
    root = _object(body, "")
    value = _get(root, "seconds")
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= MAX_ADVANCE_S:
        raise invalid("seconds", f"must be a number of seconds between 0 and {MAX_ADVANCE_S}")
    return float(value)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: what ARM's PATCH does to a resource's properties."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result

"""The ARM operations on a scale set's instances and views that clients read and run.

``GET VMSS/instanceView``, ``GET VMSS/virtualMachines/{id}`` (``$expand=instanceView``),
``GET .../virtualMachines/{id}/instanceView``, ``GET VMSS/skus``, scale sets listed by
subscription and by location, and the disk-replacing actions ``POST VMSS/reimage``,
``POST .../virtualMachines/{id}/reimage`` and ``POST VMSS/manualupgrade`` with their
long-running operations (``reimage.<id>``, whose status is folded from the set's stream).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from engine.api.errors import ApiError, invalid, json_response, not_found, scale_set_not_found
from engine.api.parsing import load_json, query_params, read_body
from engine.api.resources import render_instance, render_instance_view, render_scale_set
from engine.api.service import ApiService
from engine.api.versions import for_version
from engine.domain.model import ScaleSetSpec
from engine.domain.reimage import ReimageOperation
from engine.domain.scale_set import ScaleSetState
from engine.runtime.engine import ScaleSetNotFoundError
from projections.fleet_view import InstanceView
from projections.upgrade_view import rfc3339

JSON = dict[str, Any]
REIMAGE_OPERATION = "reimage."
VMSS_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
SKUS = ("Standard_B2s", "Standard_D2s_v3", "Standard_D4s_v3", "Standard_D8s_v3", "Standard_F4s_v2")
MAX_CAPACITY = 1000  # Azure's limit for a set from a platform image
_VERSION = re.compile(r"\d{1,9}\.\d{1,9}\.\d{1,9}")


# -- reading -----------------------------------------------------------------------


async def _state(service: ApiService, request: Request) -> ScaleSetState:
    """The live scale set named by the path (404 otherwise), whichever engine drives it."""
    p = request.path_params
    try:
        return await service.engine.scale_set_state(p["sub"], p["rg"], p["name"])
    except ScaleSetNotFoundError:
        raise scale_set_not_found(p["rg"], p["name"]) from None


def _spec(state: ScaleSetState) -> ScaleSetSpec:
    assert state.spec is not None  # live
    return state.spec


def _version(request: Request) -> str:
    version: str = query_params(request)["api-version"]
    return version


def _instance(request: Request, state: ScaleSetState) -> str:
    instance = str(request.path_params["instance"])
    if instance not in state.instance_versions:
        raise not_found(f"The instance '{instance[:20]}' does not exist in this scale set.")
    return instance


def _view(service: ApiService, spec: ScaleSetSpec, state: ScaleSetState, i: str) -> InstanceView:
    """The instance's version as the projection has it (the fold's when not projected)."""
    projected = service.runner.view.instances.get(spec.key, {})
    return projected[i] if i in projected else InstanceView(state.instance_versions[i])


async def _health(service: ApiService, spec: ScaleSetSpec, ids: list[str]) -> dict[str, Any]:
    """Live health, from the fleet of the engine that drives the set (none elsewhere)."""
    if not service.engine.drives(spec.key):
        return {}
    return dict(await service.fleet.read_health(spec, ids))


async def get_instance(request: Request, service: ApiService) -> Response:
    """GET VMSS/virtualMachines/{id}; ``$expand=instanceView`` adds the instance view."""
    state = await _state(service, request)
    spec, instance = _spec(state), _instance(request, state)
    body = render_instance(spec, instance, _view(service, spec, state, instance), None, state)
    if query_params(request).get("$expand", "").lower() == "instanceview":
        health = (await _health(service, spec, [instance])).get(instance)
        body["properties"]["instanceView"] = render_instance_view(spec, instance, health)
    return json_response(for_version(body, "VirtualMachineScaleSetVM", _version(request)))


async def get_instance_view(request: Request, service: ApiService) -> Response:
    """GET VMSS/virtualMachines/{id}/instanceView."""
    state = await _state(service, request)
    spec, instance = _spec(state), _instance(request, state)
    health = (await _health(service, spec, [instance])).get(instance)
    body = render_instance_view(spec, instance, health)
    kind = "VirtualMachineScaleSetVMInstanceView"
    return json_response(for_version(body, kind, _version(request)))


async def get_scale_set_instance_view(request: Request, service: ApiService) -> Response:
    """GET VMSS/instanceView: counts of the instances' and extensions' states."""
    state = await _state(service, request)
    spec = _spec(state)
    count = len(state.instance_versions)
    succeeded = [{"code": "ProvisioningState/succeeded", "count": count}] if count else []
    extensions = [e.name for e in spec.extensions]
    if spec.health_extension is not None:
        extensions.insert(0, "ApplicationHealth")
    if spec.service_fabric:
        extensions.append("ServiceFabricNode")
    body: JSON = {
        "virtualMachine": {"statusesSummary": succeeded},
        "extensions": [{"name": name, "statusesSummary": succeeded} for name in extensions],
        "statuses": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "time": rfc3339(state.created_at),
            }
        ],
    }
    kind = "VirtualMachineScaleSetInstanceView"
    return json_response(for_version(body, kind, _version(request)))


async def list_skus(request: Request, service: ApiService) -> Response:
    """GET VMSS/skus: the sizes the simulated region offers (the set's own among them)."""
    spec = _spec(await _state(service, request))
    names = sorted({*SKUS, spec.sku})
    items = [
        {
            "resourceType": VMSS_TYPE,
            "sku": {"name": name, "tier": "Standard"},
            "capacity": {
                "minimum": 0,
                "maximum": MAX_CAPACITY,
                "defaultCapacity": 1,
                "scaleType": "Automatic",
            },
        }
        for name in names
    ]
    return json_response({"value": items})


async def list_subscription_scale_sets(request: Request, service: ApiService) -> Response:
    """GET /subscriptions/{sub}/providers/Microsoft.Compute/virtualMachineScaleSets."""
    return await _listed(request, service, location=None)


async def list_location_scale_sets(request: Request, service: ApiService) -> Response:
    """GET .../providers/Microsoft.Compute/locations/{loc}/virtualMachineScaleSets."""
    return await _listed(request, service, location=request.path_params["loc"].lower())


async def _listed(request: Request, service: ApiService, location: str | None) -> Response:
    prefix = request.path_params["sub"].lower() + "/"
    version = _version(request)
    items = []
    for key in service.engine.scale_sets():
        if not key.startswith(prefix):
            continue
        try:
            state = await service.engine.scale_set_state(*key.split("/"))
        except ScaleSetNotFoundError:  # deleted meanwhile
            continue
        spec = _spec(state)
        if location is None or spec.location.lower() == location:
            body = render_scale_set(spec, state)
            items.append(for_version(body, "VirtualMachineScaleSet", version))
    return json_response({"value": items})


# -- reimage and manual upgrade ----------------------------------------------------


async def reimage_scale_set(request: Request, service: ApiService) -> Response:
    """POST VMSS/reimage (optional ``instanceIds``: all instances when absent)."""
    body = _object(load_json(await read_body(request), optional=True))
    ids = _instance_ids(body, required=False)
    return await _reimage(request, service, "reimage", ids, _exact_version(body))


async def reimage_instance(request: Request, service: ApiService) -> Response:
    """POST VMSS/virtualMachines/{id}/reimage."""
    body = _object(load_json(await read_body(request), optional=True))
    state = await _state(service, request)
    ids = [_instance(request, state)]
    return await _reimage(request, service, "reimage", ids, _exact_version(body))


def _exact_version(body: JSON) -> str | None:
    """``exactVersion`` of a reimage; ``osProfile`` (new secrets) is not simulated: 400."""
    if body.get("osprofile") is not None:
        raise invalid("osProfile", "resetting credentials on reimage is not supported here")
    version = body.get("exactversion")
    if version is None:
        return None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise invalid("exactVersion", "must be a version of the form major.minor.patch")
    return version


async def manual_upgrade(request: Request, service: ApiService) -> Response:
    """POST VMSS/manualupgrade with ``{"instanceIds": [...]}`` (``["*"]``: all)."""
    body = _object(load_json(await read_body(request)))
    return await _reimage(request, service, "manualupgrade", _instance_ids(body, required=True))


async def _reimage(
    request: Request,
    service: ApiService,
    kind: str,
    ids: list[str] | None,
    exact_version: str | None = None,
) -> Response:
    p = request.path_params
    state = await _state(service, request)
    operation_id = await service.engine.reimage(
        p["sub"], p["rg"], p["name"], kind, ids, exact_version
    )
    await service.projected()
    headers = _operation_headers(request, _spec(state), operation_id)
    return Response(status_code=202, headers=headers)


def _object(body: Any) -> JSON:
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return {str(k).lower(): v for k, v in body.items()}


def _instance_ids(body: JSON, *, required: bool) -> list[str] | None:
    """``instanceIds``: instance ids such as ``"0"``, or ``["*"]`` for all."""
    value = body.get("instanceids")
    if value is None:
        if required:
            raise invalid("instanceIds", "is required")
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_CAPACITY:
        raise invalid("instanceIds", f"must be an array of 1 to {MAX_CAPACITY} instance ids")
    for i, item in enumerate(value):
        ok = isinstance(item, str) and (item == "*" or (item.isdigit() and len(item) <= 9))
        if not ok:
            raise invalid(f"instanceIds[{i}]", "must be an instance id such as '0', or '*'")
    if "*" in value and len(value) > 1:
        raise invalid("instanceIds", "'*' stands for every instance and comes alone")
    return list(value)


def _operation_headers(request: Request, spec: ScaleSetSpec, operation_id: str) -> dict[str, str]:
    """``Azure-AsyncOperation`` and ``Location``; ``p`` names the set (opaque to clients)."""
    base = str(request.base_url).rstrip("/")
    url = (
        f"{base}/subscriptions/{quote(spec.subscription)}/providers/Microsoft.Compute"
        f"/locations/{quote(spec.location)}/operations/{REIMAGE_OPERATION}{operation_id}"
    )
    owner = quote(f"{spec.resource_group}/{spec.name}", safe="")
    version = _version(request)
    return {
        "Azure-AsyncOperation": f"{url}?p={owner}&api-version={version}",
        "Location": f"{url}?p={owner}&monitor=true&api-version={version}",
    }


async def get_reimage_operation(request: Request, service: ApiService) -> Response:
    """The status of a ``reimage.<id>`` operation, or its ``Location`` 202/200."""
    operation = await _operation(request, service)
    done = operation.finished_at is not None
    if query_params(request).get("monitor", "").lower() == "true":
        return Response(status_code=200 if done else 202)
    request_ = operation.request
    body: JSON = {
        "name": f"{REIMAGE_OPERATION}{request_.operation_id}",
        "status": "InProgress",
        "startTime": rfc3339(operation.requested_at),
    }
    if done:
        body["endTime"] = rfc3339(operation.finished_at)
        body["status"] = "Failed" if operation.failed else "Succeeded"
    if operation.failed:
        first = sorted(operation.failed, key=int)[0]
        body["error"] = {
            "code": operation.failed[first],
            "message": f"Reimaging failed on {len(operation.failed)} of "
            f"{len(request_.instance_ids)} instances (first: instance {first}).",
        }
    return json_response(body)


async def _operation(request: Request, service: ApiService) -> ReimageOperation:
    missing = not_found("The operation was not found.")
    operation_id = request.path_params["op"].removeprefix(REIMAGE_OPERATION)
    rg, _, name = query_params(request).get("p", "").partition("/")
    if not rg or not name or not operation_id.isalnum():
        raise missing
    try:
        state = await service.engine.scale_set_state(request.path_params["sub"], rg, name)
    except ScaleSetNotFoundError:
        raise missing from None
    operation = state.reimages.operations.get(operation_id)
    if operation is None:
        raise missing
    return operation

"""The Starlette application: ARM routes for scale sets, upgrades, images, operations.

Handlers are thin: parse (``parsing``), call the engine, wait until the projection has
seen the write (read-your-writes), render (``resources``). Reads come from in-memory
state: the workers' folded models and the projection runner's ``FleetView``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.api.auth import ACCESS_KEY, BearerAuth, Role, Token, authorize
from engine.api.cluster import PeerVerifier
from engine.api.envelope import patch_tags
from engine.api.errors import (
    ApiError,
    error_body,
    from_domain,
    json_response,
    not_found,
    scale_set_not_found,
)
from engine.api.forward import forward
from engine.api.instance_ops import (
    REIMAGE_OPERATION,
    get_instance,
    get_instance_view,
    get_reimage_operation,
    get_scale_set_instance_view,
    list_location_scale_sets,
    list_skus,
    list_subscription_scale_sets,
    manual_upgrade,
    reimage_instance,
    reimage_scale_set,
)
from engine.api.operations import (
    OperationRef,
    is_done,
    operation_headers,
    parse_operation,
    status_body,
)
from engine.api.parsing import (
    api_version,
    check_image_path,
    check_resource_path,
    load_json,
    merge_patch,
    parse_advance,
    parse_health_state,
    parse_instance_ids,
    parse_scale_set,
    parse_simulation,
    query_params,
    read_body,
)
from engine.api.preconditions import precondition
from engine.api.reads import HotReads, history_body, latest_body
from engine.api.request_ids import RequestIds
from engine.api.resources import render_image_version, render_instance, render_scale_set
from engine.api.service import ApiService
from engine.api.versions import complete, for_version
from engine.domain.model import ScaleSetSpec, canonical_version, scale_set_key
from engine.domain.scale_set import ScaleSetState
from engine.runtime.engine import NotOwnedHereError, ScaleSetNotFoundError
from engine.runtime.worker import ScaleSetWorker
from engine.ui.app import with_dashboard
from projections.fleet_view import InstanceView
from projections.upgrade_view import rfc3339

log = structlog.get_logger("osupgrade.api")

Handler = Callable[[Request, ApiService], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """A handler and the role its caller needs (every route method declares one)."""

    handler: Handler
    role: Role


def sub(handler: Handler) -> Endpoint:
    """An endpoint acting inside the subscription of its path."""
    return Endpoint(handler, Role.SUBSCRIPTION)


def platform(handler: Handler) -> Endpoint:
    """A platform-wide endpoint: a subscription token gets 403."""
    return Endpoint(handler, Role.PLATFORM)


VMSS = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"
)
IMAGES = (
    "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/publishers/{pub}"
    "/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
)
OPERATION = "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{op}"
ALL_VMSS = "/subscriptions/{sub}/providers/Microsoft.Compute/virtualMachineScaleSets"
LOCATION_VMSS = (
    "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/virtualMachineScaleSets"
)


class Resource:
    """One path: dispatches on the method, requires ``api-version``, maps errors to ARM.

    A plain ASGI app (not a Starlette function endpoint): no per-request exception
    wrapper or thread-pool check, and a wrong method gets an ARM 405, not plain text.
    Anything unexpected is logged and answered with a JSON 500 (never ``Retry-After``):
    a bug, since bad input is always refused before it reaches the engine.
    """

    def __init__(
        self, service: ApiService, handlers: dict[str, Endpoint], *, versioned: bool = True
    ) -> None:
        self.service = service
        self.handlers = handlers
        self.versioned = versioned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.respond(request)
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        """The handler's response, or the ARM error it was refused with."""
        endpoint = self.handlers.get(request.method)
        try:
            if endpoint is None:
                allowed = ", ".join(sorted(self.handlers))
                raise ApiError(405, "MethodNotAllowed", f"Allowed methods: {allowed}.")
            access = request.scope.get(ACCESS_KEY)
            refusal = authorize(access, endpoint.role, request.path_params.get("sub"))
            if refusal is not None:
                raise refusal
            if self.versioned:
                api_version(query_params(request).get("api-version"))
            return await endpoint.handler(request, self.service)
        except Exception as exc:
            error = from_domain(exc)
            if isinstance(exc, NotOwnedHereError) and error is not None:
                return await forward(self.service, request, exc.key, error)
            if error is not None:
                return error.response()
            log.exception(
                "request failed",
                method=request.method,
                path=request.url.path,
                request_id=request.scope.get("osupgrade.request_id"),
            )
            body = error_body("InternalServerError", "The server had an unexpected error.")
            return json_response(body, 500)


# -- helpers -----------------------------------------------------------------------


def _path(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    return p["sub"], p["rg"], p["name"]


async def _worker(service: ApiService, request: Request) -> ScaleSetWorker:
    """The live scale set named by the path (404 otherwise), loaded."""
    sub, rg, name = _path(request)
    try:
        worker = service.engine.scale_set(sub, rg, name)
    except ScaleSetNotFoundError:
        raise scale_set_not_found(rg, name) from None
    await service.engine.loaded(worker)
    return worker


async def _state(service: ApiService, request: Request) -> ScaleSetState:
    """The live scale set named by the path (404 otherwise), whichever engine drives it."""
    sub, rg, name = _path(request)
    try:
        return await service.engine.scale_set_state(sub, rg, name)
    except ScaleSetNotFoundError:
        raise scale_set_not_found(rg, name) from None


def _model(state: ScaleSetState) -> ScaleSetSpec:
    assert state.spec is not None  # live
    return state.spec


def _spec(worker: ScaleSetWorker) -> ScaleSetSpec:
    spec = worker.state.spec
    assert spec is not None  # loaded and live
    return spec


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _accepted(request: Request, spec: ScaleSetSpec, ref: OperationRef) -> Response:
    version = query_params(request)["api-version"]
    headers = operation_headers(_base_url(request), spec.subscription, spec.location, ref, version)
    return Response(status_code=202, headers=headers)


# -- scale sets --------------------------------------------------------------------


async def put_scale_set(request: Request, service: ApiService) -> Response:
    """PUT VMSS: 201 create, 200 update (the engine applies the model at once)."""
    sub, rg, name = _path(request)
    check_resource_path(sub, rg, name)
    body = load_json(await read_body(request))
    version = query_params(request)["api-version"]
    spec = parse_scale_set(
        body, subscription=sub, resource_group=rg, name=name, api_version=version
    )
    _same_location(service, spec)
    created = await service.engine.create_or_update_scale_set(spec, precondition(request))
    await service.projected()
    return await _scale_set_response(request, service, 201 if created else 200)


async def _scale_set_response(request: Request, service: ApiService, status: int) -> Response:
    """The scale set as it is now (etag, uniqueId...), in the request's api-version."""
    state = await _state(service, request)
    body = render_scale_set(_model(state), state)
    version = query_params(request)["api-version"]
    return json_response(for_version(body, "VirtualMachineScaleSet", version), status)


async def patch_scale_set(request: Request, service: ApiService) -> Response:
    """PATCH VMSS: JSON merge patch onto the current model, then the PUT checks."""
    sub, rg, _ = _path(request)
    worker = await _worker(service, request)
    patch = load_json(await read_body(request))
    if not isinstance(patch, dict):
        raise ApiError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    merged = patch_tags(merge_patch(render_scale_set(_spec(worker)), patch), patch)
    version = query_params(request)["api-version"]
    spec = parse_scale_set(
        merged, subscription=sub, resource_group=rg, name=_spec(worker).name, api_version=version
    )
    _same_location(service, spec)
    try:  # a PATCH never creates: a set deleted meanwhile stays deleted
        await service.engine.create_or_update_scale_set(spec, precondition(request), create=False)
    except ScaleSetNotFoundError:
        raise scale_set_not_found(rg, spec.name) from None
    await service.projected()
    return await _scale_set_response(request, service, 200)


def _same_location(service: ApiService, spec: ScaleSetSpec) -> None:
    try:
        current = service.engine.scale_set(spec.subscription, spec.resource_group, spec.name)
    except ScaleSetNotFoundError:
        return
    old = current.state.spec
    if old is not None and old.location.lower() != spec.location.lower():
        raise ApiError(
            400, "InvalidParameter", "The location of a scale set cannot be changed.", "location"
        )


async def get_scale_set(request: Request, service: ApiService) -> Response:
    """GET VMSS."""
    return await _scale_set_response(request, service, 200)


async def delete_scale_set(request: Request, service: ApiService) -> Response:
    """DELETE VMSS: 200, or 204 when there was nothing to delete (ARM convention)."""
    sub, rg, name = _path(request)
    check = precondition(request)
    try:
        await service.engine.delete_scale_set(sub, rg, name, check)
    except ScaleSetNotFoundError:
        if check is not None:
            check(None)  # If-Match on nothing: 412
        return Response(status_code=204)
    await service.projected()
    return Response(status_code=200)


async def list_scale_sets(request: Request, service: ApiService) -> Response:
    """GET the scale sets of a resource group (``{"value": [...]}``)."""
    p = request.path_params
    prefix = scale_set_key(p["sub"], p["rg"], "")
    items = []
    for key in service.engine.scale_sets():
        if key.startswith(prefix):
            try:
                state = await service.engine.scale_set_state(*key.split("/"))
            except ScaleSetNotFoundError:  # deleted meanwhile
                continue
            body = render_scale_set(_model(state), state)
            version = query_params(request)["api-version"]
            items.append(for_version(body, "VirtualMachineScaleSet", version))
    return json_response({"value": items})


async def list_instances(request: Request, service: ApiService) -> Response:
    """GET VMSS/virtualMachines; ``$expand=instanceView`` adds live health."""
    state = await _state(service, request)
    spec = _model(state)
    projected = service.runner.view.instances.get(spec.key, {})
    versions = {
        i: projected[i].version if i in projected else v for i, v in state.instance_versions.items()
    }
    ids = sorted(versions, key=int)
    expand = query_params(request).get("$expand", "").lower() == "instanceview"
    live = expand and service.engine.drives(spec.key)  # health: the driving engine's fleet
    health = await service.fleet.read_health(spec, ids) if live else {}
    version = query_params(request)["api-version"]
    items = [
        for_version(
            render_instance(spec, i, InstanceView(versions[i]), health.get(i), state),
            "VirtualMachineScaleSetVM",
            version,
        )
        for i in ids
    ]
    return json_response({"value": items})


async def simulate_health(request: Request, service: ApiService) -> Response:
    """POST VMSS/virtualMachines/{instance}/simulateHealth (simulated fleet only)."""
    worker = await _worker(service, request)
    instance = request.path_params["instance"]
    state = parse_health_state(load_json(await read_body(request)))
    if instance not in worker.state.instance_versions:
        raise not_found(f"The instance '{instance}' does not exist in this scale set.")
    try:
        service.fleet.force_health(worker.key, instance, state)
    except LookupError:  # the model has it, the simulated fleet not (yet)
        raise not_found(f"The instance '{instance}' has no simulated machine.") from None
    return json_response({"instanceId": instance, "state": state.value})


# -- upgrades ----------------------------------------------------------------------


async def start_os_upgrade(request: Request, service: ApiService) -> Response:
    """POST VMSS/osRollingUpgrade: 202 with the operation headers."""
    worker = await _worker(service, request)
    upgrade_id = await service.engine.start_os_upgrade(*_path(request))
    await service.projected()
    return _accepted(request, _spec(worker), OperationRef("start", upgrade_id))


async def cancel_upgrade(request: Request, service: ApiService) -> Response:
    """POST VMSS/rollingUpgrades/cancel (409 when nothing runs)."""
    worker = await _worker(service, request)
    upgrade_id = await service.engine.cancel_upgrade(*_path(request))
    await service.projected()
    return _accepted(request, _spec(worker), OperationRef("cancel", upgrade_id))


async def approve_upgrade(request: Request, service: ApiService) -> Response:
    """POST VMSS/approveRollingUpgrade (optional ``{"instanceIds": [...]}``)."""
    worker = await _worker(service, request)
    ids = parse_instance_ids(load_json(await read_body(request), optional=True))
    upgrade_id = await service.engine.approve_upgrade(*_path(request), ids)
    await service.projected()
    return _accepted(request, _spec(worker), _approval(service, upgrade_id))


async def approve_instance(request: Request, service: ApiService) -> Response:
    """POST VMSS/virtualMachines/{instance}/approveRollingUpgrade."""
    worker = await _worker(service, request)
    ids = parse_instance_ids({"instanceIds": [request.path_params["instance"]]})
    upgrade_id = await service.engine.approve_upgrade(*_path(request), ids)
    await service.projected()
    return _accepted(request, _spec(worker), _approval(service, upgrade_id))


def _approval(service: ApiService, upgrade_id: str) -> OperationRef:
    """An approval's operation: its own time in its name (an upgrade has several)."""
    at_ms = int(service.clock.now().timestamp() * 1000)
    return OperationRef("approve", upgrade_id, at_ms)


async def get_latest(request: Request, service: ApiService) -> Response:
    """GET VMSS/rollingUpgrades/latest (404 when the set never had one)."""
    body = latest_body(service, _model(await _state(service, request)).key)
    if body is None:
        raise not_found("The entity was not found in this Azure location.")
    version = query_params(request)["api-version"]
    if not complete(version):  # rare: an api-version older than some of the properties
        return json_response(for_version(orjson.loads(body), "RollingUpgradeStatusInfo", version))
    return _raw_json(body)


async def get_history(request: Request, service: ApiService) -> Response:
    """GET VMSS/osUpgradeHistory: paged, ``$skiptoken`` = last upgrade id of a page."""
    key = _model(await _state(service, request)).key
    query = query_params(request)
    url = f"{_base_url(request)}{quote(request.url.path, safe='/()')}"

    def next_link(last: str) -> str:
        return f"{url}?api-version={query['api-version']}&$skiptoken={last}"

    body = history_body(service, key, query.get("$skiptoken"), next_link)
    assert body is not None  # with a link maker there is always a page
    if not complete(query["api-version"]):  # rare: an api-version older than some properties
        page = orjson.loads(body)
        kind = "UpgradeOperationHistoricalStatusInfo"
        page["value"] = [for_version(item, kind, query["api-version"]) for item in page["value"]]
        return json_response(page)
    return _raw_json(body)


def _raw_json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def get_operation(request: Request, service: ApiService) -> Response:
    """The ``Azure-AsyncOperation`` status, or (``monitor=true``) the ``Location`` 202/200."""
    if request.path_params["op"].startswith(REIMAGE_OPERATION):
        return await get_reimage_operation(request, service)
    ref = parse_operation(request.path_params["op"])
    view = service.runner.view.upgrades.get(ref.upgrade_id) if ref is not None else None
    owner = request.path_params["sub"].lower() + "/"
    if ref is None or view is None or not view.scale_set.startswith(owner):
        raise not_found("The operation was not found.")
    if query_params(request).get("monitor", "").lower() == "true":
        return Response(status_code=200 if is_done(ref, view) else 202)
    return json_response(status_body(ref, view))


# -- image versions ----------------------------------------------------------------


def _family(request: Request) -> tuple[str, str, str, str]:
    p = request.path_params
    check_image_path(p["loc"], p["pub"], p["offer"], p["sku"])
    return p["loc"], p["pub"], p["offer"], p["sku"]


async def list_image_versions(request: Request, service: ApiService) -> Response:
    """GET .../versions: a bare JSON array (``$orderby=name desc``, ``$top`` honoured)."""
    loc, pub, offer, sku = _family(request)
    versions = service.engine.catalog.versions(loc, pub, offer, sku)
    if "desc" in query_params(request).get("$orderby", "").lower():
        versions.reverse()
    top = query_params(request).get("$top")
    if top is not None:
        if not top.isdigit() or int(top) < 1:
            raise ApiError(400, "InvalidParameter", "$top must be a positive integer", "$top")
        versions = versions[: int(top)]
    sub = request.path_params["sub"]
    items = [render_image_version(sub, loc, (pub, offer, sku), v, full=False) for v in versions]
    return json_response(items)


async def get_image_version(request: Request, service: ApiService) -> Response:
    """GET .../versions/{version}."""
    loc, pub, offer, sku = _family(request)
    version = canonical_version(request.path_params["version"])  # the catalog's spelling
    if version not in service.engine.catalog.versions(loc, pub, offer, sku):
        raise not_found(f"Artifact: VMImage version {version} was not found.")
    sub = request.path_params["sub"]
    return json_response(render_image_version(sub, loc, (pub, offer, sku), version, full=True))


async def publish_image_version(request: Request, service: ApiService) -> Response:
    """PUT .../versions/{version} (non-Azure): publish, with optional simulation profile."""
    loc, pub, offer, sku = _family(request)
    version = request.path_params["version"]
    simulation = parse_simulation(load_json(await read_body(request), optional=True))
    await service.engine.publish_image_version(loc, pub, offer, sku, version, simulation)
    await service.projected()
    sub = request.path_params["sub"]
    body = render_image_version(sub, loc, (pub, offer, sku), version, full=True)
    return json_response(body, 201)


# -- admin -------------------------------------------------------------------------


async def get_clock(request: Request, service: ApiService) -> Response:
    """GET /admin/clock."""
    kind = "virtual" if service.virtual is not None else "real"
    return json_response({"now": rfc3339(service.clock.now()), "clock": kind})


async def advance_clock(request: Request, service: ApiService) -> Response:
    """POST /admin/clock/advance: answers once all work due by then is done and projected."""
    seconds = parse_advance(load_json(await read_body(request)))
    clock = service.virtual
    if clock is None:
        raise ApiError(409, "OperationNotAllowed", "The server runs on the real clock.")
    async with service.advance_lock:
        await clock.advance(seconds)
        await service.quiesced()
    return json_response({"now": rfc3339(clock.now()), "clock": "virtual"})


# -- the application ---------------------------------------------------------------


def routes(service: ApiService) -> list[Route]:
    """Every endpoint (SPEC section 5); the hot reads first (routes match in order).

    Each method declares the role its caller needs (``sub`` or ``platform``).
    """
    one = VMSS + "/{name}"
    vm = one + "/virtualMachines/{instance}"

    def at(path: str, versioned: bool = True, **handlers: Endpoint) -> Route:
        return Route(path, Resource(service, handlers, versioned=versioned))

    return [
        at(one + "/rollingUpgrades/latest", GET=sub(get_latest)),
        at(one + "/osUpgradeHistory", GET=sub(get_history)),
        at(OPERATION, GET=sub(get_operation)),
        at(one, GET=sub(get_scale_set), PUT=sub(put_scale_set), PATCH=sub(patch_scale_set),
           DELETE=sub(delete_scale_set)),
        at(VMSS, GET=sub(list_scale_sets)),
        at(one + "/virtualMachines", GET=sub(list_instances)),
        at(vm, GET=sub(get_instance)),
        at(vm + "/instanceView", GET=sub(get_instance_view)),
        at(vm + "/reimage", POST=sub(reimage_instance)),
        at(one + "/instanceView", GET=sub(get_scale_set_instance_view)),
        at(one + "/skus", GET=sub(list_skus)),
        at(one + "/reimage", POST=sub(reimage_scale_set)),
        at(one + "/manualupgrade", POST=sub(manual_upgrade)),
        at(ALL_VMSS, GET=sub(list_subscription_scale_sets)),
        at(LOCATION_VMSS, GET=sub(list_location_scale_sets)),
        at(vm + "/simulateHealth", POST=sub(simulate_health)),
        at(vm + "/approveRollingUpgrade", POST=sub(approve_instance)),
        at(one + "/osRollingUpgrade", POST=sub(start_os_upgrade)),
        at(one + "/rollingUpgrades/cancel", POST=sub(cancel_upgrade)),
        at(one + "/approveRollingUpgrade", POST=sub(approve_upgrade)),
        at(IMAGES, GET=sub(list_image_versions)),
        at(IMAGES + "/{version}", GET=sub(get_image_version), PUT=platform(publish_image_version)),
        at("/admin/clock", False, GET=platform(get_clock)),
        at("/admin/clock/advance", False, POST=platform(advance_clock)),
    ]  # fmt: skip


class CaseInsensitivePaths:
    """The router's fallback: ARM matches a path's fixed segments case-insensitively.

    A path that matched no route is compared with each route's template ignoring the
    case of the fixed segments (``resourcegroups`` for ``resourceGroups``); if one fits,
    the request goes back to the router with those segments in canonical case. Names
    keep their case. Only unmatched paths pay for the comparison.
    """

    def __init__(self, routes: list[Route]) -> None:
        self.templates = [route.path.split("/") for route in routes]
        self.router: ASGIApp | None = None

    def canonical(self, path: str) -> str | None:
        """``path`` with its fixed segments in the routes' case, or None if none fits."""
        parts = path.split("/")
        for template in self.templates:
            if len(template) == len(parts):
                fixed = _fit(template, parts)
                if fixed is not None and fixed != parts:
                    return "/".join(fixed)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fixed = self.canonical(scope["path"]) if scope["type"] == "http" else None
        if fixed is None or self.router is None:
            await not_found("No such endpoint.").response()(scope, receive, send)
            return
        await self.router({**scope, "path": fixed, "raw_path": fixed.encode()}, receive, send)


def _fit(template: list[str], parts: list[str]) -> list[str] | None:
    out = []
    for want, got in zip(template, parts, strict=True):
        if want.startswith("{"):
            out.append(got)
        elif want.lower() == got.lower():
            out.append(want)
        else:
            return None
    return out


def build_app(service: ApiService, tokens: tuple[Token, ...]) -> ASGIApp:
    """The ASGI application: request ids, bearer auth, the hot-read fast path, the routes.

    A bare Starlette ``Router`` rather than a ``Starlette`` app: the reads are hot, and
    the app's error and exception middleware add nothing that ``Resource`` does not do.
    """
    table = routes(service)
    fallback = CaseInsensitivePaths(table)
    router = Router(table, redirect_slashes=False, default=fallback)
    fallback.router = router
    api = BearerAuth(HotReads(router, service), tokens, peer_verifier(service))
    return RequestIds(with_dashboard(api, service.store, tokens))  # the dashboard: /ui


def peer_verifier(service: ApiService) -> PeerVerifier | None:
    """Checks requests forwarded by the other servers of the log (None: no peers)."""
    key, own = service.settings.cluster_key, service.engine.ownership
    return PeerVerifier(key, own.engine_id) if key is not None and own is not None else None

"""The hot reads, ``rollingUpgrades/latest`` and ``osUpgradeHistory``, as JSON bytes.

Shared by the routed handlers (which add the errors) and ``HotReads``, a fast path in
front of the router that answers the common case of these two GETs without building a
Starlette request, matching routes or catching exceptions, and hands everything else
(errors, paging, odd query strings) to the router.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.api.access import Role
from engine.api.auth import ACCESS_KEY, authorize
from engine.api.parsing import API_VERSIONS
from engine.api.service import ApiService
from engine.api.versions import complete
from engine.runtime.engine import NotOwnedHereError, ScaleSetNotFoundError, WorkerRestartingError
from engine.runtime.worker import ScaleSetWorker

log = structlog.get_logger("osupgrade.api")

_VMSS_SEGMENTS = ("subscriptions", "resourceGroups", "providers", "Microsoft.Compute")
_HEADERS = [(b"content-type", b"application/json")]


def latest_body(service: ApiService, key: str) -> bytes | None:
    """``RollingUpgradeStatusInfo`` of the set's latest upgrade; None if it never had one."""
    view = service.runner.view.latest_view(key)
    return service.cache.latest(view) if view is not None else None


def history_body(
    service: ApiService,
    key: str,
    skiptoken: str | None,
    next_link_for: Callable[[str], str] | None,
) -> bytes | None:
    """One page of ``osUpgradeHistory``; None if a next page exists and no link maker is
    given (the fast path then leaves the request to the router)."""
    views = service.runner.view.history_views(key, service.clock.now())
    start = 0
    if skiptoken is not None:
        ids = [v.upgrade_id for v in views]
        start = ids.index(skiptoken) + 1 if skiptoken in ids else len(views)
    size = service.settings.history_page_size
    page = views[start : start + size]
    items = b",".join(service.cache.history_item(v) for v in page)
    next_link = b""
    if page and start + size < len(views):
        if next_link_for is None:
            return None
        next_link = b',"nextLink":' + orjson.dumps(next_link_for(page[-1].upgrade_id))
    return b'{"value":[' + items + b"]" + next_link + b"}"


class HotReads:
    """Answers plain GET latest / first history pages of live sets; passes on the rest."""

    def __init__(self, app: ASGIApp, service: ApiService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = None
        if scope["type"] == "http":
            try:
                body = self._answer(scope)
            except Exception:
                log.exception("fast read failed; routing instead", path=scope["path"])
        if body is None:
            await self.app(scope, receive, send)
            return
        headers = [*_HEADERS, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope) -> bytes | None:
        parts = scope["path"].split("/") if scope["method"] == "GET" else []
        if not _plain_vmss_read(parts, scope["query_string"]):
            return None
        if authorize(scope.get(ACCESS_KEY), Role.SUBSCRIPTION, parts[2]) is not None:
            return None  # the routed handler refuses it
        worker = self._worker(parts[2], parts[4], parts[8])
        if worker is None:
            return None
        if parts[9:] == ["rollingUpgrades", "latest"]:
            return latest_body(self.service, worker.key)
        if parts[9:] == ["osUpgradeHistory"]:
            return history_body(self.service, worker.key, None, None)
        return None

    def _worker(self, sub: str, rg: str, name: str) -> ScaleSetWorker | None:
        try:
            worker = self.service.engine.scale_set(sub, rg, name)
        except (ScaleSetNotFoundError, NotOwnedHereError, WorkerRestartingError):
            return None  # the full handler answers
        return worker if worker.loaded.is_set() else None


def _plain_vmss_read(parts: list[str], query: bytes) -> bool:
    """A path below a scale set, with nothing in the query but a known api-version."""
    if len(parts) not in (10, 11) or parts[7] != "virtualMachineScaleSets":
        return False
    if (parts[1], parts[3], parts[5], parts[6]) != _VMSS_SEGMENTS:
        return False
    if not query.startswith(b"api-version=") or b"&" in query:
        return False
    version = query[12:].decode("latin-1")
    return version in API_VERSIONS and complete(version)  # older ones: the filtering handler

"""The dashboard's HTTP side: the static page under ``/ui`` and its JSON under ``/ui/api``.

The page itself (HTML, CSS, JS shipped in the package, no build step) loads without a
token; every ``/ui/api`` request passes the API's own ``BearerAuth``, so the same tokens
work and a token limited to some subscriptions is refused (the dashboard shows the whole
fleet). Nothing here writes to the log. ``/ui/api/live`` streams server-sent events: one
small message each time the timeline folds new events; each stream ends after
``STREAM_S`` and the page reconnects, so an open page never holds a server's shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.api.access import Role
from engine.api.auth import ACCESS_KEY, BearerAuth, Token, authorize
from engine.ui.tally import PHASES, FleetTally
from engine.ui.timeline import Timeline
from engine.ui.views import event_body, iso, set_body, set_events, upgrade_body
from events import EventStore
from events.clock import to_micros

log = structlog.get_logger("osupgrade.ui")

STATIC = Path(str(resources.files("engine.ui") / "static"))
STREAM_S = 5.0
PAGE_LIMIT = 500


class BadRequestError(ValueError):
    """A query parameter the dashboard cannot use (answered with 400)."""


class Dashboard:
    """The timeline of one log, started on first use (so ``serve`` pays only if asked)."""

    def __init__(self, store: EventStore, timeline: Timeline | None = None) -> None:
        self.store = store
        self._timeline = timeline
        self._lock = asyncio.Lock()

    async def timeline(self) -> Timeline:
        """The log's timeline, folded up to the log's head as of the first call."""
        async with self._lock:
            if self._timeline is None:
                timeline = Timeline(self.store)
                await timeline.start()
                log.info("dashboard timeline folded", head=timeline.head)
                self._timeline = timeline
            return self._timeline


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _at(request: Request, timeline: Timeline) -> int:
    """The moment asked for: ``at`` (a position) or ``time`` (RFC 3339), else the head."""
    query = request.query_params
    if "at" in query:
        text = query["at"]
        if not text.isdigit():
            raise BadRequestError("at must be a log position (digits)")
        return min(int(text), timeline.head)
    if "time" in query:
        try:
            when = datetime.fromisoformat(query["time"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequestError("time must be an RFC 3339 time") from None
        if when.tzinfo is None:
            raise BadRequestError("time needs a UTC offset")
        return timeline.position_at(to_micros(when))
    return timeline.head


def _int(request: Request, name: str, default: int, high: int) -> int:
    text = request.query_params.get(name, str(default))
    if not text.isdigit():
        raise BadRequestError(f"{name} must be a non-negative integer")
    return min(int(text), high)


def _moment(timeline: Timeline, at: int) -> dict[str, Any]:
    return {
        "at": at,
        "head": timeline.head,
        "time": iso(timeline.time_at(at)),
        "first": iso(timeline.first_time()),
        "last": iso(timeline.time_at(timeline.head)),
    }


def fleet_page(tally: FleetTally, request: Request) -> dict[str, Any]:
    """The fleet's totals and one page of its sets (filtered by status and name)."""
    status = request.query_params.get("status")
    needle = request.query_params.get("q", "").lower()
    offset = _int(request, "offset", 0, 1 << 40)
    limit = _int(request, "limit", 100, PAGE_LIMIT)
    keys = sorted(
        k for k, row in tally.sets.items()
        if (status is None or row.status == status) and needle in k
    )  # fmt: skip
    rows = []
    for key in keys[offset : offset + limit]:
        row = tally.sets[key]
        rows.append(
            {
                "key": key,
                "status": row.status,
                "instances": row.instances,
                "target": row.target,
                "upgrade": row.upgrade_id,
                "phases": row.phases,
            }
        )
    return {
        "statuses": tally.status_counts,
        "phases": dict(zip(PHASES, tally.phase_counts, strict=True)),
        "sets": rows,
        "matching": len(keys),
        "offset": offset,
    }


class DashboardApi:
    """The JSON endpoints; each answers for one moment of the log."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self) -> list[Route]:
        """``/ui/api/...``: meta, fleet, set, upgrade, event, live."""
        return [
            Route("/meta", self.meta),
            Route("/fleet", self.fleet),
            Route("/set/{sub}/{rg}/{name}", self.scale_set),
            Route("/upgrade/{upgrade_id}", self.upgrade),
            Route("/event", self.event),
            Route("/live", self.live),
        ]

    async def meta(self, request: Request) -> Response:
        """The moment a position or time stands for, and the log's range."""
        timeline = await self.dashboard.timeline()
        return await _answer(lambda: _moment(timeline, _at(request, timeline)))

    async def fleet(self, request: Request) -> Response:
        """Sets by status, instances by phase, one page of sets."""
        timeline = await self.dashboard.timeline()
        try:
            at = _at(request, timeline)
            tally = await timeline.at(at)
            body = _moment(timeline, at) | fleet_page(tally, request)
        except BadRequestError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(body)

    async def scale_set(self, request: Request) -> Response:
        """One set's instances, current upgrade with its batches, and history."""
        timeline = await self.dashboard.timeline()
        p = request.path_params
        key = f"{p['sub']}/{p['rg']}/{p['name']}".lower()
        try:
            at = _at(request, timeline)
        except BadRequestError as exc:
            return _json({"error": str(exc)}, 400)
        body = set_body(key, await set_events(self.dashboard.store, key), at, timeline.time_at(at))
        if body is None:
            return _json({"error": f"the log has no scale set {key}"}, 404)
        return _json(_moment(timeline, at) | body)

    async def upgrade(self, request: Request) -> Response:
        """One upgrade's events, each with the inputs of its decision."""
        timeline = await self.dashboard.timeline()
        try:
            at = _at(request, timeline)
        except BadRequestError as exc:
            return _json({"error": str(exc)}, 400)
        upgrade_id = request.path_params["upgrade_id"]
        body = await upgrade_body(self.dashboard.store, upgrade_id, at)
        if body is None:
            return _json({"error": f"the log has no upgrade {upgrade_id}"}, 404)
        return _json(_moment(timeline, at) | body)

    async def event(self, request: Request) -> Response:
        """The event at a position: what changed in the step to it."""
        timeline = await self.dashboard.timeline()
        try:
            at = _at(request, timeline)
        except BadRequestError as exc:
            return _json({"error": str(exc)}, 400)
        page = await self.dashboard.store.read_all(after=max(at - 1, 0), limit=1, up_to=at)
        found = event_body(page[0]) if page and page[0].position == at else None
        return _json(_moment(timeline, at) | {"event": found})

    async def live(self, request: Request) -> Response:
        """Server-sent events: ``{"head", "time"}`` whenever the log has grown."""
        timeline = await self.dashboard.timeline()
        after_text = request.query_params.get("after", "0")
        after = int(after_text) if after_text.isdigit() else 0
        return StreamingResponse(
            _stream(timeline, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _answer(build: Any) -> Response:
    try:
        return _json(build())
    except BadRequestError as exc:
        return _json({"error": str(exc)}, 400)


async def _stream(timeline: Timeline, after: int) -> AsyncIterator[bytes]:
    """One SSE stream: the head now if it moved past ``after``, then each change."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_S
    yield b": osupgrade dashboard\nretry: 500\n\n"
    while (left := deadline - loop.time()) > 0:
        head = await timeline.wait_beyond(after, left)
        if head > after:
            after = head
            message = {"head": head, "time": iso(timeline.time_at(head))}
            yield b"data: " + orjson.dumps(message) + b"\n\n"
    yield b"event: end\ndata: {}\n\n"


def _index(request: Request) -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


def _redirect(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


def dashboard_app(dashboard: Dashboard, tokens: tuple[Token, ...]) -> ASGIApp:
    """The page (no token needed) and its API (the server's bearer tokens)."""
    api = BearerAuth(PlatformOnly(Router(DashboardApi(dashboard).routes())), tokens)
    return Router(
        [
            Route("/ui", _redirect),
            Route("/ui/", _index),
            Mount("/ui/static", StaticFiles(directory=STATIC)),
            Mount("/ui/api", api),
        ]
    )


class PlatformOnly:
    """The dashboard shows the whole fleet: its data needs a platform token (403 else)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = authorize(scope.get(ACCESS_KEY), Role.PLATFORM, None)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class WithDashboard:
    """Sends ``/ui`` and everything under it to the dashboard, the rest to ``app``."""

    def __init__(self, app: ASGIApp, dashboard: ASGIApp) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (path == "/ui" or path.startswith("/ui/")):
            await self.dashboard(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def with_dashboard(app: ASGIApp, store: EventStore, tokens: tuple[Token, ...]) -> ASGIApp:
    """``app`` with the dashboard of ``store`` mounted at ``/ui`` (for ``osupgrade serve``)."""
    return WithDashboard(app, dashboard_app(Dashboard(store), tokens))

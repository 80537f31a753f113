"""Hand a command for a scale set another server drives to that server.

Several servers share one log, and each scale set is driven by exactly one of them; a
client (Azure's SDK behind a load balancer, say) may send its request to any. Reads are
answered anywhere from the log. A command is forwarded once to the owner's announced
URL with the same method, path, query, body and credentials, and the owner's answer is
returned as it is. A forwarded request is never forwarded again: if the receiving
server does not drive the set either (the lease moved meanwhile), the client gets the
409 and retries, as after any conflict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import structlog
from starlette.requests import Request
from starlette.responses import Response

from engine.api.errors import ApiError, unavailable
from events import StoreUnavailableError

if TYPE_CHECKING:
    from engine.api.service import ApiService

log = structlog.get_logger("osupgrade.api")

FORWARDED = "x-osupgrade-forwarded-by"
_PASSED_ON = ("authorization", "content-type", "accept", "x-ms-client-request-id")
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "server"}
TIMEOUT_S = 60.0


async def forward(service: ApiService, request: Request, key: str, refusal: ApiError) -> Response:
    """The owner's answer to ``request``; ``refusal`` when there is nobody to ask."""
    own = service.engine.ownership
    if own is None or FORWARDED in request.headers:
        return refusal.response()
    try:
        url = await own.board.owner_url(key)
    except StoreUnavailableError as exc:  # the lease table is in the database that is away
        return unavailable(exc).response()
    if url is None:
        return refusal.response()  # no live owner right now: the client retries
    body = request.scope.get("osupgrade.body")
    if body is None:
        body = await request.body()
    headers = {h: v for h, v in request.headers.items() if h in _PASSED_ON}
    headers[FORWARDED] = own.engine_id
    target = f"{url}{request.url.path}"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, verify=_verify(service)) as client:
            answer = await client.request(
                request.method, target, params=request.query_params, content=body, headers=headers
            )
    except httpx.HTTPError as exc:
        log.warning("forwarding failed", scale_set=key, to=url, error=repr(exc))
        return refusal.response()
    log.info("forwarded", scale_set=key, to=url, status=answer.status_code)
    passed = {h: v for h, v in answer.headers.items() if h.lower() not in _HOP_BY_HOP}
    return Response(answer.content, answer.status_code, passed)


def _verify(service: ApiService) -> bool | str:
    """Servers sharing a log share their TLS certificate: trust it for each other."""
    cert = service.settings.tls_cert
    return str(cert) if cert is not None else True

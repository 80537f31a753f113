"""Hand a command for a scale set another server drives to that server, as a verified peer.

Several servers share one log, and each scale set is driven by exactly one of them; a
client (Azure's SDK behind a load balancer, say) may send its request to any. Reads are
answered anywhere from the log. A command is forwarded once to the owner, and only to
an owner this server can verify:

- the owner's announcement (engine id and URL, from the lease board) must carry the MAC
  of the cluster credential, the owner's lease and heartbeat must be live, and the URL
  must be exactly ``scheme://host:port``; otherwise nothing is sent and the client gets
  the retryable refusal;
- the client's token never leaves this server: the command goes out with the method,
  path, query and body, the client's authorized access, and a signature of the cluster
  credential (``engine.api.cluster``), which the owner verifies before its own role
  checks;
- the owner's answer comes back with the headers ARM defines only, its operation URLs
  rebased on this server, so the client keeps polling the server it talked to; a 2xx
  is answered once this server's projection has the owner's write (read-your-writes).

A forwarded request is never forwarded again: if the owner does not drive the set
either (the lease moved meanwhile), the client gets the 409 and retries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import httpx
import structlog
from starlette.requests import Request
from starlette.responses import Response

from engine.api.auth import ACCESS_KEY, FORWARDED_BY_KEY
from engine.api.cluster import ClusterKey, SignedRequest
from engine.api.errors import ApiError, unavailable
from engine.api.peer_url import PeerUrlError, parse_peer_url
from engine.scaleout.leases import PeerAddress
from events import StoreUnavailableError

if TYPE_CHECKING:
    from engine.api.service import ApiService

log = structlog.get_logger("osupgrade.api")

_PASSED_ON = (
    "content-type",
    "accept",
    "x-ms-client-request-id",
    "x-ms-correlation-request-id",
    "if-match",  # preconditions are the owner's to check, in the same step as its write
    "if-none-match",
)
# The response headers ARM defines for these operations. The request ids are not
# among them: this server's own middleware adds its x-ms-request-id and correlation id.
_ANSWER_HEADERS = ("content-type", "retry-after", "x-ms-client-request-id", "etag")
_REBASED = ("azure-asyncoperation", "location")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
TIMEOUT_S = 60.0


async def forward(service: ApiService, request: Request, key: str, refusal: ApiError) -> Response:
    """The owner's answer to ``request``; ``refusal`` when no verified owner can answer."""
    own, cluster = service.engine.ownership, service.settings.cluster_key
    if own is None or cluster is None or FORWARDED_BY_KEY in request.scope:
        return refusal.response()
    try:
        address = await own.board.owner_address(key)
    except StoreUnavailableError as exc:  # the lease table is in the database that is away
        return unavailable(exc).response()
    except Exception as exc:  # noqa: BLE001 - the board's database: the client retries
        log.warning("cannot look the owner up", scale_set=key, error=_describe(exc))
        return refusal.response()
    url = verified_url(cluster, address) if address is not None else None
    if address is None or url is None:
        return refusal.response()  # no live, verified owner right now: the client retries
    body = request.scope.get("osupgrade.body")
    if body is None:
        body = await request.body()
    target = _target(request)
    signed = SignedRequest(
        request.method, target, body, request.scope[ACCESS_KEY], own.engine_id, address.engine_id
    )
    headers = {h: v for h, v in request.headers.items() if h in _PASSED_ON}
    headers.update(cluster.sign_request(signed))
    try:
        answer = await service.peer_client.client().request(
            request.method, url + target, content=body, headers=headers
        )
    except Exception as exc:  # noqa: BLE001 - any failure is a refusal; logged without headers
        log.warning("forwarding failed", scale_set=key, to=url, error=_describe(exc))
        return refusal.response()
    if answer.status_code == 401:  # our signature refused: the secrets differ
        log.error("the owner refused our signature; do the servers share the cluster secret?",
                  scale_set=key, to=url)  # fmt: skip
        return refusal.response()
    log.info("forwarded", scale_set=key, to=url, status=answer.status_code,
             owner_request_id=answer.headers.get("x-ms-request-id"))  # fmt: skip
    if answer.is_success:
        await service.projected()  # the client may read or poll its write here at once
    return Response(answer.content, answer.status_code, _answer_headers(answer, request))


def verified_url(cluster: ClusterKey, address: PeerAddress) -> str | None:
    """The owner's URL if its announcement verifies and has the one accepted shape."""
    if not cluster.verify_announcement(address.engine_id, address.url, address.mac):
        log.warning("owner's announcement does not verify; not forwarding to it",
                    owner=address.engine_id)  # fmt: skip
        return None
    try:
        return parse_peer_url(address.url)
    except PeerUrlError as exc:
        log.warning("owner's announced URL refused", owner=address.engine_id, problem=str(exc))
        return None


def _target(request: Request) -> str:
    """Path and query as they go on the wire (ASCII: what is signed is what arrives)."""
    path = quote(request.scope["raw_path"], safe=_PATH_SAFE)
    query = quote(request.scope["query_string"], safe=_PATH_SAFE + "?")
    return f"{path}?{query}" if query else path


def _answer_headers(answer: httpx.Response, request: Request) -> dict[str, str]:
    """The ARM headers of the owner's answer, operation URLs pointing at this server."""
    base = str(request.base_url).rstrip("/")
    headers = {h: answer.headers[h] for h in _ANSWER_HEADERS if h in answer.headers}
    for name in _REBASED:
        if name in answer.headers:
            parts = urlsplit(answer.headers[name])
            headers[name] = f"{base}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return headers


def _describe(exc: Exception) -> str:
    """The exception's type and message; never its request, so never a header."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class PeerClient:
    """One HTTP client for every forward: connections and TLS set-up are reused.

    Created on first use, in the server's event loop; a new client per request cost
    about 50 ms (the TLS context alone), more than the forward itself.
    """

    def __init__(self, tls_cert: Path | None) -> None:
        # Servers sharing a log share their TLS certificate: trust it for each other.
        self._verify: bool | str = str(tls_cert) if tls_cert is not None else True
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        """The shared client (no proxies from the environment, no redirects followed)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=TIMEOUT_S, verify=self._verify, trust_env=False, follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections (the server stops)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""Who may call, and what they may do: bearer tokens, roles, and requests from peers.

Tokens are configured on the server (``--auth-token TOKEN[:SUB1,SUB2]``). A token without
subscriptions is a *platform* token; one limited to some subscriptions is a
*subscription* token. ``BearerAuth`` only authenticates: it finds the caller's ``Access``
(401 without one) and leaves it in the ASGI scope. Authorization is the route's: every
route of the table declares a ``Role`` per method (``engine.api.app.routes``) and
``authorize`` checks the caller's access against it (403), so a new route cannot be added
without saying who may use it.

A command forwarded by another server of the same log carries no token: it is signed
with the cluster credential (``engine.api.cluster``) and carries the access of the client
that the forwarding server authenticated, which the same route checks then apply to.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.access import Access, Role
from engine.api.cluster import PeerAuthError, PeerVerifier
from engine.api.errors import ApiError
from engine.api.parsing import MAX_BODY_BYTES

__all__ = ["Access", "BearerAuth", "Role", "Token", "authorize", "generate_token", "parse_token"]

ACCESS_KEY = "osupgrade.access"  # the authenticated caller's Access, in the ASGI scope
FORWARDED_BY_KEY = "osupgrade.forwarded_by"  # the verified peer that forwarded the request


@dataclass(frozen=True)
class Token:
    """One accepted token; ``subscriptions`` None makes it a platform token."""

    secret: str = field(repr=False)
    subscriptions: frozenset[str] | None = None

    @property
    def access(self) -> Access:
        """What a request with this token may do."""
        return Access(self.subscriptions)


def parse_token(text: str) -> Token:
    """``TOKEN`` (platform) or ``TOKEN:SUB1,SUB2`` (those subscriptions only)."""
    secret, _, subs = text.partition(":")
    if not secret.strip() or any(c.isspace() for c in secret):
        raise ValueError("an auth token must be non-empty and contain no spaces")
    if not subs:
        return Token(secret)
    names = frozenset(s.strip().lower() for s in subs.split(",") if s.strip())
    if not names:
        raise ValueError("no subscriptions after ':' in the auth token")
    return Token(secret, names)


def generate_token() -> Token:
    """A fresh platform token, printed by ``osupgrade serve`` when none is given."""
    return Token(secrets.token_urlsafe(24))


def authorize(access: Access | None, role: Role, subscription: str | None) -> ApiError | None:
    """The 403 for a caller whose access does not cover the route; None when it does."""
    if access is not None and access.allows(role, subscription):
        return None
    if role is Role.PLATFORM or subscription is None:
        message = "This action is platform-wide: it needs a platform token."
    else:
        message = f"The access token does not give access to subscription '{subscription}'."
    return ApiError(403, "AuthorizationFailed", message)


class BearerAuth:
    """Authenticates every request: a known bearer token, or a verified peer's signature."""

    def __init__(
        self, app: ASGIApp, tokens: Iterable[Token], peers: PeerVerifier | None = None
    ) -> None:
        self.app = app
        self.tokens = tuple(tokens)
        self.peers = peers
        if not self.tokens:
            raise ValueError("at least one token is needed")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if _from_peer(scope):
                receive = await self._verify_peer(scope, receive)
            else:
                scope[ACCESS_KEY] = self._check(scope).access
        except ApiError as error:
            headers = (
                {"WWW-Authenticate": 'Bearer error="invalid_token"'} if error.status == 401 else {}
            )
            await error.response(headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Token:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if not header:
            raise ApiError(401, "AuthenticationFailed", "The 'Authorization' header is missing.")
        scheme, _, credential = header.decode("latin-1").partition(" ")
        token = self._find(credential.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            raise ApiError(
                401, "InvalidAuthenticationToken", "The access token is invalid or unknown."
            )
        return token

    def _find(self, credential: str) -> Token | None:
        found = None
        for token in self.tokens:  # compare all, in constant time each
            if hmac.compare_digest(token.secret.encode(), credential.encode()):
                found = token
        return found

    async def _verify_peer(self, scope: Scope, receive: Receive) -> Receive:
        """Check a forwarded request's signature over its body; the body is replayed after."""
        if self.peers is None:
            raise ApiError(401, "AuthenticationFailed", "This server takes no forwarded requests.")
        body = await _read_body(receive)
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            access, sender = self.peers.verify(scope["method"], target, Headers(scope=scope), body)
        except PeerAuthError as exc:
            raise ApiError(401, "AuthenticationFailed", str(exc)) from None
        scope[ACCESS_KEY], scope[FORWARDED_BY_KEY] = access, sender
        scope["osupgrade.body"] = body
        return _replay(body)


def _from_peer(scope: Scope) -> bool:
    """Does the request claim to be forwarded by a peer (any of the peer headers)?"""
    return any(name.startswith(b"x-osupgrade-peer-") for name, _ in scope["headers"])


async def _read_body(receive: Receive) -> bytes:
    """A signed request's whole body (bounded: the signature covers its digest)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ApiError(400, "InvalidRequestContent", "The request ended early.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(
                400, "InvalidRequestContent", f"The request content exceeds {MAX_BODY_BYTES} bytes."
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive

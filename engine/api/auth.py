"""Bearer-token authentication as a plain ASGI middleware (no per-request task overhead).

Tokens are configured on the server (``--auth-token TOKEN[:SUB1,SUB2]``); a token may be
limited to some subscriptions. Missing or unknown token: 401. A known token used on a
subscription it is not allowed, or on ``/admin`` when it is limited: 403.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from engine.api.errors import ApiError


@dataclass(frozen=True)
class Token:
    """One accepted token; ``subscriptions`` None means every subscription and /admin."""

    secret: str
    subscriptions: frozenset[str] | None = None

    def allows(self, subscription: str | None) -> bool:
        """May this token act on ``subscription`` (None: a non-subscription path)?"""
        if self.subscriptions is None:
            return True
        return subscription is not None and subscription.lower() in self.subscriptions


def parse_token(text: str) -> Token:
    """``TOKEN`` or ``TOKEN:SUB1,SUB2`` (the command-line form)."""
    secret, _, subs = text.partition(":")
    if not secret.strip() or any(c.isspace() for c in secret):
        raise ValueError("an auth token must be non-empty and contain no spaces")
    if not subs:
        return Token(secret)
    names = frozenset(s.strip().lower() for s in subs.split(",") if s.strip())
    if not names:
        raise ValueError(f"no subscriptions after ':' in {text!r}")
    return Token(secret, names)


def generate_token() -> Token:
    """A fresh unrestricted token, printed by ``osupgrade serve`` when none is given."""
    return Token(secrets.token_urlsafe(24))


class BearerAuth:
    """Refuses every request without an accepted ``Authorization: Bearer`` token."""

    def __init__(self, app: ASGIApp, tokens: Iterable[Token]) -> None:
        self.app = app
        self.tokens = tuple(tokens)
        if not self.tokens:
            raise ValueError("at least one token is needed")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._check(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        headers = (
            {"WWW-Authenticate": 'Bearer error="invalid_token"'} if error.status == 401 else {}
        )
        await error.response(headers)(scope, receive, send)

    def _check(self, scope: Scope) -> ApiError | None:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if not header:
            return ApiError(401, "AuthenticationFailed", "The 'Authorization' header is missing.")
        scheme, _, credential = header.decode("latin-1").partition(" ")
        token = self._find(credential.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            return ApiError(
                401, "InvalidAuthenticationToken", "The access token is invalid or unknown."
            )
        subscription = _subscription(scope["path"])
        if not token.allows(subscription):
            where = f"subscription '{subscription}'" if subscription else "this endpoint"
            return ApiError(
                403, "AuthorizationFailed", f"The access token does not give access to {where}."
            )
        return None

    def _find(self, credential: str) -> Token | None:
        found = None
        for token in self.tokens:  # compare all, in constant time each
            if hmac.compare_digest(token.secret.encode(), credential.encode()):
                found = token
        return found


def _subscription(path: str) -> str | None:
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1].lower() == "subscriptions" and parts[2]:
        return parts[2]
    return None

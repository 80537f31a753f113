"""The cluster credential: how servers sharing a log trust each other, never a client's token.

Every server of one log holds the same secret (``--cluster-secret-file`` or
``OSUPGRADE_CLUSTER_SECRET``); it never crosses the wire. Two keys are derived from it,
so a signature made for one purpose is worthless for the other:

- announcements: each server signs ``engine id + URL`` when it announces where it
  listens; a forwarding server sends nothing to a URL whose signature does not verify,
  so database access alone does not make a process a forwarding target;
- requests: the forwarding server has authenticated and authorized the client itself;
  it sends the command without the client's token, signed over the method, the path and
  query, the body's digest, a timestamp, the client's access (platform or its
  subscriptions), a nonce, and the sending and receiving engines. The owner checks the
  signature, the time window and that the nonce is new, then applies the route's role
  to the carried access as it would to a token.

Timestamps are wall-clock seconds (``time.time``, injectable): they bound how long a
captured request could be replayed, which is a matter of real time, not engine time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.api.access import Access
from engine.redaction import register_secret

MIN_SECRET_BYTES = 32
ENV_VAR = "OSUPGRADE_CLUSTER_SECRET"
WINDOW_S = 30.0  # accepted clock skew between servers, and how long a nonce is remembered
MAX_NONCES = 100_000  # per server: far above what a window of legitimate forwards holds

PREFIX = "x-osupgrade-peer-"
FROM, TO, TIME, NONCE, ACCESS, SIGNATURE = (
    PREFIX + part for part in ("from", "to", "time", "nonce", "access", "signature")
)
SIGNED_HEADERS = (FROM, TO, TIME, NONCE, ACCESS, SIGNATURE)
_NONCE = re.compile(r"[0-9a-f]{32}\Z")
_VERSION = "osupgrade-forward-1"


class ClusterSecretError(ValueError):
    """The cluster secret is missing, unreadable or too short (the message says which)."""


class PeerAuthError(Exception):
    """A request claiming to come from a peer that does not verify (answered 401)."""


class ClusterKey:
    """The shared secret, kept out of every ``repr`` and log line."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ClusterSecretError(
                f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes "
                "(for example the output of `openssl rand -hex 32`)"
            )
        register_secret(secret.decode(errors="replace"))  # never in a log line or traceback
        self._announce = _derive(secret, b"osupgrade peer announcement")
        self._request = _derive(secret, b"osupgrade forwarded request")

    def __repr__(self) -> str:
        return "ClusterKey(***)"

    @classmethod
    def from_file(cls, path: Path) -> ClusterKey:
        """The secret in ``path`` (surrounding whitespace, e.g. a final newline, ignored)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClusterSecretError(
                f"cannot read the cluster secret file {path}: {exc.strerror}"
            ) from None
        return cls(data.strip())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClusterKey | None:
        """The secret in ``OSUPGRADE_CLUSTER_SECRET``; None when it is not set."""
        value = environ.get(ENV_VAR)
        return None if value is None else cls(value.strip().encode())

    def sign_announcement(self, engine_id: str, url: str) -> str:
        """The MAC stored beside an engine's URL in the lease board."""
        return _mac(self._announce, "announce", engine_id, url)

    def verify_announcement(self, engine_id: str, url: str, mac: str | None) -> bool:
        """Was this URL announced by a server holding the secret, for this engine?"""
        expected = self.sign_announcement(engine_id, url)
        return mac is not None and hmac.compare_digest(expected, mac)

    def sign_request(
        self, request: SignedRequest, *, nonce: str | None = None, now: float | None = None
    ) -> dict[str, str]:
        """The headers that carry ``request``'s access and signature to its owner."""
        stamp = f"{time.time() if now is None else now:.3f}"
        nonce = nonce or secrets.token_hex(16)
        fields = {FROM: request.sender, TO: request.recipient, TIME: stamp, NONCE: nonce}
        fields[ACCESS] = request.access.encode()
        fields[SIGNATURE] = self.request_mac(request, stamp, nonce)
        return fields

    def request_mac(self, request: SignedRequest, stamp: str, nonce: str) -> str:
        digest = hashlib.sha256(request.body).hexdigest()
        return _mac(
            self._request, _VERSION, request.method, request.target, digest, stamp,
            request.access.encode(), nonce, request.sender, request.recipient,
        )  # fmt: skip


@dataclass(frozen=True)
class SignedRequest:
    """What a forwarded request's signature covers."""

    method: str
    target: str  # path and query exactly as sent on the wire
    body: bytes
    access: Access
    sender: str  # engine ids
    recipient: str


class PeerVerifier:
    """The owner's side: signature, time window, recipient and nonce of a forwarded request."""

    def __init__(
        self,
        key: ClusterKey,
        engine_id: str,
        *,
        window_s: float = WINDOW_S,
        now: Callable[[], float] = time.time,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self.key = key
        self.engine_id = engine_id
        self.window_s = window_s
        self.now = now
        self.max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it expires

    def verify(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[Access, str]:
        """The carried access and the sending engine; ``PeerAuthError`` if anything is off."""
        missing = [h for h in SIGNED_HEADERS if h not in headers]
        if missing:
            raise PeerAuthError(f"a forwarded request needs the header {missing[0]}")
        sender, nonce, stamp = headers[FROM], headers[NONCE], headers[TIME]
        if headers[TO] != self.engine_id:
            raise PeerAuthError("the forwarded request is meant for another server")
        if not _NONCE.match(nonce):
            raise PeerAuthError("the forwarded request's nonce is malformed")
        try:
            access = Access.decode(headers[ACCESS])
            sent_at = float(stamp)
        except ValueError:
            raise PeerAuthError("the forwarded request's access or time is malformed") from None
        now = self.now()
        if not abs(now - sent_at) <= self.window_s:  # also refuses nan
            raise PeerAuthError("the forwarded request is too old or from the future")
        request = SignedRequest(method, target, body, access, sender, self.engine_id)
        expected = self.key.request_mac(request, stamp, nonce)
        if not hmac.compare_digest(expected, headers[SIGNATURE]):
            raise PeerAuthError("the forwarded request's signature does not verify")
        self._remember(nonce, now)
        return access, sender

    def _remember(self, nonce: str, now: float) -> None:
        """Refuse a nonce seen within the window (a replay); forget expired ones."""
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise PeerAuthError("the forwarded request was already received (a replay)")
        if len(self._seen) >= self.max_nonces:
            raise PeerAuthError("too many forwarded requests within the window")
        self._seen[nonce] = now + 2 * self.window_s  # a request is valid for +-window


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.digest(secret, purpose, "sha256")


def _mac(key: bytes, *fields: str) -> str:
    """HMAC-SHA256 over the fields, each length-prefixed so no two field lists collide."""
    message = b"".join(b"%d:%s" % (len(f.encode()), f.encode()) for f in fields)
    return hmac.new(key, message, "sha256").hexdigest()

"""The one accepted shape of a peer's base URL: ``scheme://host:port``.

A server forwards commands to the URL another server announced in the database. Any
path, query, fragment or userinfo there would let whoever wrote the row choose where the
request goes or what it says (``http://evil/x?`` makes every forwarded path a query
string), so the announced URL is checked when a server starts (``--advertise-url`` or
the bound address) and again every time before it is used.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class PeerUrlError(ValueError):
    """A peer URL that is not ``http(s)://host:port``; the message says what is wrong."""


def parse_peer_url(text: str) -> str:
    """``text`` in canonical form (lower-case scheme and host, no trailing slash).

    Raises ``PeerUrlError`` for anything but http or https, a valid host name or IP
    address, and an explicit port; no userinfo, path, query or fragment.
    """
    if not text.isascii() or not text.isprintable() or " " in text:
        raise PeerUrlError("must be plain printable ASCII without spaces")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # e.g. 'http://[::1' or a port out of range
        raise PeerUrlError(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise PeerUrlError("must start with http:// or https://")
    if "@" in parts.netloc:
        raise PeerUrlError("must not carry a user name or password")
    if parts.path not in ("", "/") or "?" in text or "#" in text:
        raise PeerUrlError("must be scheme://host:port, without a path, query or fragment")
    if port is None or port == 0:
        raise PeerUrlError("must name a port (scheme://host:port)")
    host = _host(parts.hostname or "")
    return f"{scheme}://{host}:{port}"


def _host(host: str) -> str:
    """An IP address (IPv6 in brackets) or a DNS name of letters, digits and hyphens."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.is_unspecified:
            raise PeerUrlError(f"host {host} is a wildcard address, not one to connect to")
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    name = host.lower().removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.match(x) for x in name.split(".")):
        raise PeerUrlError(f"host {host!r} is not a valid host name or IP address")
    return name

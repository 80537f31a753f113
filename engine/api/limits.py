"""Limits on the wire, enforced before a request reaches authentication.

A client that sends a huge header, or connects and then sends nothing (or a byte at a
time), costs the server memory, parser time and a file descriptor until it is stopped.
These limits stop it; ``engine.api.protocol`` enforces them.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

DESCRIPTOR_RESERVE = 64
"""Descriptors kept for everything that is not a client connection: the log's files or
database connections, the projection, the listening socket, the event loop's own."""

MAX_CONNECTIONS_DEFAULT = 4096


@dataclass(frozen=True)
class WireLimits:
    """The HTTP server's limits (``osupgrade serve`` flags of the same names)."""

    max_header_bytes: int = 32 * 1024  # request line and headers: 431 beyond this
    header_timeout_s: float = 10.0  # from the first byte (or the connection) to the last header
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    keep_alive_s: int = 5  # an idle connection between requests (uvicorn takes whole seconds)
    max_connections: int | None = None  # None: from the descriptor limit

    def connection_cap(self) -> int:
        """``max_connections``, or what the process's descriptor limit leaves for clients.

        Accepting past the descriptor limit fails (EMFILE) and the event loop stops
        accepting for a while: every client, legitimate or not, is locked out.
        """
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS_DEFAULT
        return max(8, min(MAX_CONNECTIONS_DEFAULT, soft - DESCRIPTOR_RESERVE))

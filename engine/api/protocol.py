"""uvicorn's httptools protocol, writing each response in one system call, with limits.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls: two system calls (and, on loopback, two wake-ups of the
client) per response. On this project's small VMs that is a large share of a cached
read's cost, so writes made in one event-loop iteration are joined and sent together
at the end of it. Closing flushes first, so nothing is reordered or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.api.limits import WireLimits

LINGER_S = 1.0
LINGER_BYTES = 1 << 20


class CoalescingTransport:
    """A transport proxy that joins the writes of one loop iteration."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; the first write of an iteration schedules the flush."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Send everything queued, in order, in one write."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


class ConnectionGuard:
    """One server's open connections and those waiting for request headers, oldest first.

    At the connection cap a new connection evicts the one that has waited longest for
    its headers (a legitimate client sends them within milliseconds of connecting, a
    slow-client attacker never finishes), so slow connections cannot lock others out.
    Only when every connection is busy with a request is the new one refused.
    """

    def __init__(self, limits: WireLimits) -> None:
        self.limits = limits
        self.cap = limits.connection_cap()
        self.open = 0
        self.waiting: dict[GuardedHttpToolsProtocol, None] = {}  # insertion order = age

    def admit(self, newcomer: GuardedHttpToolsProtocol) -> bool:
        """Count ``newcomer`` in; False when it must be refused (nothing to evict)."""
        self.open += 1
        if self.open <= self.cap:
            return True
        for victim in self.waiting:
            if victim is not newcomer:
                self.release(victim)
                victim.evict()
                return True
        return False

    def release(self, protocol: GuardedHttpToolsProtocol) -> None:
        """``protocol`` no longer counts (closed, or closing now)."""
        if protocol.counted:
            protocol.counted = False
            self.open -= 1
        self.waiting.pop(protocol, None)


class GuardedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """``CoalescingHttpToolsProtocol`` with the limits uvicorn's httptools protocol lacks.

    uvicorn has a keep-alive timeout but, with httptools, no limit on header size (the
    parser joins a long header by repeated concatenation: 50 MB stall the event loop for
    seconds) and no header or body read timeout (a connection that sends nothing is kept
    for ever). Header bytes are counted before the parser sees them; a deadline runs from
    the connection (or a request's first byte) to its last header, another from there to
    the end of its body. ``guard`` is set per server by ``protocol_for``.
    """

    guard: ClassVar[ConnectionGuard]
    counted: bool  # still counted towards the connection cap

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._in_headers = False
        self._timer: asyncio.TimerHandle | None = None
        self._draining = False
        self._drained = 0
        self._message_done = True
        self.counted = True
        if not self.guard.admit(self):
            self._refuse_busy()
            return
        self._await_headers()
        self._arm(self.guard.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:  # answered and closing: discard what the client still sends
            self._drained += len(data)
            if self._drained > LINGER_BYTES:
                self.transport.close()
            return
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        limits = self.guard.limits
        if self._draining or self.transport.is_closing():
            return
        if self._in_headers and self._header_bytes > limits.max_header_bytes:
            limit = limits.max_header_bytes
            self._reject(431, "Request Header Fields Too Large", f"over {limit} bytes")
        elif self._timer is not None:
            return
        # A deadline only when this chunk leaves a request unfinished: a request that
        # arrives whole (nearly all of them) costs no timer.
        elif self._in_headers:
            self._arm(limits.header_timeout_s, self._header_timeout)
        elif not self._message_done:
            self._arm(limits.body_timeout_s, self._body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._message_done = False
        self._header_bytes = 0
        self.guard.waiting.pop(self, None)
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._message_done = True
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered and not self.transport.is_closing():
            self._await_headers()  # answered before its body was read (a 401, say)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._message_done and not self.transport.is_closing():
            self._await_headers()  # idle: uvicorn's keep-alive timeout runs until a byte

    def evict(self) -> None:
        """Close this connection, waiting for headers, at once: another needs its place."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    # -- internals -------------------------------------------------------------

    def _await_headers(self) -> None:
        if not self._in_headers:
            self._in_headers = True
            self.guard.waiting[self] = None

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        self._timeout_close(self._header_bytes > 0)

    def _body_timeout(self) -> None:
        """The body did not arrive in time: close (the handler sees a disconnect)."""
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _timeout_close(self, answer: bool) -> None:
        if self.transport.is_closing():
            return
        if answer:  # part of a request arrived: say why it ends
            self._reject(408, "Request Timeout", "the request headers did not arrive in time")
        else:
            self.transport.close()

    def _refuse_busy(self) -> None:
        cap = self.guard.cap
        message = f"The server is at its connection limit ({cap}); retry shortly."
        self._reject(503, "Service Unavailable", message, code="ServerBusy")

    def _reject(self, status: int, reason: str, message: str, code: str = "") -> None:
        """Answer ``status`` with an ARM error body, stop parsing, close soon.

        The client may still be sending: closing at once would reset the connection and
        could destroy the answer before it is read, so the rest is read and discarded
        (up to ``LINGER_BYTES``, for up to ``LINGER_S``) after the answer and the end of
        our side are sent.
        """
        if self._draining or self.transport.is_closing():
            return
        self._draining = True
        self._in_headers = False
        self.guard.waiting.pop(self, None)
        body = orjson.dumps(
            {"error": {"code": code or reason.replace(" ", ""), "message": message,
                       "target": None, "details": []}}
        )  # fmt: skip
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        flush = getattr(self.transport, "flush", None)
        if flush is not None:
            flush()
        with contextlib.suppress(Exception):  # TLS transports cannot half-close
            if self.transport.can_write_eof():
                self.transport.write_eof()
        self._disarm()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


def protocol_for(limits: WireLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class of one server's own (its own connection guard)."""
    guard = ConnectionGuard(limits)
    return type("ServerProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})

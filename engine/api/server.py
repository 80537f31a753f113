"""``osupgrade serve``: uvicorn in front of the engine, its workers and the projection.

Shutdown on SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight requests finish
(up to ``GRACE_S``), then the engine waits until every decided event is committed,
the projection catches up, workers stop and the log closes. Upgrades still running
continue from the log on the next start; nothing acknowledged is lost. A second
SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable, Generator

import structlog
import uvicorn

from engine.api.app import build_app
from engine.api.auth import Token
from engine.api.peer_url import PeerUrlError, parse_peer_url
from engine.api.protocol import protocol_for
from engine.api.service import ApiService, ServeSettings

log = structlog.get_logger("osupgrade.api")

GRACE_S = 10
MISSING_CLUSTER_SECRET = (
    "servers sharing a PostgreSQL log on a real clock authenticate each other with a "
    "cluster secret: give it with --cluster-secret-file PATH or OSUPGRADE_CLUSTER_SECRET"
)


class _Server(uvicorn.Server):
    """uvicorn without re-raising the captured signal after a graceful stop.

    uvicorn re-raises SIGTERM once ``serve`` returns, which would kill the process
    before the engine has handed its work back to the log.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class ApiServer:
    """One server: ``await run()`` serves until ``stop()`` or a signal."""

    def __init__(self, settings: ServeSettings) -> None:
        if not settings.tokens:
            raise ValueError("ApiServer needs at least one auth token")
        if settings.shared and settings.cluster_key is None:
            raise ValueError(MISSING_CLUSTER_SECRET)
        self.settings = settings
        self.service: ApiService | None = None
        self.base_url = ""
        self._server: _Server | None = None
        self._stop_requested = False

    @property
    def tokens(self) -> tuple[Token, ...]:
        """The accepted bearer tokens."""
        return self.settings.tokens

    async def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Start engine and projection, bind, serve; on the way out, hand work back."""
        settings = self.settings
        async with ApiService.open(settings) as service:
            self.service = service
            # Everything loaded at start (the folded log, the projection) lives as long as
            # the process: keep it out of the collector's full passes, which otherwise
            # stall every request for tens of milliseconds on a large fleet.
            gc.freeze()
            sock = bind_listener(settings.host, settings.port)
            scheme = "https" if settings.tls_cert else "http"
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.base_url = f"{scheme}://{shown}:{port}"
            if settings.shared:
                await service.announce(peer_url(settings, _reachable(self.base_url, host)))
            config = uvicorn.Config(
                build_app(service, settings.tokens),
                log_config=None,
                access_log=False,
                proxy_headers=False,
                http=protocol_for(settings.wire),
                timeout_keep_alive=settings.wire.keep_alive_s,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=GRACE_S,
                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
            self._server = _Server(config)
            if self._stop_requested:
                self._server.should_exit = True
            log.info(
                "listening", url=self.base_url, clock=settings.clock,
                max_connections=settings.wire.connection_cap(),
            )  # fmt: skip
            if on_ready is not None:
                on_ready(self.base_url)  # the socket listens: connections queue from now
            await self._server.serve(sockets=[sock])
            log.info("http stopped; handing unfinished work back to the log")

    def stop(self) -> None:
        """Ask the server to stop gracefully (safe from another thread)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True


def peer_url(settings: ServeSettings, bound: str) -> str:
    """The URL announced to the other servers: ``--advertise-url`` or the bound address."""
    url = settings.advertise_url or bound
    try:
        return parse_peer_url(url)
    except PeerUrlError as exc:
        flag = "--advertise-url" if settings.advertise_url else "the bound address"
        raise PeerUrlError(f"{flag} {exc}: {url!r}") from None


def _reachable(url: str, host: str) -> str:
    """``url`` as other machines can use it: a wildcard address becomes the host name."""
    if host in ("0.0.0.0", "::"):  # the wildcard: not an address to connect to
        shown = f"[{host}]" if ":" in host else host
        return url.replace(f"//{shown}:", f"//{socket.gethostname()}:", 1)
    return url


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind and listen before serving, so the real port (for ``--port 0``) is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says TCP; without it every response that goes out in
    # two writes (headers, body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _ToStructlog(logging.Handler):
    """Sends uvicorn's standard-library log records through structlog (one log format)."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = structlog.get_logger(record.name)
        if record.exc_info:
            logger.log(record.levelno, record.getMessage(), exc_info=record.exc_info)
        else:
            logger.log(record.levelno, record.getMessage())


def _bridge_uvicorn_logs() -> None:
    """uvicorn's and asyncio's records (an unretrieved task exception, say) go through
    structlog, so they are scrubbed of secrets like every other line."""
    for name in ("uvicorn", "asyncio"):
        std_log = logging.getLogger(name)
        if not any(isinstance(h, _ToStructlog) for h in std_log.handlers):
            std_log.addHandler(_ToStructlog())
        std_log.setLevel(logging.INFO)
        std_log.propagate = False


def run_forever(settings: ServeSettings, on_ready: Callable[[str], None]) -> None:
    """Run a server in this thread's own event loop (uvloop when installed)."""
    _bridge_uvicorn_logs()
    server = ApiServer(settings)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(server.run(on_ready))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return None
    return uvloop.new_event_loop

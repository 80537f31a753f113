"""``osupgrade ui --db LOG``: the dashboard of a stored log, read-only, without an engine.

The log is opened with ``open_log`` (which never creates one), folded once into the
timeline before the port opens, and then followed: appends this process can see (a
PostgreSQL log another server writes to, for one) move the page live.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import structlog
import uvicorn

from engine.api.auth import Token, generate_token, parse_token
from engine.api.limits import WireLimits
from engine.api.protocol import protocol_for
from engine.api.server import bind_listener
from engine.cli.log_source import describe, open_log
from engine.ui.app import Dashboard, dashboard_app
from engine.ui.timeline import Timeline

log = structlog.get_logger("osupgrade.ui")

DEFAULT_PORT = 8090


def add_ui_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``ui`` on the main parser's sub-commands."""
    ui = commands.add_parser("ui", help="browse a stored log in the time-travel dashboard")
    ui.add_argument("--db", required=True, help="the log: a SQLite file or a postgresql:// DSN")
    ui.add_argument(
        "--pg-schema", default="osupgrade", help="schema of a PostgreSQL log (default: %(default)s)"
    )
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    ui.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    ui.add_argument(
        "--auth-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="accepted bearer token (repeatable; one is generated and printed if none)",
    )


def run_ui(args: argparse.Namespace) -> int:
    """Check the arguments, then serve the dashboard until interrupted."""
    if not 0 <= args.port <= 65535:
        print("error: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    try:
        tokens = tuple(parse_token(t) for t in args.auth_token)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    generated = None if tokens else generate_token()
    if generated is not None:
        tokens = (generated,)

    def ready(url: str) -> None:
        print(
            f"osupgrade dashboard: {url}/ui/ (log {describe(args.db, args.pg_schema)}, read-only)"
        )
        if generated is not None:
            print(f"auth token (generated): {generated.secret}")
        sys.stdout.flush()

    try:
        asyncio.run(serve_ui(args.db, args.pg_schema, args.host, args.port, tokens, ready))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve_ui(
    db: str,
    pg_schema: str,
    host: str,
    port: int,
    tokens: tuple[Token, ...],
    ready: Callable[[str], None],
) -> None:
    """Open the log, fold it, bind, and serve the dashboard until a signal."""
    async with open_log(db, pg_schema) as store:
        timeline = Timeline(store)
        await timeline.start()
        log.info("log folded", head=timeline.head, snapshots=timeline.snapshot_count)
        sock = bind_listener(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        app = dashboard_app(Dashboard(store, timeline), tokens)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            http=protocol_for(WireLimits()),  # the same limits on the wire as serve's
        )
        ready(f"http://{shown}:{bound_port}")
        try:
            await uvicorn.Server(config).serve(sockets=[sock])
        finally:
            await timeline.stop()

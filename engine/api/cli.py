"""The ``osupgrade serve`` sub-command: arguments in, ``ApiServer`` out."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.api.auth import Token, generate_token
from engine.api.cluster import ENV_VAR, ClusterKey, ClusterSecretError
from engine.api.limits import WireLimits
from engine.api.log_lock import LogInUseError
from engine.api.peer_url import PeerUrlError, parse_peer_url
from engine.api.server import MISSING_CLUSTER_SECRET, run_forever
from engine.api.service import ServeSettings, is_postgres_dsn, redacted
from engine.api.token_sources import gather_tokens
from engine.domain.scale_set import EngineSettings
from engine.env import env_help, env_value
from engine.logging import configure_logging
from engine.redaction import register_secret, register_url_password, scrub
from engine.runtime.engine import WorkerCrashedError
from events import EventStoreError


def add_serve_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``serve`` on the main parser's sub-commands."""
    serve = commands.add_parser("serve", help="run the ARM-compatible HTTP API with the engine")
    serve.add_argument(
        "--db",
        required=env_value("--db") is None,
        default=env_value("--db"),
        help=env_help(
            "--db", "SQLite event log file (created if new) or a postgresql://user@host/db DSN"
        ),
    )
    serve.add_argument(
        "--pg-schema",
        default="osupgrade",
        help="PostgreSQL schema of the log and projections (default: %(default)s)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=8080, help="port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--clock",
        choices=["real", "virtual"],
        default="real",
        help="real: wall time (sped up by --speed); virtual: moved by POST /admin/clock/advance"
        " (default: %(default)s)",
    )
    serve.add_argument(
        "--speed", type=float, default=1.0, help="real clock speed-up (default: %(default)s)"
    )
    serve.add_argument(
        "--auth-token",
        action="append",
        default=[],
        metavar="TOKEN[:SUB1,SUB2]",
        help=env_help(
            "--auth-token",
            "accepted bearer token, optionally limited to subscriptions (repeatable; "
            "visible in the process list: prefer --auth-token-file)",
        ),
    )
    serve.add_argument(
        "--auth-token-file",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help=env_help("--auth-token-file", "file of tokens, one TOKEN[:SUB1,SUB2] a line"),
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    serve.add_argument("--seed", type=int, default=0, help="seed of the simulated fleet")
    serve.add_argument(
        "--history-page-size",
        type=int,
        default=5,
        help="osUpgradeHistory entries per page before a nextLink (default: %(default)s)",
    )
    serve.add_argument("--fleet-journal", type=Path, help="keep simulated machines across restarts")
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="PostgreSQL, real clock: a dead server's scale sets move to others after this"
        " (default: %(default)s)",
    )
    serve.add_argument(
        "--lease-renew",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="lease renewal period (default: %(default)s)",
    )
    serve.add_argument(
        "--advertise-url",
        metavar="URL",
        help="PostgreSQL: where the other servers forward commands for this server's sets, "
        "exactly scheme://host:port (default: the bound address)",
    )
    serve.add_argument(
        "--cluster-secret-file",
        type=Path,
        metavar="PATH",
        help=f"PostgreSQL, real clock: the secret the servers of one log share to trust each "
        f"other (at least 32 bytes; or the {ENV_VAR} environment variable)",
    )
    _add_wire_flags(serve)
    serve.add_argument(
        "--first-rollout-max-delay",
        type=int,
        default=3 * 3600,
        metavar="MAX_S",
        help="engine seconds: latest first automatic upgrade after enabling"
        " (default: %(default)s = 3 h)",
    )
    serve.add_argument(
        "--new-version-delay",
        type=int,
        nargs=2,
        default=[30 * 60, 60 * 60],
        metavar=("MIN_S", "MAX_S"),
        help="engine seconds from a new image version to its automatic upgrade"
        " (default: %(default)s = 30-60 min)",
    )


def _add_wire_flags(serve: argparse.ArgumentParser) -> None:
    """Limits on the wire, enforced before authentication (docs/API.md, "Limits")."""
    wire = WireLimits()
    serve.add_argument(
        "--max-header-bytes", type=int, default=wire.max_header_bytes, metavar="BYTES",
        help="request line and headers; larger requests get 431 (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--header-timeout", type=float, default=wire.header_timeout_s, metavar="SECONDS",
        help="a request's headers must arrive within this (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--body-timeout", type=float, default=wire.body_timeout_s, metavar="SECONDS",
        help="a request's body must arrive within this after its headers (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--keep-alive-timeout", type=int, default=wire.keep_alive_s, metavar="SECONDS",
        help="an idle connection is closed after this (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--max-connections", type=int, metavar="N",
        help="open client connections (default: the descriptor limit less a reserve)",
    )  # fmt: skip


def _wire_limits(args: argparse.Namespace) -> WireLimits:
    return WireLimits(
        max_header_bytes=args.max_header_bytes, header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive_timeout,
        max_connections=args.max_connections,
    )  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    """Check the arguments, print how to reach the server, serve until a signal."""
    try:
        tokens, warnings = gather_tokens(args.auth_token, args.auth_token_file)
    except ValueError as exc:
        return _fail(str(exc))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for token in tokens:
        register_secret(token.secret)
    register_url_password(args.db)
    problem = _check(args) or _check_timing(args) or _check_advertise_url(args)
    if problem:
        return _fail(problem)
    try:
        cluster_key = _cluster_key(args)
    except ClusterSecretError as exc:
        return _fail(str(exc))
    if cluster_key is None and is_postgres_dsn(args.db) and args.clock == "real":
        return _fail(MISSING_CLUSTER_SECRET)
    generated: Token | None = None
    if not tokens:
        generated = generate_token()
        tokens = (generated,)
    db: Path | str = args.db if is_postgres_dsn(args.db) else Path(args.db)
    settings = ServeSettings(
        db=db, host=args.host, port=args.port, clock=args.clock, speed=args.speed,
        tokens=tokens, tls_cert=args.tls_cert, tls_key=args.tls_key, seed=args.seed,
        history_page_size=args.history_page_size, fleet_journal=args.fleet_journal,
        pg_schema=args.pg_schema, lease_ttl_s=args.lease_ttl, lease_renew_s=args.lease_renew,
        advertise_url=args.advertise_url, cluster_key=cluster_key, wire=_wire_limits(args),
        engine=EngineSettings(
            first_rollout_max_delay_s=args.first_rollout_max_delay,
            new_version_min_delay_s=args.new_version_delay[0],
            new_version_max_delay_s=args.new_version_delay[1],
        ),
    )  # fmt: skip
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)

    def ready(url: str) -> None:
        where = redacted(args.db)
        print(f"osupgrade serving {url} ({args.clock} clock, log {where})", flush=True)
        if generated is not None:
            print(f"auth token (generated): {generated.secret}", flush=True)

    try:
        run_forever(settings, ready)
    except OSError as exc:
        return _fail(f"cannot serve on {args.host}:{args.port}: {exc}")
    except (EventStoreError, LogInUseError, PeerUrlError) as exc:
        return _fail(str(exc))
    except WorkerCrashedError as exc:
        print(scrub(f"error: {exc}: {exc.__cause__!r}"), file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return "--port must be between 0 and 65535"
    if args.speed <= 0:
        return "--speed must be > 0"
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if min(args.header_timeout, args.body_timeout, args.keep_alive_timeout) <= 0:
        return "--header-timeout, --body-timeout and --keep-alive-timeout must be > 0"
    if args.max_header_bytes < 1024 or (args.max_connections or 1) < 1:
        return "--max-header-bytes must be at least 1024 and --max-connections at least 1"
    if args.history_page_size < 1:
        return "--history-page-size must be at least 1"
    if not is_postgres_dsn(args.db) and Path(args.db).exists() and not Path(args.db).is_file():
        return f"{args.db} is not a file"
    return None


def _check_timing(args: argparse.Namespace) -> str | None:
    if not 0 < 2 * args.lease_renew < args.lease_ttl:
        return "--lease-renew must be > 0 and under half of --lease-ttl"
    if args.first_rollout_max_delay < 0:
        return "--first-rollout-max-delay must be >= 0"
    if not 0 <= args.new_version_delay[0] <= args.new_version_delay[1]:
        return "--new-version-delay needs 0 <= MIN_S <= MAX_S"
    return None


def _check_advertise_url(args: argparse.Namespace) -> str | None:
    if args.advertise_url is None:
        return None
    try:
        url = parse_peer_url(args.advertise_url)
    except PeerUrlError as exc:
        return f"--advertise-url {exc}: {args.advertise_url!r}"
    if url.startswith("https://") != (args.tls_cert is not None):
        return "--advertise-url must use https:// exactly when --tls-cert is given"
    return None


def _cluster_key(args: argparse.Namespace) -> ClusterKey | None:
    """From ``--cluster-secret-file`` or the environment (never the command line)."""
    if args.cluster_secret_file is not None and ENV_VAR in os.environ:
        raise ClusterSecretError(
            f"give the cluster secret once: --cluster-secret-file or {ENV_VAR}"
        )
    if args.cluster_secret_file is not None:
        return ClusterKey.from_file(args.cluster_secret_file)
    return ClusterKey.from_env()


def _fail(message: str) -> int:
    print(f"error: {scrub(message)}", file=sys.stderr)
    return 2

"""The ``osupgrade`` command line.

Sub-commands are thin: they parse arguments (argparse), call the library and print.
``demo`` runs a whole rollout on a fresh log; ``simulate`` runs what-if scenarios;
``serve`` runs the ARM-compatible HTTP API; ``verify``/``audit verify``, ``audit fences``,
``events``, ``status``, ``history`` and ``instances`` read an existing log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path

from engine.api.cli import add_serve_command, run_serve
from engine.cli.demo import DemoDirError, prepare_demo_dir, run_demo
from engine.cli.fences import run_audit_fences
from engine.cli.log_source import EXIT_UNREADABLE, open_log
from engine.cli.read import (
    AsOfError,
    audit_verify,
    parse_as_of,
    parse_time,
    print_events,
    print_history,
    print_instances,
    print_status,
)
from engine.cli.simulate import add_simulate_parser, run_simulate
from engine.logging import configure_logging
from engine.ui.cli import add_ui_command, run_ui
from events import EventStoreError

DEMO_SCALE_SETS = 250


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="osupgrade", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-format",
        choices=["console", "json"],
        default="console",
        help="log lines for people or one JSON object per line (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a whole rollout on a fresh SQLite log")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("demo-output"),
        help="where the log goes (default: %(default)s)",
    )
    demo.add_argument(
        "--scale-sets",
        type=int,
        default=DEMO_SCALE_SETS,
        help="fleet size, 4 to 5000 (default: %(default)s)",
    )
    demo.add_argument(
        "--seed", type=int, default=1, help="seed of the simulated fleet (default: %(default)s)"
    )  # fmt: skip
    add_simulate_parser(commands)

    verify = commands.add_parser("verify", help="check the hash chain of an event log")
    _add_db(verify)

    audit = commands.add_parser("audit", help="audit an event log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify", help="check the hash chain and re-fold the log against stored projections"
    )
    _add_db(audit_verify)
    audit_fences = audit_commands.add_parser(
        "fences",
        help="prove from the log that no scale set was driven by two engines at once",
    )
    _add_db(audit_fences)

    events = commands.add_parser("events", help="print the log as a timeline")
    _add_db(events)
    events.add_argument("--stream", help="only this stream (e.g. vmss-sub/rg/name)")
    events.add_argument("--since", type=_time_arg, help="RFC 3339 engine time")
    events.add_argument("--until", type=_time_arg, help="RFC 3339 engine time")
    events.add_argument("--json", action="store_true", help="JSON lines for machines")

    for name, text in (
        ("status", "latest rolling upgrade"),
        ("history", "OS upgrade history"),
        ("instances", "instances: image version and health"),
    ):
        sub = commands.add_parser(name, help=f"print a scale set's {text}")
        _add_db(sub)
        sub.add_argument("--scale-set", required=True, help="subscription/resourceGroup/name")
        sub.add_argument(
            "--as-of",
            type=_as_of_arg,
            help="a log position (digits only) or an RFC 3339 time (default: the log's end)",
        )
    add_serve_command(commands)
    add_ui_command(commands)
    return parser


def _add_db(command: argparse.ArgumentParser) -> None:
    """``--db`` and ``--pg-schema`` of every command that reads an existing log."""
    command.add_argument(
        "--db", required=True, help="the log: a SQLite file or a postgresql:// DSN"
    )
    command.add_argument(
        "--pg-schema", default="osupgrade", help="schema of a PostgreSQL log (default: %(default)s)"
    )


def _version() -> str:
    try:
        return metadata.version("osupgrade")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None


def _as_of_arg(text: str) -> int | datetime:
    try:
        return parse_as_of(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a position nor an RFC 3339 time"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``osupgrade`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "since", None) and getattr(args, "until", None) and args.since > args.until:
        parser.error("--since is after --until")
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.WARNING)
    try:
        status = _run_without_a_file(args)
        if status is not None:
            return status
        return asyncio.run(_read_command(args))
    except (EventStoreError, AsOfError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `osupgrade events ... | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _run_without_a_file(args: argparse.Namespace) -> int | None:
    """The commands that make their own log or take a DSN; None for the log readers."""
    if args.command == "demo":
        return _demo(args)
    if args.command == "simulate":
        return run_simulate(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "ui":
        return run_ui(args)
    if args.command == "audit" and args.audit_command == "fences":
        return run_audit_fences(args.db, args.pg_schema)
    return None


def _demo(args: argparse.Namespace) -> int:
    if not 4 <= args.scale_sets <= 5000:
        print("error: --scale-sets must be from 4 (one of each kind) to 5000", file=sys.stderr)
        return 2
    try:
        path = prepare_demo_dir(args.dir)
    except OSError as exc:
        print(f"error: cannot use --dir {args.dir}: {exc.strerror}", file=sys.stderr)
        return 2
    except DemoDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_demo(path, args.scale_sets, args.seed))


async def _read_command(args: argparse.Namespace) -> int:
    db, schema = args.db, args.pg_schema
    if args.command == "verify":
        return await _verify(db, schema)
    if args.command == "audit":
        return await audit_verify(db, schema)
    if args.command == "events":
        return await print_events(db, schema, args.stream, args.since, args.until, args.json)
    if args.command == "status":
        return await print_status(db, schema, args.scale_set, args.as_of)
    if args.command == "instances":
        return await print_instances(db, schema, args.scale_set, args.as_of)
    return await print_history(db, schema, args.scale_set, args.as_of)


async def _verify(db: str, schema: str) -> int:
    async with open_log(db, schema) as store:
        report = await store.verify()
    if report.ok:
        print(f"ok: {report.checked} events, hash chain intact")
        return 0
    print(f"TAMPERED: first bad position {report.first_bad_position}: {report.problem}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

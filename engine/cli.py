"""The ``osupgrade`` command line.

Sub-commands are thin: they parse arguments (argparse), call the library and print.
For now: ``demo`` (the event log at work on the embedded SQLite store) and
``verify`` (check a log's hash chain). The orchestrator commands follow in later issues.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.logging import configure_logging
from engine.store_demo import prepare_demo_dir, run_store_demo
from events import EventStoreError, SQLiteEventStore


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="osupgrade", description=__doc__.splitlines()[0])
    parser.add_argument("--log-format", choices=["console", "json"], default="console")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the event log demo on a fresh SQLite file")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"), help="where the log goes")
    demo.add_argument("--scale-sets", type=int, default=200, help="how many streams to write")
    demo.add_argument("--seed", type=int, default=1, help="seed for the generated workload")

    verify = commands.add_parser("verify", help="check the hash chain of an event log")
    verify.add_argument("--db", type=Path, required=True, help="path of the SQLite event log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``osupgrade`` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command == "demo":
            if args.scale_sets < 1:
                print("error: --scale-sets must be at least 1", file=sys.stderr)
                return 2
            path = prepare_demo_dir(args.dir)
            return asyncio.run(run_store_demo(path, args.scale_sets, args.seed))
        if not args.db.is_file():
            print(f"error: {args.db} does not exist", file=sys.stderr)
            return 2
        return asyncio.run(_verify(args.db))
    except EventStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _verify(db: Path) -> int:
    async with SQLiteEventStore(db) as store:
        report = await store.verify()
    if report.ok:
        print(f"ok: {report.checked} events, hash chain intact")
        return 0
    print(f"TAMPERED: first bad position {report.first_bad_position}: {report.problem}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

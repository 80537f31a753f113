"""Soak test: minutes of random API traffic under faults, then the invariants from the log.

Starts ``--servers`` real ``osupgrade serve`` processes on one PostgreSQL log (a
throwaway server of its own, or ``--dsn``), or one on a SQLite file (``--sqlite``), on
a real clock sped up ``--speed`` times. ``--clients`` async HTTP clients send random ARM
requests (create/update/delete scale sets, publish image versions, start/cancel/approve
upgrades, every read) while a random server is SIGKILLed and restarted every
``--kill-every`` seconds and the database restarted (``pg_ctl restart``, alternately
``fast`` and ``immediate``) every ``--db-restart-every`` seconds. Then traffic and
faults stop, every upgrade is given a bounded time to finish, and the log is checked:

    hash chain, fence audit, no instance reimaged twice by one upgrade, every
    acknowledged write present, each version published once, every upgrade finished,
    API reads equal to a fresh fold, servers exiting 0 on SIGTERM.

    .venv/bin/python tools/soak.py --minutes 10
    .venv/bin/python tools/soak.py --minutes 2 --sqlite --json soak.json

Exit 0 when every invariant holds and no answer was a 5xx other than 503 (503 is the
answer for "the log is unreachable, retry"; counted, not a failure); 1 otherwise; 2 when
the soak itself could not run. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from soak_checks import (  # noqa: E402
    Folded,
    Invariant,
    acknowledged,
    fences,
    finished,
    hash_chain,
    projection_agrees,
    published_once,
    reimaged_once,
)
from soak_faults import (  # noqa: E402
    Database,
    Faults,
    Servers,
    db_restart_loop,
    kill_loop,
    pause,
)
from soak_traffic import TOKEN, Cluster, Traffic, Versions, client, set_names, setup  # noqa: E402

from engine.logging import configure_logging  # noqa: E402
from events import EventStore, EventStoreError, RecordedEvent  # noqa: E402
from tests.servers import ServeStartError  # noqa: E402

LEASE_TTL_S, LEASE_RENEW_S = 4.0, 1.0
SETUP_DEADLINE_S = 60.0
PAGE = 5000

console = Console(stderr=True)


@dataclass
class Run:
    """Everything one soak measured, for the table and the JSON."""

    args: argparse.Namespace
    traffic: Traffic
    faults: Faults = field(default_factory=Faults)
    started: float = field(default_factory=time.monotonic)
    traffic_s: float = 0.0
    drain_s: float = 0.0
    drained: bool = False
    exit_codes: dict[int, int] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)
    events: int = 0
    tracebacks: int = 0  # in the servers' logs
    notes: list[str] = field(default_factory=list)

    @property
    def unacceptable_5xx(self) -> int:
        """5xx answers other than 503 (a 503 says "retry": acceptable during faults)."""
        errors = self.traffic.stats.server_errors
        return sum(n for (_, status, _), n in errors.items() if status != 503)

    @property
    def ok(self) -> bool:
        """Every invariant holds and no answer was an unexpected server error."""
        return all(i.ok for i in self.invariants) and self.unacceptable_5xx == 0


# -- the log, followed ---------------------------------------------------------------------


class LogReader:
    """The log read incrementally and folded with the engine's folds."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.records: list[RecordedEvent] = []
        self.folded = Folded.of([])

    async def catch_up(self) -> int:
        """Read and fold what was appended since the last call; the head position."""
        while True:
            after = self.records[-1].position if self.records else 0
            page = await self.store.read_all(after=after, limit=PAGE)
            if not page:
                return after
            self.records.extend(page)
            self.folded.feed(page)


async def engine_now(http: httpx.AsyncClient, cluster: Cluster) -> datetime | None:
    """The engine's time (``GET /admin/clock`` of a live server)."""
    for base in cluster.urls():
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            response = await http.get(f"{base}/admin/clock")
            if response.status_code == 200:
                return datetime.fromisoformat(response.json()["now"])
    return None


async def drain(run: Run, reader: LogReader, deadline_s: float) -> bool:
    """Wait (bounded) until no upgrade runs or is scheduled and the log stands still."""
    http, cluster = run.traffic.http, run.traffic.cluster
    until = time.monotonic() + deadline_s
    calm, last_head = 0, -1
    while time.monotonic() < until:
        head = await reader.catch_up()
        now = await engine_now(http, cluster)
        busy = reader.folded.running()
        if now is not None:
            busy += reader.folded.scheduled_after(now)
        calm = calm + 1 if not busy and head == last_head and now is not None else 0
        if calm >= 2:
            return True
        last_head = head
        await asyncio.sleep(1.0)  # other processes' work: poll the log
    return False


# -- the run -------------------------------------------------------------------------------


def serve_args(args: argparse.Namespace, db: Database, workdir: Path) -> Callable[[], list[str]]:
    """The ``serve`` arguments every server gets (all on the same clock speed; servers
    sharing a PostgreSQL log also share a fresh cluster secret, from a file)."""
    common = [
        *db.serve_args(), "--speed", str(args.speed), "--auth-token", TOKEN,
        "--seed", str(args.seed), "--first-rollout-max-delay", "60",
        "--new-version-delay", "0", "120",
    ]  # fmt: skip
    if db.dsn is not None:
        common += ["--lease-ttl", str(LEASE_TTL_S), "--lease-renew", str(LEASE_RENEW_S)]
        secret = workdir / "cluster-secret"
        secret.write_text(secrets.token_hex(32))
        secret.chmod(0o600)
        common += ["--cluster-secret-file", str(secret)]
    common += args.serve_arg
    return lambda: list(common)


async def progress(run: Run, live: Live, stop: asyncio.Event) -> None:
    """Refresh the live line twice a second until ``stop``."""
    total = run.args.minutes * 60
    printed = time.monotonic()
    while True:
        stats, faults = run.traffic.stats, run.faults
        elapsed = time.monotonic() - run.started
        line = (
            f"soak {elapsed:5.0f}/{total:.0f} s  requests {stats.total:,} "
            f"(5xx {stats.count('5xx')}, no answer {stats.count('error')})  "
            f"kills {faults.kills}  db restarts {faults.db_restart_total}  "
            f"servers up {len(run.traffic.cluster.urls())}/{run.args.servers}"
        )
        live.update(Text(line))
        if not console.is_terminal and time.monotonic() >= printed + 30:
            console.log(line)  # no live line in a log file: a line every 30 s instead
            printed = time.monotonic()
        if not await pause(stop, 0.5):
            return


async def load_phase(run: Run, servers: Servers, db: Database) -> None:
    """Clients and faults for ``--minutes``; then both stop and every server is up again."""
    args, stop = run.args, asyncio.Event()
    if args.db_restart_every > 0 and not db.restartable:
        run.notes.append("no database restarts: --dsn names a server this tool did not start")
    rng = random.Random(args.seed)
    began = time.monotonic()
    with Live(Text("soak starting"), console=console, refresh_per_second=4) as live:
        async with asyncio.TaskGroup() as group:
            group.create_task(progress(run, live, stop))
            for i in range(args.clients):
                group.create_task(client(run.traffic, args.seed * 1000 + i, stop, args.think))
            if args.kill_every > 0:
                group.create_task(kill_loop(servers, run.faults, rng, args.kill_every, stop))
            if args.db_restart_every > 0 and db.restartable:
                group.create_task(db_restart_loop(db, run.faults, args.db_restart_every, stop))
            await pause(stop, args.minutes * 60)
            stop.set()
    if not console.is_terminal:
        console.print()  # the last progress line stays on a line of its own
    run.traffic_s = time.monotonic() - began
    for index in set(range(args.servers)) - set(servers.up()):
        try:
            await servers.start(index)
        except ServeStartError as exc:
            run.notes.append(f"server {index} could not be started after the load: {exc}")


async def check_phase(run: Run, servers: Servers, db: Database) -> None:
    """Quiet period, then every invariant (reads compared while the servers still run)."""
    async with db.store() as store:
        reader = LogReader(store)
        began = time.monotonic()
        console.log(f"quiet period: waiting up to {run.args.drain_timeout:.0f} s")
        run.drained = await drain(run, reader, run.args.drain_timeout)
        run.drain_s = time.monotonic() - began
        if not run.drained:
            run.notes.append(f"the log did not go quiet within {run.args.drain_timeout:.0f} s")

        async def refold() -> tuple[Folded, datetime | None]:
            await reader.catch_up()
            return reader.folded, await engine_now(run.traffic.http, run.traffic.cluster)

        console.log("comparing every server's reads with a fresh fold of the log")
        run.invariants.append(
            await projection_agrees(
                run.traffic.http, run.traffic.cluster.urls(), refold, run.args.check_timeout
            )
        )
        console.log("stopping the servers (SIGTERM)")
        run.exit_codes = await servers.stop_all()
        run.tracebacks = servers.tracebacks()
        await reader.catch_up()
        console.log(f"checking the log ({len(reader.records):,} events)")
        report = await store.verify()
    records = reader.records
    run.events = len(records)
    stopped = Invariant("servers exit 0 on SIGTERM", checked=len(run.exit_codes))
    for index, code in sorted(run.exit_codes.items()):
        if code != 0:
            stopped.fail(f"server {index} exited {code}")
    run.invariants[:0] = [
        hash_chain(report),
        fences(records),
        reimaged_once(records),
        acknowledged(records, run.traffic.stats.promises),
        published_once(records),
        finished(reader.folded, records),
    ]
    run.invariants.append(stopped)


async def soak(args: argparse.Namespace, workdir: Path) -> Run:
    """The whole soak: database, servers, setup, load, quiet period, checks."""
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(args.http_timeout)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, trust_env=False)
        )
        cluster = Cluster()
        versions = Versions(every_s=args.publish_every)
        run = Run(args, Traffic(http, cluster, set_names(args.sets), versions))
        db = await _database(args, workdir)
        stack.push_async_callback(_dispose_quietly, db, args.keep)
        servers = Servers(args.servers, serve_args(args, db, workdir), cluster, workdir)
        stack.push_async_callback(_stop_quietly, servers)
        console.log(f"starting {args.servers} server(s) on {_where(db)} (logs in {workdir})")
        await servers.start_all()
        console.log(f"setup: publishing 1.0.0 and creating {args.sets} scale sets")
        await setup(run.traffic, random.Random(args.seed), SETUP_DEADLINE_S)
        run.started = time.monotonic()
        await load_phase(run, servers, db)
        try:
            await check_phase(run, servers, db)
        except (EventStoreError, OSError, httpx.HTTPError) as exc:  # reported, not raised
            unreadable = Invariant("the log could be read for the checks", checked=1)
            unreadable.fail(repr(exc))
            run.invariants.append(unreadable)
        return run


async def _database(args: argparse.Namespace, workdir: Path) -> Database:
    if args.sqlite:
        return Database(sqlite=workdir / "soak.sqlite")
    if args.dsn:
        return Database(dsn=args.dsn)
    console.log("starting a throwaway PostgreSQL (tools/pg_throwaway.sh)")
    return await Database.throwaway(workdir)


def _where(db: Database) -> str:
    if db.sqlite is not None:
        return f"SQLite {db.sqlite}"
    return f"PostgreSQL schema {db.schema}" + (" (throwaway server)" if db.restartable else "")


async def _dispose_quietly(db: Database, keep: bool) -> None:
    """Remove the database (or our schemas); a failure is said, not raised."""
    try:
        await db.dispose(keep)
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(f"warning: could not remove the soak's database: {exc!r}")


async def _stop_quietly(servers: Servers) -> None:
    """On the way out (also after Ctrl-C): stop whatever still runs."""
    try:
        await servers.stop_all()
    finally:
        servers.kill_all_now()


# -- the report ----------------------------------------------------------------------------


def results(run: Run) -> dict[str, Any]:
    """Everything measured, as JSON."""
    stats, faults = run.traffic.stats, run.faults
    p50, p99 = stats.latency_ms()
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, status_class), n in sorted(stats.requests.items()):
        by_kind.setdefault(kind, {})[status_class] = n
    return {
        "ok": run.ok,
        "mode": "sqlite" if run.args.sqlite else "postgresql",
        "servers": run.args.servers,
        "clients": run.args.clients,
        "speed": run.args.speed,
        "duration_s": round(run.traffic_s, 1),
        "quiet_period_s": round(run.drain_s, 1),
        "quiet": run.drained,
        "requests": stats.total,
        "requests_by_kind": by_kind,
        "server_errors": [
            {"kind": k, "status": s, "code": c, "count": n}
            for (k, s, c), n in sorted(stats.server_errors.items())
        ],
        "unanswered": [
            {"kind": k, "error": e, "count": n} for (k, e), n in sorted(stats.transport.items())
        ],
        "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2)},
        "kills": faults.kills,
        "db_restarts": dict(faults.db_restarts),
        "fault_failures": faults.failures,
        "acknowledged_commands": len(stats.promises),
        "events": run.events,
        "exit_codes": run.exit_codes,
        "tracebacks_in_server_logs": run.tracebacks,
        "invariants": [i.as_json() for i in run.invariants],
        "notes": run.notes,
    }


def render(run: Run, out: Console) -> None:
    """The tables: summary, requests, 5xx, invariants."""
    data = results(run)
    summary = Table(title="Soak", show_header=False)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    restarts = ", ".join(f"{m} {n}" for m, n in sorted(run.faults.db_restarts.items())) or "0"
    for name, value in (
        ("mode", f"{data['mode']}, {run.args.servers} server(s), {run.args.clients} clients"),
        ("duration (traffic)", f"{run.traffic_s:.1f} s at speed {run.args.speed:g}"),
        ("quiet period", f"{run.drain_s:.1f} s ({'quiet' if run.drained else 'NOT quiet'})"),
        ("requests", f"{data['requests']:,}"),
        ("acknowledged commands", f"{data['acknowledged_commands']:,}"),
        ("latency p50 / p99", f"{data['latency_ms']['p50']} / {data['latency_ms']['p99']} ms"),
        ("server kills (SIGKILL)", str(run.faults.kills)),
        ("database restarts", f"{run.faults.db_restart_total} ({restarts})"),
        ("fault injection failures", str(len(run.faults.failures))),
        ("events in the log", f"{run.events:,}"),
        ("tracebacks in the servers' logs", f"{run.tracebacks:,}"),
    ):
        summary.add_row(name, value)
    out.print(summary)
    out.print(_requests_table(data))
    if data["server_errors"]:
        errors = Table(title="5xx by kind")
        for column in ("request", "status", "ARM code", "count"):
            errors.add_column(column, justify="right" if column == "count" else "left")
        for e in data["server_errors"]:
            code = e["code"] if e["code"] != "-" else "(no ARM error body)"
            errors.add_row(e["kind"], str(e["status"]), code, f"{e['count']:,}")
        out.print(errors)
    out.print(_invariants_table(run))
    _problems(run, out)
    for note in run.notes + run.faults.failures:
        out.print(f"note: {note}")


def _requests_table(data: dict[str, Any]) -> Table:
    classes = ["2xx", "4xx", "5xx", "error", "no server"]
    table = Table(title="Requests by kind and status class ('error': no answer)")
    table.add_column("request")
    for c in classes:
        table.add_column(c, justify="right")
    for kind, counts in data["requests_by_kind"].items():
        table.add_row(kind, *(f"{counts.get(c, 0):,}" for c in classes))
    return table


def _invariants_table(run: Run) -> Table:
    table = Table(title="Invariants (checked from the log after the quiet period)")
    for column in ("invariant", "verdict", "checked", "failed"):
        table.add_column(column, justify="right" if column in ("checked", "failed") else "left")
    for inv in run.invariants:
        verdict = "[green]PASS[/]" if inv.ok else "[red]FAIL[/]"
        table.add_row(inv.name, verdict, f"{inv.checked:,}", f"{inv.failed:,}")
    return table


def _problems(run: Run, out: Console) -> None:
    """The first problems of each failed invariant, in full, under the table."""
    for inv in run.invariants:
        for problem in inv.problems[:3]:
            out.print(f"FAIL {inv.name}: {problem[:400]}", markup=False, highlight=False)
        if len(inv.kinds) > 1 or inv.failed > len(inv.problems):
            for kind, n in inv.kinds.most_common(6):
                out.print(f"  {n:>6,} x {kind}", markup=False, highlight=False)


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="traffic and faults (default 10)")
    p.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients")
    p.add_argument("--servers", type=int, default=3, help="osupgrade serve processes")
    p.add_argument("--speed", type=float, default=60.0, help="engine clock speed-up")
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds; 0: no kills")
    p.add_argument("--db-restart-every", type=float, default=45.0, help="seconds; 0: none")
    p.add_argument("--dsn", help="use this PostgreSQL (a schema of its own; no DB restarts)")
    p.add_argument("--sqlite", action="store_true", help="one server on a SQLite file")
    p.add_argument("--sets", type=int, default=24, help="scale set names the clients use")
    p.add_argument("--think", type=float, default=0.3, help="max pause between requests (s)")
    p.add_argument("--publish-every", type=float, default=15.0, help="seconds between versions")
    p.add_argument("--http-timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="quiet period bound (s)")
    p.add_argument(
        "--check-timeout", type=float, default=60.0,
        help="how long reads may trail the log before they count as different (s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--keep", action="store_true", help="keep the logs, database and work dir")
    p.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="extra argument for every osupgrade serve (repeatable)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.sqlite:
        args.servers = 1
        args.db_restart_every = 0.0
    if args.minutes <= 0 or args.clients < 1 or args.servers < 1 or args.sets < 1:
        p.error("--minutes > 0, --clients >= 1, --servers >= 1, --sets >= 1")
    if args.sqlite and args.dsn:
        p.error("--sqlite and --dsn exclude each other")
    return args


async def _main(args: argparse.Namespace, workdir: Path) -> Run:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await soak(args, workdir)


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the tables, write the JSON; the exit status."""
    args = parse_args(argv)
    configure_logging("console", logging.WARNING)  # the tool's own store: only problems
    workdir = Path(tempfile.mkdtemp(prefix="osupgrade-soak."))
    workdir.chmod(0o755)
    try:
        run = asyncio.run(_main(args, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print(f"interrupted; every process was stopped (logs in {workdir})")
        return 130
    except (ServeStartError, RuntimeError, OSError, TimeoutError) as exc:
        console.print(f"error: the soak could not run: {exc} (logs in {workdir})")
        return 2
    render(run, Console())
    if args.json is not None:
        args.json.write_text(json.dumps(results(run), indent=2) + "\n")
    if run.ok and not args.keep:
        _remove(workdir)
    else:
        console.print(f"server logs: {workdir}")
    return 0 if run.ok else 1


def _remove(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The soak's processes and faults: the log's database, the servers, SIGKILLs, DB restarts.

Everything here is bounded: a server start, a database restart and a stop each have a
deadline, and ``Servers.stop_all`` ends every process it started (SIGKILL after the
grace period), which the soak also calls on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from asyncio.subprocess import PIPE, Process
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from soak_traffic import Cluster

from engine.api.service import leases_schema
from events import PostgresEventStore, SQLiteEventStore
from tests.servers import ROOT, ServeStartError, start_serve, stop_serve

PG_SCRIPT = ROOT / "tools" / "pg_throwaway.sh"
PG_TIMEOUT_S = 120.0
KILL_WAIT_S = 10.0
START_ATTEMPTS = 3


async def run_script(*args: str, timeout_s: float = PG_TIMEOUT_S) -> tuple[int, str]:
    """Run ``tools/pg_throwaway.sh ARGS`` with a deadline; (exit status, output)."""
    process = await asyncio.create_subprocess_exec(
        "bash", str(PG_SCRIPT), *args, stdout=PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, f"timed out after {timeout_s:.0f} s"
    return process.returncode or 0, out.decode(errors="replace").strip()


@dataclass
class Database:
    """Where the log lives: a SQLite file, or a PostgreSQL schema (a server of ours or not)."""

    dsn: str | None = None
    sqlite: Path | None = None
    pg_dir: Path | None = None  # a throwaway server we started: we may restart and stop it
    schema: str = field(default_factory=lambda: f"soak_{uuid.uuid4().hex[:10]}")

    @classmethod
    async def throwaway(cls, workdir: Path) -> Database:
        """Start a throwaway PostgreSQL (``tools/pg_throwaway.sh``) in ``workdir/pg``."""
        directory = workdir / "pg"
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        status, out = await run_script("start", str(directory))
        if status != 0:
            raise RuntimeError(f"pg_throwaway.sh start failed: {out[-1500:]}")
        return cls(dsn=out.splitlines()[-1], pg_dir=directory)

    def store(self) -> SQLiteEventStore | PostgresEventStore:
        """A store on the log (open it with ``async with``)."""
        if self.dsn is not None:
            return PostgresEventStore(self.dsn, schema=self.schema)
        assert self.sqlite is not None
        return SQLiteEventStore(self.sqlite)

    def serve_args(self) -> list[str]:
        """``serve`` arguments naming this log."""
        if self.dsn is not None:
            return ["--db", self.dsn, "--pg-schema", self.schema]
        return ["--db", str(self.sqlite)]

    @property
    def restartable(self) -> bool:
        """We may restart the database server (it is our throwaway one)."""
        return self.pg_dir is not None

    async def restart(self, mode: str) -> tuple[int, str]:
        """``pg_ctl restart -m MODE`` (fast or immediate) of our throwaway server."""
        assert self.pg_dir is not None
        return await run_script("restart", str(self.pg_dir), mode)

    async def dispose(self, keep: bool) -> None:
        """Stop our throwaway server, or drop our schemas from a server given by ``--dsn``."""
        if keep:
            return
        if self.pg_dir is not None:
            await run_script("stop", str(self.pg_dir))
        elif self.dsn is not None:
            conn = await asyncpg.connect(self.dsn, timeout=30)
            try:
                for schema in (self.schema, leases_schema(self.schema)):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


@dataclass
class Faults:
    """What was injected, and what went wrong doing it."""

    kills: int = 0
    db_restarts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    back_after_kill_s: list[float] = field(default_factory=list)

    @property
    def db_restart_total(self) -> int:
        """Database restarts, both modes."""
        return sum(self.db_restarts.values())


@dataclass
class _Slot:
    index: int
    log: Path
    process: Process | None = None


class Servers:
    """``osupgrade serve`` processes on one log; the live ones are in ``cluster``."""

    def __init__(
        self, count: int, args: Callable[[], list[str]], cluster: Cluster, workdir: Path
    ) -> None:
        self.args = args
        self.cluster = cluster
        self.slots = [_Slot(i, workdir / f"server-{i}.log") for i in range(count)]

    async def start(self, index: int) -> None:
        """Start server ``index`` (a few attempts); raises ``ServeStartError`` at the end."""
        slot = self.slots[index]
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                slot.process, url = await start_serve(self.args(), slot.log)
            except ServeStartError:
                if attempt == START_ATTEMPTS:
                    raise
                await asyncio.sleep(1.0)  # e.g. the database is restarting: try again
                continue
            self.cluster.up(index, url)
            return

    async def start_all(self) -> None:
        """Start every server, one after the other (the first creates the schema)."""
        for slot in self.slots:
            await self.start(slot.index)

    def up(self) -> list[int]:
        """Indexes of the servers running now."""
        return [s.index for s in self.slots if s.process is not None]

    async def kill(self, index: int) -> None:
        """SIGKILL server ``index`` and wait until it is gone."""
        slot = self.slots[index]
        self.cluster.down(index)
        process, slot.process = slot.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(KILL_WAIT_S):
                await process.wait()
        except TimeoutError:
            raise ServeStartError(f"server {index} outlived SIGKILL by {KILL_WAIT_S} s") from None

    async def stop_all(self) -> dict[int, int]:
        """SIGTERM every server (SIGKILL after the grace period); exit status by index."""
        running = [(s, s.process) for s in self.slots if s.process is not None]
        for slot, _ in running:
            self.cluster.down(slot.index)
            slot.process = None
        codes = await asyncio.gather(*(stop_serve(p) for _, p in running))
        return {slot.index: code for (slot, _), code in zip(running, codes, strict=True)}

    def tracebacks(self) -> int:
        """Tracebacks the servers logged (each an unexpected error worth reading)."""
        marker = "Traceback (most recent call last)"
        return sum(
            s.log.read_text(errors="replace").count(marker) for s in self.slots if s.log.exists()
        )

    def kill_all_now(self) -> None:
        """Last resort (an error on the way out): SIGKILL whatever still runs."""
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``; False if ``stop`` was set meanwhile (the caller ends)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return not stop.is_set()


async def kill_loop(
    servers: Servers, faults: Faults, rng: random.Random, every_s: float, stop: asyncio.Event
) -> None:
    """Every ``every_s`` seconds: SIGKILL a random running server, then start it again."""
    while await pause(stop, every_s):
        up = servers.up()
        if not up:
            continue
        index = rng.choice(up)
        try:
            await servers.kill(index)
            faults.kills += 1
            killed_at = time.monotonic()
            await pause(stop, 1.0)  # clients meet a dead server for a moment
            await servers.start(index)
        except ServeStartError as exc:
            faults.failures.append(f"server {index}: {str(exc)[:300]}")
            continue
        faults.back_after_kill_s.append(time.monotonic() - killed_at)


async def db_restart_loop(
    db: Database, faults: Faults, every_s: float, stop: asyncio.Event
) -> None:
    """Every ``every_s`` seconds: ``pg_ctl restart``, alternating ``fast`` and ``immediate``."""
    modes = ("fast", "immediate")
    while await pause(stop, every_s):
        mode = modes[faults.db_restart_total % 2]
        status, out = await db.restart(mode)
        if status != 0:
            faults.failures.append(f"pg_ctl restart -m {mode} failed: {out[-300:]}")
            continue
        faults.db_restarts[mode] += 1

"""Real ``osupgrade serve`` processes on one PostgreSQL log, for tests that need several.

Servers sharing a log on a real clock must hold the same cluster secret; every server
started here gets ``CLUSTER_SECRET`` through the environment (never the command line).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SECRET = "cluster-secret-of-the-tests-" + "5" * 36


@asynccontextmanager
async def serve_process(
    dsn: str, schema: str, log: Path, *args: str, options: Sequence[str] = ()
) -> AsyncIterator[tuple[Process, str]]:
    """One ``osupgrade serve`` on the shared log, on a free port; yields (process, url).

    ``args`` go to ``serve``, ``options`` before it (``-v``, ``--log-format json``).
    """
    command = ["-m", "engine.cli", *options, "serve", "--db", dsn, "--pg-schema", schema]
    command += ["--port", "0"]
    env = {**os.environ, "OSUPGRADE_CLUSTER_SECRET": CLUSTER_SECRET}
    err = await asyncio.to_thread(log.open, "a")
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, *args, cwd=ROOT, stdout=PIPE, stderr=err, env=env
    )
    err.close()
    assert process.stdout is not None
    line = await process.stdout.readline()  # printed once it serves
    assert line.startswith(b"osupgrade serving"), (line, await asyncio.to_thread(log.read_text))
    try:
        yield process, line.split()[2].decode()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def drop(dsn: str, *schemas: str) -> None:
    """Remove a test's schemas (the log's and the leases')."""
    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()

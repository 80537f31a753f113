"""Real ``osupgrade serve`` processes, for tests and for ``tools/soak.py``.

A server is started with ``--port 0`` and is ready once it prints
``osupgrade serving URL``: the URL is read from that line. Every wait has a deadline and
a server that does not stop on SIGTERM is killed, so no caller can hang on one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ServeStartError(RuntimeError):
    """The server exited or printed something else before it was ready."""


async def start_serve(
    serve_args: Sequence[str],
    log: Path,
    *,
    global_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[Process, str]:
    """Start ``osupgrade [GLOBAL] serve ARGS --port 0`` (stderr appended to ``log``).

    Returns the process and the URL it serves on, once it serves. ``env`` is added to
    this process's environment (secrets go there, never on the command line).
    """
    command = ["-m", "engine.cli", *global_args, "serve", *serve_args, "--port", "0"]
    err = await asyncio.to_thread(log.open, "a")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, cwd=ROOT, stdout=PIPE, stderr=err, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    finally:
        err.close()
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await process.stdout.readline()  # printed once it serves
    except TimeoutError:
        line = b""
    if not line.startswith(b"osupgrade serving"):
        await stop_serve(process, grace_s=5)
        tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
        raise ServeStartError(f"serve did not start: {line!r}\n{tail}")
    return process, line.split()[2].decode()


async def stop_serve(process: Process, grace_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait up to ``grace_s`` seconds, then SIGKILL; the exit status."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                return await process.wait()
        except TimeoutError:
            process.kill()
    return await process.wait()

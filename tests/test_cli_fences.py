"""``osupgrade audit fences``: the fence audit of a log, from the command line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from engine.domain.events import DOMAIN_EVENTS, InstanceReimaged, LeaseAcquired
from engine.domain.grouping import pack
from events import Metadata, SQLiteEventStore
from tests.test_cli import ROOT

SET = "sub/rg/web"


def osupgrade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


async def write_log(path: Path, writes: list[tuple[str, object, str, int]]) -> None:
    """Append (stream, event, engine, token) as an engine with that lease would."""
    async with SQLiteEventStore(path) as store:
        for stream, event, engine, token in writes:
            meta = Metadata(correlation_id=SET, fence=(engine, token))
            records = [DOMAIN_EVENTS.to_new_event(e, metadata=meta) for e in pack([event])]
            await store.append(stream, records, None)


def ownership(stream: str, reimaged_by_b: str) -> list[tuple[str, object, str, int]]:
    upgrade = "upgrade-u1"
    return [
        (stream, LeaseAcquired("a", 1), "a", 1),
        (upgrade, InstanceReimaged("0", "1.1.0"), "a", 1),
        (stream, LeaseAcquired("b", 2), "b", 2),
        (upgrade, InstanceReimaged(reimaged_by_b, "1.1.0"), "b", 2),
    ]


def test_a_log_with_one_driver_at_a_time_passes(tmp_path: Path) -> None:
    log = tmp_path / "ok.sqlite"
    asyncio.run(write_log(log, ownership(f"vmss-{SET}", reimaged_by_b="1")))
    result = osupgrade("audit", "fences", "--db", str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 4 events" in result.stdout and "2 ownerships (1 takeovers)" in result.stdout


def test_a_late_write_of_an_old_owner_and_a_second_reimage_fail(tmp_path: Path) -> None:
    log = tmp_path / "bad.sqlite"
    writes = ownership(f"vmss-{SET}", reimaged_by_b="0")  # instance 0 reimaged again
    writes.append((f"vmss-{SET}", LeaseAcquired("a", 1), "a", 1))  # a writes after b took over
    asyncio.run(write_log(log, writes))
    result = osupgrade("audit", "fences", "--db", str(log))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "token 1 after token 2" in result.stdout
    assert "instances reimaged twice: ['0']" in result.stdout


def test_a_missing_log_is_an_error(tmp_path: Path) -> None:
    result = osupgrade("audit", "fences", "--db", str(tmp_path / "none.sqlite"))
    assert result.returncode == 2 and "does not exist" in result.stdout

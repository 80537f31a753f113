"""SIGKILL at 20 points of a rollout of 50 scale sets; the end equals an uninterrupted run.

The child process (``tests/engine/crash_child.py``) drives the engine on an SQLite log,
with simulated machines that journal their changes. It is killed with SIGKILL at 20
points spread over the rollout and started again each time; the final log must equal,
stream by stream (types, data and engine times), that of a run that was never killed,
and no instance may have been reimaged twice by one upgrade.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import SQLiteEventStore
from projections.upgrade_view import expand

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


async def _child(db: Path, journal: Path, kill_at: int | None) -> int:
    """Run the child until it is done, or kill it once the log reaches ``kill_at``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.engine.crash_child", str(db), str(journal),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    head = 0
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
            if not line:
                stderr = await proc.stderr.read() if proc.stderr else b""
                pytest.fail(f"child exited early: {stderr.decode()[-2000:]}")
            if line.startswith(b"DONE"):
                await proc.wait()
                assert proc.returncode == 0
                return -1
            if line.startswith(b"HEAD "):
                head = int(line.split()[1])
                if kill_at is not None and head >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                    return head
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _streams(db: Path) -> dict[str, list[tuple[str, Any, Any]]]:
    async with SQLiteEventStore(db) as store:
        report = await store.verify()
        assert report.ok, report
        out: dict[str, list[tuple[str, Any, Any]]] = {}
        for event in await store.read_all(limit=10_000_000):
            out.setdefault(event.stream_id, []).append((event.type, event.data, event.occurred_at))
    return out


@pytest.mark.slow
async def test_sigkill_at_twenty_points_reaches_the_uninterrupted_end(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    assert await _child(straight / "db.sqlite", straight / "journal.jsonl", None) == -1
    reference = await _streams(straight / "db.sqlite")
    total = sum(len(events) for events in reference.values())

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    db, journal = crashed / "db.sqlite", crashed / "journal.jsonl"
    kill_points = [total * (k + 1) // (KILLS + 1) for k in range(KILLS)]
    killed_at = []
    for point in kill_points:
        head = await _child(db, journal, point)
        if head == -1:
            break
        killed_at.append(head)
    assert await _child(db, journal, None) == -1
    assert len(killed_at) == KILLS, killed_at

    result = await _streams(db)
    assert result.keys() == reference.keys()
    for stream, events in reference.items():
        if result[stream] != events:
            pairs = enumerate(zip(result[stream], events, strict=False))
            diff = next(
                (i for i, (a, b) in pairs if a != b), min(len(events), len(result[stream])) - 1
            )
            pytest.fail(
                f"{stream} differs from the uninterrupted run at #{diff} (killed at {killed_at}):\n"
                f"  got      {[e[0] for e in result[stream][diff - 2 :]]}\n"
                f"  expected {[e[0] for e in events[diff - 2 :]]}\n"
                f"  lengths {len(result[stream])} vs {len(events)}"
            )

    operations = [orjson.loads(line) for line in journal.read_bytes().splitlines() if line]
    per_op = Counter(entry["id"] for entry in operations)
    assert max(per_op.values()) == 1  # every fleet operation ran once, across all restarts
    reimages = _reimages(result)
    assert reimages == _reimages(reference)  # the same instances as the uninterrupted run
    assert len(reimages) > 100 and max(reimages.values()) == 1  # never twice by one upgrade


def _reimages(streams: dict[str, list[tuple[str, Any, Any]]]) -> Counter[tuple[str, str]]:
    """How often each (upgrade stream, instance) had a reimage started."""
    return Counter(
        (stream, item["instance_id"])
        for stream, events in streams.items()
        for kind, data, _ in events
        for item_kind, item in expand(kind, data)  # grouped per-instance events
        if item_kind == "upgrade.instance_reimage_started"
    )

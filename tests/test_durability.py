"""Acknowledged appends survive SIGKILL, and no batch is ever half there."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from events import SQLiteEventStore
from tests.durability_child import BATCH

ROOT = Path(__file__).resolve().parent.parent


async def _run_child_until(
    path: Path, durability: str, start: int, acks_wanted: int
) -> dict[int, tuple[int, int]]:
    """Start the child, read ``acks_wanted`` acknowledgements, then SIGKILL it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.durability_child", str(path), durability, str(start),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert child.stdout is not None
    acked: dict[int, tuple[int, int]] = {}
    try:
        while len(acked) < acks_wanted:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            if not line:
                pytest.fail("the child stopped before it was killed")
            if not line.startswith(b"ACK "):
                continue
            _, batch, first, last = line.decode().split()
            acked[int(batch)] = (int(first), int(last))
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    return acked


@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_acknowledged_appends_survive_sigkill(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "durable.sqlite"
    acked_total: dict[int, tuple[int, int]] = {}
    for round_no, kill_after in enumerate([40, 130, 75]):  # three crashes, same file
        acked = await _run_child_until(path, durability, round_no * 1_000_000, kill_after)
        acked_total.update(acked)
        async with SQLiteEventStore(path) as store:
            log = await store.read_all(limit=1_000_000)
            report = await store.verify()
        assert report.ok, report
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        by_batch: dict[int, list[int]] = defaultdict(list)
        for event in log:
            by_batch[event.data["batch"]].append(event.position)
        for batch, (first, last) in acked_total.items():
            assert by_batch[batch] == list(range(first, last + 1)), f"acked batch {batch} lost"
        for batch, positions in by_batch.items():  # acknowledged or not: never half a batch
            assert len(positions) == BATCH, f"batch {batch} is partial"
            assert positions == list(range(positions[0], positions[0] + BATCH))

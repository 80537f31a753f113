"""``osupgrade demo``: the event log at work, on a fresh embedded SQLite file.

Until the orchestrator lands, the demo exercises what exists: many concurrent writers
(one per simulated scale set) appending upgrade-shaped events through group commit, a
catch-up subscriber following live, the hash chain verified, and tampering detected on
a copy of the log.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from events import Metadata, NewEvent, SQLiteEventStore, Subscription

DEMO_FILE = "osupgrade-demo.sqlite"


def _scale_set_events(name: str, instances: int, rng: random.Random) -> list[list[NewEvent]]:
    """The appends one simulated scale set makes, batch by batch (illustrative only)."""
    meta = Metadata(correlation_id=f"demo-{name}", actor="Platform")
    appends = [[NewEvent("scaleset.created", {"name": name, "capacity": instances}, metadata=meta)]]
    batch_size = max(1, instances * 20 // 100)
    for start in range(0, instances, batch_size):
        members = [str(i) for i in range(start, min(start + batch_size, instances))]
        batch = [NewEvent("upgrade.batch_started", {"members": members}, metadata=meta)]
        for member in members:
            healthy = rng.random() > 0.05
            batch.append(NewEvent("instance.reimaged", {"instance": member}, metadata=meta))
            kind = "instance.healthy" if healthy else "instance.health_timeout"
            batch.append(NewEvent(kind, {"instance": member}, metadata=meta))
        appends.append(batch)
    appends.append([NewEvent("upgrade.completed", {"name": name}, metadata=meta)])
    return appends


async def _follow(subscription: Subscription, total: int, counts: Counter[str]) -> None:
    async for event in subscription:
        counts[event.type] += 1
        if subscription.position >= total:
            return


def prepare_demo_dir(directory: Path) -> Path:
    """Create ``directory`` and remove an earlier demo log; return the new log's path."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("osupgrade-demo*.sqlite*"):
        leftover.unlink()
    return directory / DEMO_FILE


async def run_store_demo(path: Path, scale_sets: int, seed: int) -> int:
    """Run the demo, writing the log at ``path``; return the process exit code."""
    console = Console()
    directory = path.parent
    rng = random.Random(seed)
    plans = {
        f"vmss-{i:04d}": _scale_set_events(f"vmss-{i:04d}", rng.randint(3, 100), rng)
        for i in range(scale_sets)
    }
    total = sum(len(batch) for appends in plans.values() for batch in appends)
    console.print(f"[bold]osupgrade event log demo[/]: {scale_sets} scale sets, {total} events")
    counts: Counter[str] = Counter()
    async with SQLiteEventStore(path) as store:
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False,
        ) as progress:  # fmt: skip
            written = progress.add_task("appended ", total=total)
            followed = progress.add_task("subscriber", total=total)
            follower = asyncio.create_task(_follow(store.subscribe(), total, counts))

            async def write(stream: str, appends: list[list[NewEvent]]) -> None:
                version = 0
                for batch in appends:
                    await store.append(stream, batch, version)
                    version += len(batch)
                    progress.advance(written, len(batch))
                    progress.update(followed, completed=sum(counts.values()))

            await asyncio.gather(*(write(s, a) for s, a in plans.items()))
            await follower
            progress.update(followed, completed=sum(counts.values()))
        elapsed = time.perf_counter() - started
        report = await store.verify()
    _summary(console, total, elapsed, counts, report.ok)
    tampered = _tamper_copy(path, directory)
    async with SQLiteEventStore(tampered) as copy:
        bad = await copy.verify()
    console.print(
        f"Tampered copy [bold]{tampered.name}[/]: verify found position "
        f"[bold red]{bad.first_bad_position}[/] ({bad.problem})"
    )
    console.print("\nNext, try:")
    console.print(f"  .venv/bin/osupgrade audit verify --db {path}")
    console.print(f"  .venv/bin/osupgrade audit verify --db {tampered}")
    console.print(f"  .venv/bin/osupgrade events --db {path} --stream vmss-0007")
    return 0 if report.ok and not bad.ok else 1


def _summary(
    console: Console, total: int, elapsed: float, counts: Counter[str], chain_ok: bool
) -> None:
    table = Table(title="What happened")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("events appended", f"{total:,}")
    table.add_row("wall time", f"{elapsed:.2f} s")
    table.add_row("events/s (append + follow)", f"{total / elapsed:,.0f}")
    for kind, count in sorted(counts.items()):
        table.add_row(f"  seen by subscriber: {kind}", f"{count:,}")
    table.add_row("hash chain", "intact" if chain_ok else "BROKEN")
    console.print(table)


def _tamper_copy(path: Path, directory: Path) -> Path:
    """Copy the log and change one event's data, as an attacker editing the file would."""
    copy = directory / "osupgrade-demo-tampered.sqlite"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    with conn:
        middle = conn.execute("SELECT max(position) / 2 FROM events").fetchone()[0]
        conn.execute(
            "UPDATE events SET data = ? WHERE position = ?", (b'{"instance":"tampered"}', middle)
        )
    conn.close()
    return copy

"""The live progress display of a rollout (rich), fed by ``engine.sim.simulate`` snapshots."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from engine.sim.simulate import Live


class LiveDisplay:
    """A rich progress display fed with ``Live`` snapshots.

    ``transient`` clears it at the end (``simulate``: the table that follows says it all);
    otherwise the final state stays on screen (the demo).
    """

    def __init__(self, console: Console, *, transient: bool = False) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=transient,
        )
        self.instances: TaskID | None = None
        self.sets: TaskID | None = None

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        self.instances = self.progress.add_task("instances", total=None, detail="")
        self.sets = self.progress.add_task("scale sets", total=None, detail="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, live: Live) -> None:
        assert self.instances is not None and self.sets is not None
        settled = live.instances_done + live.instances_failed
        self.progress.update(
            self.instances,
            total=live.instances_total,
            completed=settled,
            detail=f"upgraded {live.instances_done:,}  failed {live.instances_failed:,}  "
            f"rolled back {live.instances_rolled_back:,}",
        )
        finished = live.sets_completed + live.sets_faulted + live.sets_cancelled
        self.progress.update(
            self.sets,
            total=live.sets_total,
            completed=finished,
            detail=f"completed {live.sets_completed}  faulted {live.sets_faulted}  "
            f"cancelled {live.sets_cancelled}  (engine time {live.virtual_time:%H:%M})",
        )


class LineProgress:
    """Progress for a pipe or a log file: one plain line at most every ``every_s`` seconds.

    A long run without a terminal would otherwise be silent until its table; lines go to
    stderr so that stdout (the results) stays the same from run to run.
    """

    def __init__(
        self,
        label: str,
        every_s: float = 5.0,
        out: TextIO | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.every_s = every_s
        self.out = out or sys.stderr
        self._monotonic = monotonic  # wall time, injectable for tests
        self._started = monotonic()
        self._last = self._started

    def update(self, live: Live) -> None:
        now = self._monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        finished = live.sets_completed + live.sets_faulted + live.sets_cancelled
        settled = live.instances_done + live.instances_failed
        self.out.write(
            f"simulate {self.label}: {now - self._started:.0f} s, scale sets {finished:,}"
            f"/{live.sets_total:,} finished, instances {settled:,}/{live.instances_total:,}"
            f" settled (engine time {live.virtual_time:%H:%M})\n"
        )
        self.out.flush()

"""Every row of the performance table, each against its reference measured in the same run.

Why one driver: machines here differ by 2-3x from day to day, so a figure only means something
next to a reference taken minutes apart on the same machine. Each row is a ``Row`` provided by
one benchmark module under ``tools/`` (a function ``bench_all_rows(runs, quick)``); the module
interleaves ours and the reference run by run. This driver runs every module in turn and prints
the table: for each row the min / median / max of ``ours / reference`` (or the absolute value
when a row has no reference), next to the goal.

Run: ``.venv/bin/python tools/bench_all.py [--runs 3] [--quick] [--only NAME ...] [--json out]``
(``--pg DSN`` adds the PostgreSQL rows; ``tools/pg_throwaway.sh start DIR`` gives one.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

# Modules asked for rows, in table order; each defines
# ``bench_all_rows(runs: int, quick: bool, pg: str | None) -> Iterable[Row]``.
MODULES = ("bench_store", "bench_replay", "bench_fleet", "bench_api")


@dataclass
class Row:
    """One measure: ``ours[i]`` and ``reference[i]`` come from the same interleaved run i."""

    measure: str
    reference_name: str  # "-" when the goal is absolute
    goal: str  # e.g. ">= 0.7x", "<= 150 s"
    unit: str  # "x" for ratios, else the unit of ``ours`` ("s", "ms", "MiB", ...)
    ours: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    higher_is_better: bool = True  # of ours (throughput) or not (seconds, latency)
    met: Callable[[list[float]], bool] | None = field(default=None, repr=False, compare=False)

    def figures(self) -> list[float]:
        """Ratios ours/reference (oriented so that > 1 is better) or the absolute values."""
        if not self.reference:
            return list(self.ours)
        pairs = zip(self.ours, self.reference, strict=True)
        if self.higher_is_better:
            return [o / r for o, r in pairs]
        return [r / o for o, r in pairs]

    def summary(self) -> tuple[float, float, float]:
        values = self.figures()
        return min(values), statistics.median(values), max(values)


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def render(rows: Iterable[Row]) -> str:
    lines = [
        "| measure | reference in the same run | min / median / max | goal | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        low, mid, high = row.summary()
        spread = " / ".join(fmt(v, row.unit) for v in (low, mid, high))
        met = "-" if row.met is None else ("yes" if row.met(row.figures()) else "no")
        lines.append(f"| {row.measure} | {row.reference_name} | {spread} | {row.goal} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per row (default: 3)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke test (default: off)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="module names to run (default: all)"
    )
    parser.add_argument(
        "--pg", default=None, help="PostgreSQL DSN for the PostgreSQL rows (default: none)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the rows as JSON (default: none)"
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for name in MODULES:
        if args.only is not None and name not in args.only:
            continue
        module = importlib.import_module(name)
        provide = getattr(module, "bench_all_rows", None)
        if provide is None:
            print(f"bench_all: {name} has no rows yet", file=sys.stderr)
            continue
        started = time.perf_counter()
        print(f"bench_all: {name} ...", file=sys.stderr, flush=True)
        for row in provide(args.runs, args.quick, args.pg):
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
        print(f"bench_all: {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(render(rows))
    if args.json is not None:
        payload = [
            {k: v for k, v in asdict(row).items() if k != "met"} | {"summary": row.summary()}
            for row in rows
        ]
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

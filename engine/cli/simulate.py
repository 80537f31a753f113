"""``osupgrade simulate SCENARIO.json [--compare POLICY.json ...] [--report FILE.html]``.

Runs the scenario as written, then once more under each ``--compare`` policy, and
prints the runs side by side. Kept apart from ``cli.py`` so the command line stays a
thin dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.runtime.live import LineProgress, LiveDisplay
from engine.sim.report import write_report
from engine.sim.scenario import PolicyVariant, Scenario, ScenarioError, load_policy, load_scenario
from engine.sim.simulate import Outcome, comparison_rows, run_scenario


def add_simulate_parser(commands: Any) -> None:
    """Register the ``simulate`` sub-command on the ``osupgrade`` parser."""
    simulate = commands.add_parser(
        "simulate", help="what-if: run a scenario file in virtual time (docs/SIMULATE.md)"
    )
    simulate.add_argument("scenario", type=Path, help="scenario file (JSON)")
    simulate.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="POLICY.json",
        help="also run the scenario under each of these rolling upgrade policies",
    )
    simulate.add_argument(
        "--report", type=Path, metavar="FILE.html", help="write a self-contained HTML report"
    )
    simulate.add_argument("--seed", type=int, help="override the scenario's seed")


def run_simulate(args: argparse.Namespace) -> int:
    """Load, run, print, report; exit 2 with ``FILE:LINE:COL: message`` on a bad file."""
    try:
        scenario = load_scenario(args.scenario)
        variants = [load_policy(path) for path in args.compare]
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _report_problem(args.report)
    if problem is not None:
        print(f"error: --report {args.report}: {problem}", file=sys.stderr)
        return 2
    if args.seed is not None:
        scenario = replace(scenario, seed=args.seed)
    console = Console(width=None if sys.stdout.isatty() else 100)
    console.print(
        f"[bold]osupgrade simulate[/]: {scenario.name} ({len(scenario.specs())} scale sets, "
        f"seed {scenario.seed})"
    )
    outcomes = asyncio.run(_run_all(scenario, variants, console))
    console.print(comparison_table(outcomes))
    for outcome in outcomes:
        for note in outcome.notes:
            console.print(f"  note ({outcome.label}): {note}", highlight=False)
    if args.report is not None:
        write_report(args.report, outcomes)
        console.print(f"report written to {args.report}", highlight=False)
    return 0


def _report_problem(report: Path | None) -> str | None:
    """Why the report could not be written, found before the run rather than after it."""
    if report is None:
        return None
    if report.is_dir():
        return "is a directory"
    if report.parent.exists() and not report.parent.is_dir():
        return f"{report.parent} is not a directory"
    if not report.parent.is_dir():
        return f"directory {report.parent} does not exist"
    if not os.access(report.parent, os.W_OK) or (
        report.exists() and not os.access(report, os.W_OK)
    ):
        return "is not writable"
    return None


async def _run_all(
    scenario: Scenario, variants: list[PolicyVariant], console: Console
) -> list[Outcome]:
    """The scenario as written, then under each policy; one after the other, same seed."""
    runs = [("as written", scenario)] + [(v.name, v.apply(scenario)) for v in variants]
    if not console.is_terminal:  # a pipe or a log file: a plain line now and then
        return [
            await run_scenario(s, label=label, progress=LineProgress(label).update)
            for label, s in runs
        ]
    outcomes = []
    for label, variant in runs:
        with LiveDisplay(console, transient=True) as display:
            outcomes.append(await run_scenario(variant, label=label, progress=display.update))
    return outcomes


def comparison_table(outcomes: list[Outcome]) -> Table:
    """Runs side by side."""
    table = Table(title="Rollout under each policy" if len(outcomes) > 1 else "Rollout")
    table.add_column("measure", overflow="fold")
    for outcome in outcomes:
        table.add_column(outcome.label, justify="right")
    for name, values in comparison_rows(outcomes):
        table.add_row(name, *values)
    return table

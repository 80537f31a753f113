"""``osupgrade demo``: the whole product at work, on a fresh embedded SQLite log.

A few hundred simulated scale sets of mixed sizes and policies (automatic with the
default policy, automatic with ``useRollingUpgradePolicy`` and its own batches and
pauses, manual mode, one Service Fabric set) meet a new image version on which some
instances never become healthy. The rollout runs in virtual time; then the projection
runner folds the log into stored projections (for ``audit verify`` to re-check), and
the demo shows what happened, the history of a few interesting scale sets, and the
commands to explore the log it leaves behind.

Everything above the last line is deterministic for a seed: the wall time is printed
on a line of its own.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from engine.domain.events import SimulationProfile
from engine.domain.model import AutomaticOSUpgradePolicy, RollingUpgradePolicy, UpgradePolicy
from engine.runtime.clock import VirtualClock
from engine.runtime.live import LiveDisplay
from engine.sim.scenario import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    Action,
    ImagePlan,
    ScaleSetGroup,
    Scenario,
)
from engine.sim.simulate import Outcome, duration, run_scenario
from events import SQLiteEventStore
from events.sqlite import APPLICATION_ID
from projections.fleet_view import FleetView
from projections.runner import ProjectionRunner

DEMO_FILE = "osupgrade-demo.sqlite"
TAMPERED_FILE = "osupgrade-demo-tampered.sqlite"
CANCELLED_SET = "batch-001"
MAINTAINED_SET = "web-003"

log = structlog.get_logger("osupgrade.demo")


def demo_scenario(scale_sets: int, seed: int) -> Scenario:
    """The demo fleet: roughly half default-policy web sets, a third rolling-policy API
    sets across three zones, some manual batch sets and one Service Fabric set."""
    automatic = AutomaticOSUpgradePolicy(enable_automatic_os_upgrade=True)
    batch_count = max(2, scale_sets * 12 // 100)
    api_count = max(1, scale_sets * 35 // 100) if scale_sets >= 5 else 0
    web_count = max(1, scale_sets - batch_count - api_count - 1)
    groups = [
        ScaleSetGroup(
            "web", web_count, (3, 100), "probe", UpgradePolicy("Automatic", automatic=automatic)
        ),
        ScaleSetGroup(
            "batch", batch_count, (20, 50), "probe", UpgradePolicy("Manual")
        ),  # manual mode: only a user starts an upgrade
        ScaleSetGroup(
            "fabric", 1, (20, 20), "none", UpgradePolicy("Automatic", automatic=automatic),
            service_fabric=True, update_domains=5,
        ),
    ]  # fmt: skip
    if api_count:
        rolling = RollingUpgradePolicy(
            max_batch_instance_percent=10,
            max_unhealthy_upgraded_instance_percent=30,
            pause_time_between_batches_s=60,
        )
        policy = UpgradePolicy(
            "Rolling",
            rolling=rolling,
            automatic=AutomaticOSUpgradePolicy(
                enable_automatic_os_upgrade=True, use_rolling_upgrade_policy=True
            ),
        )
        api = ScaleSetGroup("api", api_count, (10, 100), "extension", policy, zones=("1", "2", "3"))
        groups.insert(1, api)
    maintained = MAINTAINED_SET if web_count > 3 else "web"
    actions = (
        Action(600, "startUpgrade", "batch-000"),
        Action(600, "startUpgrade", CANCELLED_SET),
        Action(660, "cancelUpgrade", CANCELLED_SET),  # one minute in: mid first batch
        Action(1800, "setHealth", maintained, instance_percent=30),  # maintenance
        Action(5400, "clearHealth", maintained),
    )
    return Scenario(
        name="osupgrade demo",
        seed=seed,
        start=datetime.fromisoformat("2026-03-01T00:00:00+00:00"),
        image=ImagePlan(behaviour=SimulationProfile(unhealthy_instance_percent=4, boot_seconds=90)),
        groups=tuple(groups),
        actions=actions,
    )


def prepare_demo_dir(directory: Path) -> Path:
    """Create ``directory`` and remove an earlier demo's logs; return the new log's path.

    Only the demo's own two logs (and their SQLite side files) are removed, and only if
    they are osupgrade logs: a user's file that happens to bear the name is never
    deleted (``DemoDirError`` instead).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in (DEMO_FILE, TAMPERED_FILE):
        log_file = directory / name
        if log_file.exists() and not _is_event_log(log_file):
            raise DemoDirError(
                f"{log_file} is not an osupgrade event log; the demo will not overwrite it"
                " (move it, or choose another --dir)"
            )
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{log_file}{suffix}").unlink(missing_ok=True)
    return directory / DEMO_FILE


class DemoDirError(ValueError):
    """The demo's directory holds a file of the demo's name that is not a demo log."""


def _is_event_log(path: Path) -> bool:
    """An SQLite file marked with the event log's application id (read, never changed)."""
    if not path.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("PRAGMA application_id").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == APPLICATION_ID


async def run_demo(path: Path, scale_sets: int, seed: int, console: Console | None = None) -> int:
    """Run the demo, writing the log at ``path``; return the process exit code."""
    console = console or Console(width=None if sys.stdout.isatty() else 100)
    scenario = demo_scenario(scale_sets, seed)
    instances = sum(spec.capacity for spec in scenario.specs())
    behaviour = scenario.image.behaviour
    console.print(
        f"[bold]osupgrade demo[/]: {len(scenario.specs())} scale sets, {instances:,} instances, "
        f"image {scenario.image.current_version} -> {scenario.image.new_version} "
        f"({behaviour.unhealthy_instance_percent} % never become healthy)"
    )
    console.print(f"log: {path} (SQLite, durability full)", highlight=False)
    started = time.perf_counter()
    outcome, chain_ok, fabric = await _roll_out(console, path, scenario)
    wall = time.perf_counter() - started
    _render(console, outcome, chain_ok)
    if fabric:
        domains = ", ".join(reason.removeprefix("update domain ") for reason in fabric)
        console.print(
            f"  fabric (Service Fabric): {len(fabric)} batches, one per update domain ({domains})",
            highlight=False,
        )
    tampered = await _tamper_demo(console, path)
    _next_steps(console, path, tampered, outcome)
    console.print(f"wall time: {wall:.1f} s")
    log.info("demo finished", wall_s=round(wall, 2), events=outcome.events)
    return 0 if chain_ok else 1


async def _roll_out(
    console: Console, path: Path, scenario: Scenario
) -> tuple[Outcome, bool, list[str]]:
    """The rollout with live progress, stored projections, the chain verified."""
    clock = VirtualClock(scenario.start)
    async with SQLiteEventStore(path, clock=clock) as store:
        with LiveDisplay(console) as display:
            outcome = await run_scenario(
                scenario, label="demo", store=store, clock=clock, progress=display.update
            )
        # Caught up once at the end: a runner following live commits a transaction per
        # small page on the same file and doubled the demo's wall time.
        async with ProjectionRunner(store, path, batch_size=5000) as runner:
            await runner.wait_for(await store.head())
        report = await store.verify()
        fabric = await fabric_batches(store, outcome.view)
    return outcome, report.ok, fabric


# -- after the rollout -----------------------------------------------------------------


def _render(console: Console, outcome: Outcome, chain_ok: bool) -> None:
    console.print(summary_table(outcome, chain_ok))
    picks = interesting_sets(outcome.view)
    now = outcome.last_end or outcome.scenario.start
    console.print(history_table(outcome.view, picks, now))
    for line in history_errors(outcome.view, picks, now):
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def summary_table(outcome: Outcome, chain_ok: bool) -> Table:
    """What the rollout did, in numbers folded from the log."""
    table = Table(title="What happened (folded from the event log)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    upgrades = outcome.upgrades
    not_upgraded = outcome.scale_sets - sum(upgrades.values())
    rows = [
        ("scale sets upgraded (Completed)", f"{upgrades['Completed']:,}"),
        ("scale sets Faulted", f"{upgrades['Faulted']:,}"),
        *((f"  {code}", f"{n:,}") for code, n in sorted(outcome.faults.items())),
        ("scale sets Cancelled", f"{upgrades['Cancelled']:,}"),
        ("scale sets not upgraded (manual mode)", f"{not_upgraded:,}"),
        ("instances upgraded", f"{outcome.upgraded:,}"),
        ("instances failed", f"{outcome.failed:,}"),
        ("  of which rolled back", f"{outcome.rolled_back:,}"),
        ("rollout duration (engine time)", duration(outcome.duration_s)),
        ("peak instances not serving", f"{outcome.peak_unhealthy_percent:.1f} %"),
        ("events in the log", f"{outcome.events:,}"),
        ("hash chain", "intact" if chain_ok else "BROKEN"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def interesting_sets(view: FleetView) -> dict[str, str]:
    """One completed, one faulted and one cancelled scale set (by their latest upgrade).

    Completed and faulted ones with rolled-back instances are preferred: they show the
    health gate at work.
    """
    latest = {
        key: view.upgrades[ids[-1]]
        for key, ids in sorted(view.scale_sets.items())
        if ids and ids[-1] in view.upgrades
    }
    picks: dict[str, str] = {}
    for title, code in (
        ("completed", "Completed"),
        ("faulted", "Faulted"),
        ("cancelled", "Cancelled"),
    ):
        matching = [k for k, u in latest.items() if u.code == code]
        preferred = [k for k in matching if latest[k].rolled_back > 0]
        if preferred or matching:
            picks[title if preferred or code != "Faulted" else "faulted"] = (preferred or matching)[
                0
            ]
    return picks


def history_table(view: FleetView, picks: dict[str, str], now: datetime) -> Table:
    """The osUpgradeHistory of a few scale sets (``osupgrade history`` shows it in full)."""
    table = Table(title="osUpgradeHistory of a few scale sets (newest first)")
    for column in ("scale set", "code", "startedBy", "start", "end", "ok/failed/left"):
        table.add_column(column)
    table.add_column("rolled back", justify="right")
    for key in picks.values():
        for item in view.history(key, now):
            props = item["properties"]
            running, progress = props["runningStatus"], props["progress"]
            left = progress["pendingInstanceCount"] + progress["inProgressInstanceCount"]
            counts = (
                f"{progress['successfulInstanceCount']}/{progress['failedInstanceCount']}/{left}"
            )
            table.add_row(
                key.rsplit("/", 1)[-1], running["code"], props["startedBy"],
                _clock(running["startTime"]), _clock(running["endTime"]), counts,
                str(props["rollbackInfo"]["successfullyRolledbackInstanceCount"]),
            )  # fmt: skip
    return table


def history_errors(view: FleetView, picks: dict[str, str], now: datetime) -> list[str]:
    """The ``error`` of each shown upgrade that has one: code and message."""
    lines = []
    for key in picks.values():
        for item in view.history(key, now):
            error = item["properties"].get("error")
            if error:
                lines.append(f"{key.rsplit('/', 1)[-1]}: {error['code']}: {error['message']}")
    return lines


async def fabric_batches(store: SQLiteEventStore, view: FleetView) -> list[str]:
    """Why each batch of the Service Fabric set's upgrade was chosen (its update domains)."""
    ids = view.scale_sets.get(f"{SUBSCRIPTION}/{RESOURCE_GROUP}/fabric", [])
    if not ids:
        return []
    events = await store.read_stream(f"upgrade-{ids[-1]}")
    return [e.data["reason"] for e in events if e.type == "upgrade.batch_started"]


async def _tamper_demo(console: Console, path: Path) -> Path:
    """Copy the log, change one event as an attacker editing the file would, and verify."""
    copy = path.parent / TAMPERED_FILE
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    with conn:
        middle = conn.execute("SELECT max(position) / 2 FROM events").fetchone()[0]
        conn.execute("UPDATE events SET data = ? WHERE position = ?", (b'{"edited":true}', middle))
    conn.close()
    async with SQLiteEventStore(copy) as store:
        report = await store.verify()
    console.print(
        f"Tamper check: {copy.name} (event {middle} edited) fails verification at "
        f"position [bold red]{report.first_bad_position}[/].",
        highlight=False,
        soft_wrap=True,
    )
    return copy


def _next_steps(console: Console, path: Path, tampered: Path, outcome: Outcome) -> None:
    """Commands to explore the log, about the most instructive scale set the run produced."""
    picks = interesting_sets(outcome.view)
    key = picks.get("faulted") or next(iter(picks.values()), None) or min(outcome.view.scale_sets)
    ids = outcome.view.scale_sets.get(key, [])
    upgrade = outcome.view.upgrades.get(ids[-1]) if ids else None
    start = upgrade.start_time if upgrade and upgrade.start_time else outcome.scenario.start
    as_of = (start + timedelta(minutes=3)).isoformat()
    stream = f"upgrade-{upgrade.upgrade_id}" if upgrade else f"vmss-{key}"
    console.print("\nNext, try (on the log the demo left behind):")
    for line in (
        f"osupgrade audit verify --db {path}",
        f"osupgrade audit verify --db {tampered}",
        f"osupgrade status --db {path} --scale-set {key} --as-of {as_of}",
        f"osupgrade history --db {path} --scale-set {key}",
        f"osupgrade events --db {path} --stream {stream}",
    ):
        console.print(f"  .venv/bin/{line}", soft_wrap=True, highlight=False)


def _clock(stamp: str | None) -> str:
    return datetime.fromisoformat(stamp).strftime("%H:%M:%S") if stamp else "-"

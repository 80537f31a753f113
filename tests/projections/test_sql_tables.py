"""The read model as typed SQL tables, on SQLite and PostgreSQL.

The tables must say exactly what a fold of the log says (after incremental commits, a
restart and a migration from the older layout), the example queries of docs/SQL.md must
run as written and answer what the fold answers, and ``audit verify`` must notice a row
changed by hand.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.domain.events import SimulationProfile
from engine.runtime.clock import VirtualClock
from events import EventStore
from projections.fleet_view import FleetView, fleet_as_of
from projections.runner import ProjectionRunner
from projections.sql_tables import TABLES, all_records, compare_records
from tests.backends import pg_dsn
from tests.engine.harness import RG, SUB, T0, UBUNTU, spec, world
from tests.projections.places import Place, place

__all__ = ["place"]

ROOT = Path(__file__).resolve().parents[2]
NORTH = "northeurope"
WEST_SETS = (("w0", 10), ("w1", 7), ("w2", 5), ("w3", 12))
NORTH_SETS = (("n0", 8), ("n1", 6))


async def _create_fleet(w: Any) -> None:
    await w.engine.publish_image_version(NORTH, *UBUNTU, "1.0.0", SimulationProfile())
    for name, size in WEST_SETS:
        await w.create(spec(name, size))
    for name, size in NORTH_SETS:
        await w.create(replace(spec(name, size), location=NORTH))
    await w.create(spec("manual", 4, automatic=False))


async def _roll_out(w: Any) -> None:
    """1.1.0 reaches the north first, healthy; then westeurope, where half of the
    instances never get healthy (the simulated fleet's profile is per version)."""
    await w.engine.publish_image_version(
        NORTH, *UBUNTU, "1.1.0", SimulationProfile(boot_seconds=60)
    )
    for name, _ in NORTH_SETS:
        await w.engine.wait_for_upgrade(SUB, RG, name)
    await w.publish("1.1.0", unhealthy_instance_percent=50, boot_seconds=60)
    for name, _ in WEST_SETS:
        await w.engine.wait_for_upgrade(SUB, RG, name)


async def _two_region_log(place: Place, *, stop_runner_between: bool = False) -> int:
    """The fleet's log, with the projection committing in small pages; the log's head.

    With ``stop_runner_between`` the projection stops after the sets are created and a
    new one resumes from the stored rows after the rollout.
    """
    clock = VirtualClock(T0)
    store = place.store(clock)
    async with store, world(store=store, clock=clock) as w:
        runner = ProjectionRunner(store, place.tables(), batch_size=7)
        await runner.start()
        await _create_fleet(w)
        if stop_runner_between:
            await runner.wait_for(await store.head())
            await runner.stop()
        await _roll_out(w)
        if stop_runner_between:
            runner = ProjectionRunner(store, place.tables(), batch_size=7)
            await runner.start()
        head: int = await store.head()
        await runner.wait_for(head)
        await runner.stop()
    return head


async def _fold(place: Place) -> FleetView:
    store: EventStore
    async with place.store() as store:
        return await fleet_as_of(store)


async def _assert_tables_match_the_fold(place: Place, head: int) -> FleetView:
    view = await _fold(place)
    checkpoint, stored = await place.tables().typed_rows()
    assert checkpoint == head
    assert compare_records(all_records(view), stored, sqlite=place.name == "sqlite") is None
    return view


async def test_the_tables_say_what_the_fold_says(place: Place) -> None:
    head = await _two_region_log(place)
    view = await _assert_tables_match_the_fold(place, head)
    _, stored = await place.tables().typed_rows()
    sizes = dict((*WEST_SETS, *NORTH_SETS, ("manual", 4)))
    assert len(stored["fleet_instances"]) == sum(sizes.values())
    assert len(stored["fleet_scale_sets"]) == len(sizes)
    assert len(stored["fleet_upgrades"]) == len(view.upgrades) == len(WEST_SETS) + len(NORTH_SETS)
    locations = Counter(row[4] for row in stored["fleet_scale_sets"])
    assert locations == {"westeurope": len(WEST_SETS) + 1, NORTH: len(NORTH_SETS)}
    statuses = {row[3] for row in stored["fleet_upgrades"]}
    assert "Completed" in statuses and "Faulted" in statuses  # a rollout worth querying
    versions = {(row[0], row[1], row[2]) for row in stored["fleet_image_versions"]}
    assert ("Canonical/UbuntuServer/18.04-LTS", "1.1.0", NORTH) in versions


async def test_a_resumed_projection_writes_the_same_tables(place: Place) -> None:
    head = await _two_region_log(place, stop_runner_between=True)
    await _assert_tables_match_the_fold(place, head)


async def test_a_projection_of_the_older_layout_is_folded_again(place: Place) -> None:
    head = await _two_region_log(place)
    before = await place.tables().rows()
    await _make_it_the_older_layout(place)
    store: EventStore
    async with place.store() as store:
        runner = ProjectionRunner(store, place.tables(), batch_size=50)
        await runner.start()
        assert runner.checkpoint == 0  # cleared: the log is folded from the start
        await runner.wait_for(head)
        await runner.stop()
    assert await place.tables().rows() == before
    await _assert_tables_match_the_fold(place, head)


async def _make_it_the_older_layout(place: Place) -> None:
    """What an osupgrade before the typed tables left: no layout row, no typed tables."""
    statements = ["DELETE FROM projection_checkpoints WHERE name = 'fleet-schema'"]
    statements += [f"DROP TABLE {table.name}" for table in TABLES]
    await _execute(place, statements)


async def _execute(place: Place, statements: list[str]) -> None:
    if place.name == "sqlite":
        with sqlite3.connect(place.tmp / "log.sqlite") as conn:
            for statement in statements:
                conn.execute(statement)
        return
    conn = await asyncpg.connect(pg_dsn())
    try:
        await conn.execute(f'SET search_path TO "{place.schema}"')
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _query(place: Place, sql: str) -> list[tuple[Any, ...]]:
    if place.name == "sqlite":
        with sqlite3.connect(place.tmp / "log.sqlite") as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    conn = await asyncpg.connect(pg_dsn())
    try:
        await conn.execute(f'SET search_path TO "{place.schema}"')
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def doc_queries(dialect: str) -> dict[str, str]:
    """docs/SQL.md's example queries for ``dialect``, by name."""
    text = (ROOT / "docs" / "SQL.md").read_text()
    found = re.findall(
        r"<!-- query: ([\w-]+)(?: dialect: (\w+))? -->\n```sql\n(.*?)```", text, re.S
    )
    return {name: sql for name, only, sql in found if only in ("", dialect)}


def _expected_answers(view: FleetView) -> dict[str, list[tuple[Any, ...]]]:
    """What each example query must answer, computed from the fold in Python."""
    upgrades = list(view.upgrades.values())
    by_name = {view.models[v.scale_set].name: v for v in upgrades}
    faulted = [
        (name, view.models[v.scale_set].location, v.error and v.error["code"],
         v.error and v.error["message"], v.progress["failedInstanceCount"], len(v.instances))
        for name, v in sorted(by_name.items())
        if v.code == "Faulted" and v.target.get("version") == "1.1.0"
    ]  # fmt: skip
    groups: dict[tuple[Any, str], list[Any]] = {}
    for v in upgrades:
        groups.setdefault((v.target.get("version"), v.code), []).append(v)
    by_status = [
        (*group, len(views), sum(v.progress["successfulInstanceCount"] for v in views),
         sum(v.rolled_back for v in views))
        for group, views in sorted(groups.items())
    ]  # fmt: skip
    versions = Counter(
        (view.models[key].location, instance.version)
        for key, instances in view.instances.items()
        for instance in instances.values()
    )
    return {
        "faulted": faulted,
        "by-status": by_status,
        "versions-per-region": [(*k, n) for k, n in sorted(versions.items())],
        "time-to-95": _time_to_95(view),
        "unhealthy-after": _unhealthy_after(view),
    }


def _time_to_95(view: FleetView) -> list[tuple[Any, ...]]:
    answers = []
    for location in sorted({m.location for m in view.models.values()}):
        total = sum(
            len(view.instances[k]) for k, m in view.models.items() if m.location == location
        )
        ended = sorted(
            (v for v in view.upgrades.values()
             if v.location == location and v.end_time is not None
             and v.target.get("version") == "1.1.0"),
            key=lambda v: (v.end_time, v.upgrade_id),
        )  # fmt: skip
        so_far = 0
        for v in ended:
            so_far += v.progress["successfulInstanceCount"]
            if so_far >= 0.95 * total:
                assert v.end_time is not None
                published = next(
                    t for (_, version, where), t in view.image_versions.items()
                    if version == "1.1.0" and where == location
                )  # fmt: skip
                hours = round((v.end_time - published).total_seconds() / 3600, 2)
                answers.append((location, v.end_time, hours))
                break
    return answers


def _unhealthy_after(view: FleetView) -> list[tuple[Any, ...]]:
    rows = []
    for key, ids in view.scale_sets.items():
        latest = view.upgrades[ids[-1]] if ids else None
        if latest is None or latest.end_time is None:
            continue
        unhealthy = sum(i.health == "Unhealthy" for i in view.instances[key].values())
        if unhealthy:
            rows.append((view.models[key].name, latest.code, unhealthy))
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def _normalised(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Database values as Python compares them: times as datetimes, numbers as floats."""
    return [tuple(_value(v) for v in row) for row in rows]


def _value(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT.*[+]00:00", value):
        return datetime.fromisoformat(value)
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return float(value)
    return value


async def test_the_example_queries_answer_what_the_fold_says(place: Place) -> None:
    await _two_region_log(place)
    view = await _fold(place)
    expected = _expected_answers(view)
    queries = doc_queries(place.name)
    assert set(queries) == set(expected)
    for name, sql in queries.items():
        answer = _normalised(await _query(place, sql))
        assert answer == _normalised(expected[name]), name
    assert expected["faulted"] and expected["unhealthy-after"]
    assert [row[0] for row in expected["time-to-95"]] == [NORTH]  # the healthy region only


def _audit(log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "audit", "verify", "--db", str(log)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "UPDATE fleet_upgrades SET status = 'Completed' WHERE status = 'Faulted'",
            r"SQL TABLES MISMATCH .*fleet_upgrades row \(upgrade_id=\w+\) differs from the log",
        ),
        (
            "DELETE FROM fleet_instances WHERE instance_id = '3'",
            r"fleet_instances row \(scale_set=sub-1/rg-1/\w+, instance_id=3\) is missing",
        ),
        (
            "INSERT INTO fleet_image_versions VALUES ('x/y/z', '9.9.9', 'mars', '2026-01-01')",
            r"fleet_image_versions row \(image=x/y/z, version=9.9.9, location=mars\) is stored",
        ),
    ],
)
async def test_audit_verify_notices_a_row_changed_by_hand(
    tmp_path: Path, edit: str, message: str
) -> None:
    here = Place("sqlite", tmp_path)
    await _two_region_log(here)
    assert _audit(tmp_path / "log.sqlite").returncode == 0
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        assert conn.execute(edit).rowcount >= 1
    result = _audit(tmp_path / "log.sqlite")
    assert result.returncode == 1, result.stdout
    assert re.search(message, result.stdout), result.stdout

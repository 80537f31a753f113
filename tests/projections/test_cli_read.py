"""``audit verify``, ``events``, ``status`` and ``history`` on a real rollout's log."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime.clock import VirtualClock
from events import SQLiteEventStore
from projections.runner import ProjectionRunner
from tests.engine.harness import RG, SUB, T0, spec, world

ROOT = Path(__file__).resolve().parents[2]
KEY = f"{SUB}/{RG}/web"


def osupgrade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rollout_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("log") / "log.sqlite"

    async def make() -> None:
        clock = VirtualClock(T0)
        store = SQLiteEventStore(db, clock=clock)
        async with store, world(store=store, clock=clock) as w:
            runner = ProjectionRunner(store, db)
            await runner.start()
            await w.create(spec("web", 10))
            await w.publish("1.1.0", unhealthy_instance_percent=30, boot_seconds=60)
            await w.engine.wait_for_upgrade(SUB, RG, "web")
            await runner.wait_for(await store.head())
            await runner.stop()

    asyncio.run(make())
    return db


def copy(db: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.sqlite"
    source = sqlite3.connect(db)
    dest = sqlite3.connect(target)
    source.backup(dest)
    source.close()
    dest.close()
    return target


def test_audit_verify_passes_on_an_untouched_log(rollout_log: Path) -> None:
    result = osupgrade("audit", "verify", "--db", str(rollout_log))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hash chain: ok" in result.stdout
    assert "projections: ok" in result.stdout


@pytest.mark.parametrize(
    ("statements", "position"),
    [
        (["UPDATE events SET data = CAST('{\"x\":1}' AS BLOB) WHERE position = 9"], 9),
        (["DELETE FROM events WHERE position = 12"], 12),
        (
            [
                "UPDATE events SET position = -1 WHERE position = 20",
                "UPDATE events SET position = 20 WHERE position = 15",
                "UPDATE events SET position = 15 WHERE position = -1",
            ],
            15,
        ),
    ],
    ids=["edit", "delete", "reorder"],
)
def test_audit_verify_names_the_first_tampered_position(
    rollout_log: Path, tmp_path: Path, statements: list[str], position: int
) -> None:
    db = copy(rollout_log, tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    result = osupgrade("audit", "verify", "--db", str(db))
    assert result.returncode == 1
    assert f"first bad position {position}" in result.stdout


def test_audit_verify_finds_a_projection_that_does_not_match_the_log(
    rollout_log: Path, tmp_path: Path
) -> None:
    db = copy(rollout_log, tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE projection_scale_sets SET instances = CAST('{}' AS BLOB)")
    conn.close()
    result = osupgrade("audit", "verify", "--db", str(db))
    assert result.returncode == 1
    assert "PROJECTION MISMATCH" in result.stdout


def test_events_timeline_and_json(rollout_log: Path) -> None:
    text = osupgrade("events", "--db", str(rollout_log))
    assert text.returncode == 0
    assert "upgrade.batch_started" in text.stdout
    lines = osupgrade("events", "--db", str(rollout_log), "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["position"] for r in records] == list(range(1, len(records) + 1))
    one = osupgrade("events", "--db", str(rollout_log), "--stream", f"vmss-{KEY}", "--json")
    assert {json.loads(line)["stream"] for line in one.stdout.splitlines()} == {f"vmss-{KEY}"}
    late = osupgrade("events", "--db", str(rollout_log), "--json", "--since", "2099-01-01T00:00:00")
    assert late.stdout == ""
    bad = osupgrade("events", "--db", str(rollout_log), "--since", "yesterday")
    assert bad.returncode == 2
    assert "RFC 3339" in bad.stderr


def test_status_and_history_now_and_as_of(rollout_log: Path) -> None:
    now = osupgrade("status", "--db", str(rollout_log), "--scale-set", KEY)
    assert now.returncode == 0
    latest = json.loads(now.stdout)
    assert latest["properties"]["runningStatus"]["code"] in {"Completed", "Faulted"}
    early = osupgrade("status", "--db", str(rollout_log), "--scale-set", KEY, "--as-of", "3")
    assert early.returncode == 1  # no upgrade yet at position 3
    history = json.loads(osupgrade("history", "--db", str(rollout_log), "--scale-set", KEY).stdout)
    assert len(history["value"]) == 1
    assert "endTime" in history["value"][0]["properties"]["runningStatus"]


def test_instances_now_and_before_the_upgrade(rollout_log: Path) -> None:
    now = json.loads(osupgrade("instances", "--db", str(rollout_log), "--scale-set", KEY).stdout)
    assert [i["instanceId"] for i in now["value"]] == [str(i) for i in range(10)]
    assert {i["exactVersion"] for i in now["value"]} <= {"1.0.0", "1.1.0"}
    assert "1.1.0" in {i["exactVersion"] for i in now["value"]}
    before = osupgrade("instances", "--db", str(rollout_log), "--scale-set", KEY, "--as-of", "3")
    assert {i["exactVersion"] for i in json.loads(before.stdout)["value"]} == {"1.0.0"}
    missing = osupgrade("instances", "--db", str(rollout_log), "--scale-set", "a/b/c")
    assert missing.returncode == 3


def test_read_commands_fail_clearly_on_bad_files(tmp_path: Path) -> None:
    missing = osupgrade("audit", "verify", "--db", str(tmp_path / "nope.sqlite"))
    assert (missing.returncode, "does not exist" in missing.stderr) == (2, True)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    for command in (["audit", "verify"], ["events"], ["status", "--scale-set", KEY]):
        result = osupgrade(*command, "--db", str(text))
        assert result.returncode == 2, command
        assert "not an SQLite database" in result.stderr

"""The read commands on any log: PostgreSQL as well as SQLite, never creating one, one
answer for a missing scale set, and ``--as-of``/``--since``/``--until`` that refuse
moments the log does not have instead of answering something else."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from engine.runtime.clock import VirtualClock
from events import PostgresEventStore
from projections.postgres import PostgresTables
from projections.runner import ProjectionRunner
from tests.backends import pg_dsn
from tests.engine.harness import RG, SUB, T0, spec, world
from tests.pg_servers import drop
from tests.projections.test_cli_read import KEY, osupgrade, rollout_log

__all__ = ["rollout_log"]  # the module-scoped fixture, shared with test_cli_read

READERS = [
    ["verify"],
    ["audit", "verify"],
    ["audit", "fences"],
    ["events"],
    ["status", "--scale-set", KEY],
    ["history", "--scale-set", KEY],
    ["instances", "--scale-set", KEY],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_read_commands_never_turn_an_empty_file_into_a_log(
    tmp_path: Path, command: list[str]
) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    result = osupgrade(*command, "--db", str(empty))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "empty file, not an event log" in result.stderr + result.stdout
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    result = osupgrade("status", "--db", str(tmp_path), "--scale-set", KEY)
    assert result.returncode == 2
    assert "is a directory, not an event log" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--scale-set", "a/b/nope"],
        ["history", "--scale-set", "a/b/nope"],
        ["instances", "--scale-set", "a/b/nope"],
    ],
    ids=lambda c: c[0],
)
def test_one_answer_for_a_scale_set_the_log_does_not_have(
    rollout_log: Path, command: list[str]
) -> None:
    result = osupgrade(*command, "--db", str(rollout_log))
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: no scale set a/b/nope in {rollout_log}")


def test_events_of_a_stream_the_log_does_not_have(rollout_log: Path) -> None:
    result = osupgrade("events", "--db", str(rollout_log), "--stream", "vmss-a/b/nope")
    assert result.returncode == 3
    assert "no stream 'vmss-a/b/nope'" in result.stderr


def test_a_unix_timestamp_is_not_read_as_a_position(rollout_log: Path) -> None:
    result = osupgrade(
        "status", "--db", str(rollout_log), "--scale-set", KEY, "--as-of", "1764590000"
    )
    assert result.returncode == 2
    assert "the log ends at position" in result.stderr
    assert "RFC 3339" in result.stderr


def test_a_time_in_the_future_is_refused(rollout_log: Path) -> None:
    result = osupgrade(
        "history", "--db", str(rollout_log), "--scale-set", KEY, "--as-of", "2999-01-01T00:00:00Z"
    )
    assert result.returncode == 2
    assert "in the future" in result.stderr


def test_since_after_until_is_refused(rollout_log: Path) -> None:
    result = osupgrade(
        "events", "--db", str(rollout_log),
        "--since", "2026-03-02T00:00:00Z", "--until", "2026-03-01T00:00:00Z",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--since is after --until" in result.stderr


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_log() -> Iterator[tuple[str, str]]:
    """A rolled-out fleet in a PostgreSQL schema, with its projection beside it."""
    dsn, schema = pg_dsn(), f"t_cli_{uuid.uuid4().hex[:12]}"

    async def make() -> None:
        clock = VirtualClock(T0)
        store = PostgresEventStore(dsn, schema=schema, clock=clock)
        async with store, world(store=store, clock=clock) as w:
            runner = ProjectionRunner(store, PostgresTables(dsn, schema=schema))
            await runner.start()
            await w.create(spec("web", 10))
            await w.publish("1.1.0", unhealthy_instance_percent=30, boot_seconds=60)
            await w.engine.wait_for_upgrade(SUB, RG, "web")
            await runner.wait_for(await store.head())
            await runner.stop()

    asyncio.run(make())
    yield dsn, schema
    asyncio.run(drop(dsn, schema))


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_every_read_command_takes_a_postgresql_dsn(
    pg_log: tuple[str, str], command: list[str]
) -> None:
    dsn, schema = pg_log
    result = osupgrade(*command, "--db", dsn, "--pg-schema", schema)
    assert result.returncode == 0, result.stdout + result.stderr
    if command[0] == "status":
        assert json.loads(result.stdout)["properties"]["runningStatus"]["code"] in {
            "Completed",
            "Faulted",
        }
    if command == ["audit", "verify"]:
        assert "projections: ok" in result.stdout


def test_a_dsn_without_a_log_is_named_and_no_schema_is_created(pg_log: tuple[str, str]) -> None:
    dsn, _ = pg_log
    schema = f"t_none_{uuid.uuid4().hex[:12]}"
    result = osupgrade("verify", "--db", dsn, "--pg-schema", schema)
    assert result.returncode == 2
    assert f"there is no osupgrade event log in {dsn}" in result.stderr
    assert "postgresql:/1" not in result.stderr  # the DSN is not mangled into a path

    async def exists() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema
            )
        finally:
            await conn.close()
        return bool(found)

    assert not asyncio.run(exists())

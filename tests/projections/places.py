"""Where a projection test's log and tables live: a fresh SQLite file or PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.clock import VirtualClock
from events import PostgresEventStore, SQLiteEventStore
from projections.postgres import PostgresTables
from projections.runner import ProjectionTables, SQLiteTables
from tests.backends import pg_drop_schema, pg_dsn


@dataclass
class Place:
    """Where one test's log and projection tables live."""

    name: str
    tmp: Path
    schema: str = ""

    def store(self, clock: VirtualClock | None = None) -> Any:
        if self.name == "sqlite":
            return SQLiteEventStore(self.tmp / "log.sqlite", clock=clock)
        return PostgresEventStore(pg_dsn(), schema=self.schema, clock=clock)

    def tables(self) -> ProjectionTables:
        if self.name == "sqlite":
            return SQLiteTables(self.tmp / "log.sqlite")
        return PostgresTables(pg_dsn(), schema=self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    """A fresh SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        yield Place("sqlite", tmp_path)
        return
    pg_dsn()  # skip (or fail on CI) without a server
    here = Place("postgres", tmp_path, f"t_{uuid.uuid4().hex[:20]}")
    yield here
    await pg_drop_schema(PostgresEventStore(pg_dsn(), schema=here.schema))

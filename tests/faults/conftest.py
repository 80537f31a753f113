"""Fixtures for fault tests: a PostgreSQL server of the test's own, which it may restart.

The suite's shared server (``OSUPGRADE_TEST_PG_DSN``) is not restarted: other tests use
it. A test that restarts the database starts its own throwaway server instead
(``tools/pg_throwaway.sh``), on a free port of 127.0.0.1, and removes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "pg_throwaway.sh"


@dataclass
class ThrowawayPostgres:
    """A running PostgreSQL of one test: its DSN, and a real restart."""

    dsn: str
    directory: Path

    def restart(self, mode: Literal["fast", "immediate"]) -> None:
        """``pg_ctl restart -m MODE``: every connection is cut; the port stays the same."""
        subprocess.run(["bash", str(SCRIPT), "restart", str(self.directory), mode], check=True)


def _postgres_available() -> bool:
    return shutil.which("pg_ctl") is not None or any(Path("/usr/lib/postgresql").glob("*/bin"))


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A fresh PostgreSQL server for this test alone (skipped without PostgreSQL, except in CI)."""
    if not _postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries are missing (fault tests need them in CI)")
        pytest.skip("PostgreSQL binaries are not installed")
    directory = Path(tempfile.mkdtemp(prefix="osupgrade-fault-pg."))
    directory.chmod(0o755)
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", str(directory)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        yield ThrowawayPostgres(started.stdout.strip(), directory)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False)

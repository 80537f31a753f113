"""The documentation's embedding example runs as written, and with every store in it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.backends import pg_dsn

ROOT = Path(__file__).resolve().parents[2]
AS_WRITTEN = "InMemoryEventStore(clock=clock)"


def _example() -> str:
    text = (ROOT / "docs" / "ENGINE.md").read_text()
    return text.split("```python", 1)[1].split("```", 1)[0]


def _run(code: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _with_store(code: str, store: str, import_line: str) -> str:
    assert AS_WRITTEN in code
    return code.replace(AS_WRITTEN, store).replace(
        "from events import InMemoryEventStore",
        f"from events import InMemoryEventStore\n{import_line}",
    )


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"])
def test_the_embedding_example_in_docs_runs_on_every_store(store: str, tmp_path: Path) -> None:
    code = _example()
    if store == "sqlite":  # the hint in the example's comment, as a user would apply it
        code = _with_store(
            code,
            'SQLiteEventStore("events.sqlite", clock=clock)',
            "from events import SQLiteEventStore",
        )
    elif store == "postgres":
        schema = f"t_doc_{uuid.uuid4().hex[:12]}"
        code = _with_store(
            code,
            f"PostgresEventStore({pg_dsn()!r}, schema={schema!r}, clock=clock)",
            "from events import PostgresEventStore",
        )
    printed = [line for line in _run(code, tmp_path).splitlines() if not line.startswith("20")]
    # (structlog's own default prints the stores' log lines, which start with the date)
    status, started, _ended = printed[-1].split(" ", 2)
    assert status in {"Completed", "Faulted"}
    assert started.startswith("2026-01-01")
    if store == "sqlite":
        assert (tmp_path / "events.sqlite").stat().st_size > 0

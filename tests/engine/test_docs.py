"""The documentation's examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_embedding_example_in_docs_runs() -> None:
    text = (ROOT / "docs" / "ENGINE.md").read_text()
    code = text.split("```python", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, started, _ended = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert status in {"Completed", "Faulted"}
    assert started.startswith("2026-01-01")

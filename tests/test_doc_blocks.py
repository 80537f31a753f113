"""Every code block of README.md and docs/ stays true to the code.

Python blocks run (a DSN in them is replaced by the test server's). Shell lines that run
``osupgrade`` are parsed by the real command-line parser, so a renamed command or flag
fails here; ``tools/*.py`` lines must only use flags the tool's ``--help`` lists.
Placeholders (``LOG``, ``[--as-of POSITION|TIME]``) are filled in or dropped first.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.main import build_parser
from tests.backends import pg_dsn

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Blocks run by tests of their own (against a live server or with their output checked).
RUN_ELSEWHERE = {"docs/API.md", "docs/ENGINE.md"}


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL):
            found.append((str(path.relative_to(ROOT)), block))
    return found


def _command_lines(prefix: str) -> list[tuple[str, str]]:
    lines = []
    for where, block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                command = part.strip().rstrip("&").strip()
                if command.startswith(prefix):
                    lines.append((where, command))
    return lines


def _fill(line: str) -> list[str]:
    """A synopsis line as a real command: optional parts dropped, placeholders filled."""
    line = re.sub(r"\[[^\]]*\]", "", line)
    line = line.split("#", 1)[0].split(" 2>", 1)[0]
    words = shlex.split(line.replace('"$dsn"', EXAMPLE_DSN))
    return ["x.sqlite" if w in {"LOG", "PATH"} else w for w in words]


def _ids(items: list[tuple[str, str]]) -> list[str]:
    return [f"{where}:{line[:60]}" for where, line in items]


OSUPGRADE = _command_lines(".venv/bin/osupgrade")
TOOLS = _command_lines(".venv/bin/python tools/")


def test_the_docs_have_blocks_to_check() -> None:
    assert len(OSUPGRADE) >= 10
    assert len(TOOLS) >= 5


@pytest.mark.parametrize(("where", "line"), OSUPGRADE, ids=_ids(OSUPGRADE))
def test_every_osupgrade_command_in_the_docs_parses(where: str, line: str) -> None:
    words = _fill(line)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")


@pytest.mark.parametrize(("where", "line"), TOOLS, ids=_ids(TOOLS))
def test_every_tool_command_in_the_docs_uses_flags_the_tool_has(where: str, line: str) -> None:
    words = _fill(line)
    tool = ROOT / words[1]
    assert tool.is_file(), f"{where}: {words[1]} does not exist"
    result = subprocess.run(
        [sys.executable, str(tool), "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for flag in (w.split("=", 1)[0] for w in words[2:] if w.startswith("--")):
        assert flag in result.stdout, f"{where}: {words[1]} has no {flag}"


PYTHON = [(w, b) for w, b in _blocks("python") if w not in RUN_ELSEWHERE and "..." not in b]


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_every_python_block_in_the_docs_runs(where: str, code: str, tmp_path: Path) -> None:
    if EXAMPLE_DSN in code:
        code = code.replace(EXAMPLE_DSN, pg_dsn())
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{where}:\n{result.stderr}"
    assert result.stdout.strip(), f"{where}: printed nothing"

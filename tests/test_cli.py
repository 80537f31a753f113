"""The command line, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def osupgrade(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_runs_end_to_end_and_leaves_a_verifiable_log(tmp_path: Path) -> None:
    result = osupgrade("demo", "--dir", str(tmp_path), "--scale-sets", "12", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "hash chain" in result.stdout
    assert "intact" in result.stdout
    match = re.search(r"verify found position (\d+)", result.stdout)
    assert match, result.stdout
    log = tmp_path / "osupgrade-demo.sqlite"
    ok = osupgrade("verify", "--db", str(log))
    assert ok.returncode == 0
    assert re.match(r"ok: \d+ events, hash chain intact", ok.stdout)
    bad = osupgrade("verify", "--db", str(tmp_path / "osupgrade-demo-tampered.sqlite"))
    assert bad.returncode == 1
    assert f"first bad position {match.group(1)}" in bad.stdout


def test_the_same_seed_writes_the_same_events(tmp_path: Path) -> None:
    def contents(directory: Path) -> list[tuple[object, ...]]:
        assert osupgrade("demo", "--dir", str(directory), "--scale-sets", "5").returncode == 0
        conn = sqlite3.connect(directory / "osupgrade-demo.sqlite")
        rows = conn.execute(
            "SELECT s.name, e.stream_version, e.type, e.data FROM events e "
            "JOIN streams s USING (stream_key) ORDER BY s.name, e.stream_version"
        ).fetchall()
        conn.close()
        return rows

    assert contents(tmp_path / "a") == contents(tmp_path / "b")


def test_verify_fails_clearly_on_missing_and_foreign_files(tmp_path: Path) -> None:
    missing = osupgrade("verify", "--db", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 1000)
    foreign = osupgrade("verify", "--db", str(text))
    assert foreign.returncode == 2
    assert "not an SQLite database" in foreign.stderr
    assert text.read_text() == "hello\n" * 1000


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    assert osupgrade("demo", "--scale-sets", "0", "--dir", str(tmp_path)).returncode == 2
    assert osupgrade("demo", "--scale-sets", "many").returncode == 2
    assert osupgrade("no-such-command").returncode == 2


def test_the_readme_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Using the event log from Python", 1)[1]
    code = example.split("```python", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 scaleset.created {'capacity': 10}" in result.stdout


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    assert osupgrade("demo", "--dir", str(tmp_path), "--scale-sets", "20").returncode == 0
    log = str(tmp_path / "osupgrade-demo.sqlite")  # ~2,000 lines: more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "events", "--db", log],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in stderr

"""The command line, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.cli.demo import demo_scenario
from engine.cli.main import DEMO_SCALE_SETS

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


def _deterministic(stdout: str, directory: Path) -> str:
    """The demo's output without the wall-time line and with the directory made neutral."""
    lines = [line for line in stdout.splitlines() if not line.startswith("wall time:")]
    return "\n".join(lines).replace(str(directory), "DIR")


def test_demo_runs_a_rollout_and_leaves_a_log_to_explore(tmp_path: Path) -> None:
    result = osupgrade("demo", "--dir", str(tmp_path), "--scale-sets", "12", "--seed", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "12 scale sets" in out
    for expected in ("scale sets upgraded (Completed)", "instances upgraded", "intact"):
        assert expected in out
    # the history shows one completed, one faulted and the cancelled manual set
    assert re.search(r"batch-001 +│ Cancelled +│ User", out), out
    assert re.search(r"│ Completed +│ Platform", out), out
    assert re.search(r"│ Faulted +│ Platform", out), out
    assert "fabric (Service Fabric): 5 batches, one per update domain (0, 1, 2, 3, 4)" in out
    assert re.search(r"wall time: \d+\.\d s", out)
    # every suggested command works on the log left behind
    suggested = re.findall(r"^  \.venv/bin/osupgrade (.+)$", out, flags=re.MULTILINE)
    assert len(suggested) == 5, out
    for line in suggested:
        run = osupgrade(*line.split())
        tampered = "tampered" in line
        assert run.returncode == (1 if tampered else 0), (line, run.stdout, run.stderr)
        assert run.stdout.strip()
    audit = osupgrade("audit", "verify", "--db", str(tmp_path / "osupgrade-demo.sqlite"))
    assert "projections: ok" in audit.stdout  # the projection runner followed the rollout
    match = re.search(r"fails verification at position (\d+)", out)
    assert match, out
    bad = osupgrade("verify", "--db", str(tmp_path / "osupgrade-demo-tampered.sqlite"))
    assert f"first bad position {match.group(1)}" in bad.stdout


def test_the_same_seed_gives_the_same_demo(tmp_path: Path) -> None:
    def run(directory: Path, seed: str) -> tuple[str, list[tuple[object, ...]]]:
        result = osupgrade("demo", "--dir", str(directory), "--scale-sets", "8", "--seed", seed)
        assert result.returncode == 0, result.stderr
        conn = sqlite3.connect(directory / "osupgrade-demo.sqlite")
        rows = conn.execute(
            "SELECT s.name, e.stream_version, e.type, e.data, e.occurred_us FROM events e "
            "JOIN streams s USING (stream_key) ORDER BY s.name, e.stream_version"
        ).fetchall()
        conn.close()
        return _deterministic(result.stdout, directory), rows

    first, second, other = (
        run(tmp_path / "a", "5"),
        run(tmp_path / "b", "5"),
        run(tmp_path / "c", "6"),
    )
    assert first == second
    assert first[1] != other[1]


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
    refused = osupgrade("demo", "--scale-sets", "0", "--dir", str(tmp_path))
    assert refused.returncode == 2
    assert "--scale-sets must be" in refused.stderr
    assert osupgrade("demo", "--scale-sets", "many").returncode == 2
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    not_a_dir = osupgrade("demo", "--dir", str(a_file), "--scale-sets", "4")
    assert not_a_dir.returncode == 2
    assert "cannot use --dir" in not_a_dir.stderr
    scenario = ROOT / "tools" / "scenarios" / "mixed-fleet.json"
    no_dir = osupgrade("simulate", str(scenario), "--report", str(tmp_path / "no" / "r.html"))
    assert no_dir.returncode == 2
    assert "does not exist" in no_dir.stderr
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
    assert osupgrade("demo", "--dir", str(tmp_path), "--scale-sets", "4").returncode == 0
    log = str(tmp_path / "osupgrade-demo.sqlite")  # ~1,000 lines: more than a pipe holds
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


def test_the_readme_shows_the_default_demo() -> None:
    """Cheap drift check: the fleet in the README's demo output is the default fleet."""
    readme = (ROOT / "README.md").read_text()
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/osupgrade demo\n"
        in (readme)
    )
    specs = demo_scenario(DEMO_SCALE_SETS, 1).specs()
    instances = sum(spec.capacity for spec in specs)
    assert f"osupgrade demo: {len(specs)} scale sets, {instances:,} instances" in readme


def test_the_demo_never_deletes_a_file_that_is_not_its_own_log(tmp_path: Path) -> None:
    mine = tmp_path / "osupgrade-demo.sqlite"
    mine.write_text("the user's notes, not a log\n")
    theirs = tmp_path / "osupgrade-demo-backup.sqlite"  # matched the old cleanup's glob
    theirs.write_text("kept\n")
    result = osupgrade("demo", "--dir", str(tmp_path), "--scale-sets", "4")
    assert result.returncode == 2
    assert "is not an osupgrade event log; the demo will not overwrite it" in result.stderr
    assert mine.read_text() == "the user's notes, not a log\n"
    assert theirs.read_text() == "kept\n"

"""One ``osupgrade serve`` per SQLite log: a second one refuses, clearly, and exits non-zero.

Two servers on one file would each fold only what they wrote themselves and diverge (one
answers 404 for a set the other created, both publish one version). The lock is the
operating system's (``flock`` on a sidecar file), so it dies with its process: after a
SIGKILL a new server starts at once. Read-only commands keep working on a served log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.api.live import API, client, image_path
from tests.api.test_serve import serve

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


def _osupgrade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=DEADLINE_S,
    )  # fmt: skip


def test_a_second_server_on_one_sqlite_log_refuses_and_a_killed_ones_lock_dies_with_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "one.sqlite"
    with serve(db, "--auth-token", "t") as (first, url, _):
        with client(url, {"Authorization": "Bearer t"}) as http:
            assert http.put(image_path("1.0.0"), params={"api-version": API}).status_code == 201
        second = _osupgrade("serve", "--db", str(db), "--port", "0", "--auth-token", "t")
        assert second.returncode != 0
        assert str(db) in second.stderr, second.stderr
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert "osupgrade serving" not in second.stdout
        for read_only in (["audit", "verify"], ["events"], ["verify"]):
            result = _osupgrade(*read_only, "--db", str(db))
            assert result.returncode == 0, (read_only, result.stdout + result.stderr)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=DEADLINE_S)  # reaped: the process and its lock are gone
    with (
        serve(db, "--auth-token", "t") as (_, url, _),  # the lock died with its process
        client(url, {"Authorization": "Bearer t"}) as http,
    ):
        listed = http.get(image_path(), params={"api-version": API})
        assert [v["name"] for v in listed.json()] == ["1.0.0"]

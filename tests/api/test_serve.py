"""``osupgrade serve`` as a real process: generated token, SIGTERM, restart from the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, client, image_path, vmss_path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve(db: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str, str | None]]:
    """Start ``osupgrade serve`` on a free port; yield (process, url, generated token)."""
    command = [sys.executable, "-m", "engine.cli", "serve", "--db", str(db), "--port", "0",
               "--clock", "virtual", *args]  # fmt: skip
    with (db.parent / "serve.log").open("a") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        with process:
            assert process.stdout is not None
            first = process.stdout.readline()  # printed once the socket listens
            assert first.startswith("osupgrade serving "), first
            url = first.split()[2]
            token = None
            if "--auth-token" not in args:
                token = process.stdout.readline().rsplit(" ", 1)[1].strip()
            try:
                yield process, url, token
            finally:
                if process.poll() is None:
                    process.kill()


def test_sigterm_hands_work_back_and_a_restart_finishes_it(tmp_path: Path) -> None:
    db = tmp_path / "serve.sqlite"
    path, _, body = valid_bodies()["put"]
    q = {"api-version": API}
    with serve(db) as (process, url, token):
        assert token
        with client(url, {"Authorization": f"Bearer {token}"}) as http:
            assert http.put(image_path("1.0.0"), params=q).status_code == 201
            assert http.put(path, params=q, json=body).status_code == 201
            publish = {"properties": {"simulation": {"bootSeconds": 60}}}
            assert http.put(image_path("1.1.0"), params=q, json=publish).status_code == 201
            assert http.post(vmss_path("fuzz", "/osRollingUpgrade"), params=q).status_code == 202
            assert http.post("/admin/clock/advance", json={"seconds": 0}).status_code == 200
            running = http.get(vmss_path("fuzz", "/rollingUpgrades/latest"), params=q).json()
            assert running["properties"]["runningStatus"]["code"] == "RollingForward"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    verify = subprocess.run(
        [sys.executable, "-m", "engine.cli", "verify", "--db", str(db)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    with (
        serve(db, "--auth-token", "again") as (_, url, _),
        client(url, {"Authorization": "Bearer again"}) as http,
    ):
        latest = http.get(vmss_path("fuzz", "/rollingUpgrades/latest"), params=q).json()
        assert latest["properties"]["runningStatus"]["code"] == "RollingForward"
        assert http.post("/admin/clock/advance", json={"seconds": 3600}).status_code == 200
        latest = http.get(vmss_path("fuzz", "/rollingUpgrades/latest"), params=q).json()
        assert latest["properties"]["runningStatus"]["code"] == "Completed"
        assert latest["properties"]["progress"]["successfulInstanceCount"] == 3
        assert httpx.get(f"{url}/admin/clock").status_code == 401  # the old token is gone


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    for args in (["--auth-token", ":sub"], ["--speed", "0"], ["--tls-cert", "x.pem"]):
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", "serve", "--db", str(tmp_path / "x"), *args],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 2, args
        assert result.stderr.startswith("error: "), result.stderr


def test_an_unreachable_postgresql_server_is_named_without_its_password() -> None:
    dsn = "postgresql://osupgrade:s3cret@127.0.0.1:1/fleet"  # port 1: nothing listens
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--db", dsn, "--port", "0",
         "--auth-token", "t"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "OSUPGRADE_CLUSTER_SECRET": "c" * 32},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot connect to PostgreSQL at postgresql://osupgrade:***@127.0.0.1:1" in (
        result.stderr
    )
    assert "s3cret" not in result.stderr + result.stdout

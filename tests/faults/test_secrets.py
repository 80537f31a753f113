"""Secrets from files and the environment, never in the process list nor in a log line
(tracebacks included); JSON logs carry tracebacks as structured data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.api.live import client
from tests.pg_servers import CLUSTER_SECRET

ROOT = Path(__file__).resolve().parents[2]
FILE_TOKEN = "file-token-Zq8wX3"
LIMITED_TOKEN = "limited-token-Vb7nP2"
ENV_TOKEN = "env-token-Hk4mR9"
PASSWORD = "pg-pass-Ty6uJ1"
SUB = "00000000-0000-0000-0000-0000000000aa"


@contextmanager
def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``osupgrade serve --log-format json`` with ``env`` added; yields (process, url)."""
    command = [sys.executable, "-m", "engine.cli", "--log-format", "json", "serve",
               "--port", "0", "--clock", "virtual", *args]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OSUPGRADE_")}
    environ.update(env or {})
    with (tmp_path / "serve.log").open("a") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=environ
        )
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("osupgrade serving "), first + _log(tmp_path)
            yield process, first.split()[2]
        finally:
            process.kill()
            process.wait(10)
            assert process.stdout is not None
            process.stdout.close()


def _log(tmp_path: Path) -> str:
    path = tmp_path / "serve.log"
    return path.read_text() if path.exists() else ""


def _process_list() -> str:
    """What any local user sees with ``ps -ef``: every process's full command line."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    assert any("engine.cli" in line for line in lines)
    return "\n".join(lines)


def _status(url: str, token: str, path: str = "/admin/clock") -> int:
    with client(url, {"Authorization": f"Bearer {token}"}) as http:
        return http.get(path).status_code


def test_tokens_from_a_file_work_and_are_not_in_the_process_list(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one token per line\n{FILE_TOKEN}\n\n{LIMITED_TOKEN}:{SUB}\n")
    db = str(tmp_path / "s.sqlite")
    with serve(tmp_path, "--db", db, "--auth-token-file", str(tokens)) as (_, url):
        assert _status(url, FILE_TOKEN) == 200
        assert _status(url, LIMITED_TOKEN) == 403  # limited to SUB: not /admin
        assert _status(url, "not-a-token") == 401
        listing = _process_list()
        assert "--auth-token-file" in listing
        assert FILE_TOKEN not in listing and LIMITED_TOKEN not in listing
    assert FILE_TOKEN not in _log(tmp_path) and LIMITED_TOKEN not in _log(tmp_path)


def test_a_bad_token_file_is_refused_with_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("two words\n")
    for path in (tokens, tmp_path / "missing"):
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "serve", "--db", str(tmp_path / "x.sqlite"),
             "--auth-token-file", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        assert "two words" not in done.stderr  # a malformed line may be a secret


def test_token_from_the_environment_and_flags_take_precedence(tmp_path: Path) -> None:
    db = str(tmp_path / "e.sqlite")
    with serve(tmp_path, "--db", db, env={"OSUPGRADE_AUTH_TOKEN": ENV_TOKEN}) as (_, url):
        assert _status(url, ENV_TOKEN) == 200
        assert ENV_TOKEN not in _process_list()
    env = {"OSUPGRADE_AUTH_TOKEN": ENV_TOKEN, "OSUPGRADE_DB": str(tmp_path / "unused.sqlite")}
    with serve(tmp_path, "--db", db, "--auth-token", "flag-token", env=env) as (_, url):
        assert _status(url, "flag-token") == 200
        assert _status(url, ENV_TOKEN) == 401  # flag > environment
    assert not (tmp_path / "unused.sqlite").exists()
    assert ENV_TOKEN not in _log(tmp_path)


def test_database_dsn_from_the_environment_keeps_the_password_out_of_ps_and_logs(
    tmp_path: Path,
) -> None:
    dsn = os.environ.get("OSUPGRADE_TEST_PG_DSN")
    if not dsn:
        pytest.skip("needs OSUPGRADE_TEST_PG_DSN")
    scheme, rest = dsn.split("://", 1)
    user, host = rest.split("@", 1)
    with_password = f"{scheme}://{user.split(':')[0]}:{PASSWORD}@{host}"  # trust auth: unused
    env = {"OSUPGRADE_DB": with_password, "OSUPGRADE_AUTH_TOKEN": ENV_TOKEN}
    schema = f"secrets_{os.getpid()}"
    with serve(tmp_path, "--pg-schema", schema, env=env) as (_, url):
        assert _status(url, ENV_TOKEN) == 200
        listing = _process_list()
        assert PASSWORD not in listing and ENV_TOKEN not in listing
    logged = _log(tmp_path)
    assert "listening" in logged
    assert PASSWORD not in logged and ENV_TOKEN not in logged


def test_an_unreachable_database_fails_without_showing_its_password(tmp_path: Path) -> None:
    env = {
        "OSUPGRADE_DB": f"postgresql://app:{PASSWORD}@127.0.0.1:1/db",
        "OSUPGRADE_CLUSTER_SECRET": CLUSTER_SECRET,  # a shared log on a real clock needs it
    }
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--log-format", "json", "serve"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "127.0.0.1:1" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


SCRIPT = """
import structlog, sys, threading
from engine.logging import configure_logging
from engine.redaction import register_secret
configure_logging(sys.argv[1])
register_secret(sys.argv[2])
log = structlog.get_logger("probe")

def connect(dsn, token):
    raise ConnectionError(f"cannot reach {dsn} with {token}")

try:
    connect("postgresql://app:" + sys.argv[3] + "@db.example:5432/x", sys.argv[2])
except ConnectionError:
    log.exception("request failed", authorization="Bearer " + sys.argv[2])
log.info("plain", dsn="postgres://u:" + sys.argv[3] + "@h/d", note="Bearer abc.def-ghi")
dsn = "postgresql://app:" + sys.argv[3] + "@db.example:5432/x"
thread = threading.Thread(target=connect, args=(dsn, sys.argv[2]))
thread.start()
thread.join()
connect("postgresql://app:" + sys.argv[3] + "@db.example:5432/x", sys.argv[2])
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_are_redacted_from_log_lines_and_tracebacks(fmt: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt, ENV_TOKEN, PASSWORD],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1  # the last, uncaught exception
    assert "cannot reach" in output and "ConnectionError" in output
    assert ENV_TOKEN not in output and PASSWORD not in output
    assert "abc.def-ghi" not in output  # any bearer token, known or not
    assert "db.example:5432" in output  # the rest of the DSN stays readable


def test_json_logs_carry_the_traceback_as_structured_data() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "json", ENV_TOKEN, PASSWORD],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = next(line for line in lines if line["event"] == "request failed")
    (error,) = failed["exception"]
    assert error["exc_type"] == "ConnectionError"
    assert PASSWORD not in error["exc_value"] and "db.example" in error["exc_value"]
    assert [frame["name"] for frame in error["frames"]][-1] == "connect"
    uncaught = [line for line in lines if line["event"] == "uncaught exception"]
    assert len(uncaught) == 2  # in a thread, then in the main thread
    assert {line["exception"][0]["exc_type"] for line in uncaught} == {"ConnectionError"}

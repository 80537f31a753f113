"""A server refuses to start with a peer URL or cluster secret it could not use safely.

Each case is a real ``osupgrade serve`` that must exit non-zero at once with one line on
stderr and no traceback (a traceback once printed a client's token 44 times). The
processes run side by side: each takes about a second to start Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.pg_servers import CLUSTER_SECRET
from tests.servers import ROOT

BAD_URLS = {
    "http://127.0.0.1:8080/forward": "without a path",
    "http://admin:pw@127.0.0.1:8080": "user name or password",
    "http://[::1": "not a valid URL",
    "ftp://127.0.0.1:21": "http:// or https://",
    "http://127.0.0.1": "must name a port",
    "http://127.0.0.1:8080?x=1": "without a path, query or fragment",
    "http://bad_host:8080": "not a valid host name",
}
UNREACHABLE_PG = "postgresql://osupgrade:s3cret@127.0.0.1:1/fleet"  # nothing listens there


def _refusals(runs: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, str]:
    """Start every ``serve`` at once; each must exit 2 with one line and no traceback."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, env) in runs.items()
    }
    errors = {}
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()  # a server that started anyway is a failure below, not a hang
        assert process.returncode == 2, (name, process.returncode, out, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (name, err)
        assert err.startswith("error: "), (name, err)
        errors[name] = err
    return errors


def test_an_advertise_url_other_than_scheme_host_port_stops_the_server_with_one_line(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "OSUPGRADE_CLUSTER_SECRET": CLUSTER_SECRET}
    db = str(tmp_path / "x.sqlite")
    runs = {url: (["--db", db, "--advertise-url", url], env) for url in BAD_URLS}
    for url, err in _refusals(runs).items():
        assert err.startswith("error: --advertise-url "), err
        assert BAD_URLS[url] in err, (url, err)
    assert not (tmp_path / "x.sqlite").exists()  # refused before anything was opened


def test_a_shared_log_without_a_usable_cluster_secret_is_refused_before_connecting(
    tmp_path: Path,
) -> None:
    plain = {k: v for k, v in os.environ.items() if k != "OSUPGRADE_CLUSTER_SECRET"}
    short = tmp_path / "short"
    short.write_text("too short\n")
    good = tmp_path / "secret"
    good.write_text(CLUSTER_SECRET + "\n")
    shared = ["--db", UNREACHABLE_PG, "--auth-token", "t"]
    errors = _refusals({
        "missing": (shared, plain),
        "short file": ([*shared, "--cluster-secret-file", str(short)], plain),
        "short env": (shared, {**plain, "OSUPGRADE_CLUSTER_SECRET": "x" * 31}),
        "no file": ([*shared, "--cluster-secret-file", str(tmp_path / "absent")], plain),
        "twice": ([*shared, "--cluster-secret-file", str(good)],
                  {**plain, "OSUPGRADE_CLUSTER_SECRET": CLUSTER_SECRET}),
        "good": ([*shared, "--cluster-secret-file", str(good)], plain),
    })  # fmt: skip
    assert "--cluster-secret-file PATH or OSUPGRADE_CLUSTER_SECRET" in errors["missing"]
    assert "at least 32 bytes" in errors["short file"] and "at least 32" in errors["short env"]
    assert "cannot read the cluster secret file" in errors["no file"]
    assert "give the cluster secret once" in errors["twice"]
    assert "cannot connect to PostgreSQL" in errors["good"]  # the secret passed; no database
    assert all(CLUSTER_SECRET not in e and "s3cret" not in e for e in errors.values())

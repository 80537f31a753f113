"""Dashboard speed on a large log: first paint in a real browser, JSON latency by position.

Builds a fleet log with tools/bench_fleet.py (10,000 sets by default) unless --db names
one, starts ``osupgrade ui`` on it, and measures, each over --runs runs (min / median /
max): the server's start (the timeline's one fold of the log), the page's first paint
with data in headless Chromium (live and at a past position), and the JSON endpoints at
a few positions, each run at a fresh position so no answer comes from the cache of
recent moments. References measured in the same run: one fold of the whole log into the
read model (``fleet_as_of``) and a static file from the same server.

    .venv/bin/python tools/bench_ui.py --scale-sets 10000 --instances 10
    .venv/bin/python tools/bench_ui.py --db /tmp/fleet.sqlite --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from events import SQLiteEventStore  # noqa: E402
from projections.fleet_view import fleet_as_of  # noqa: E402

TOKEN = "bench-token"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def stats(values: list[float]) -> str:
    """min / median / max in milliseconds."""
    return f"{min(values):8.1f} {statistics.median(values):8.1f} {max(values):8.1f}"


def build_log(db: Path, scale_sets: int, instances: int) -> None:
    print(f"building a {scale_sets:,} x {instances} log in {db} (tools/bench_fleet.py) ...")
    command = [
        sys.executable, str(ROOT / "tools" / "bench_fleet.py"), "--scale-sets", str(scale_sets),
        "--instances", str(instances), "--db", str(db),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=3600)


def reference_fold(db: Path) -> float:
    """Seconds to fold the whole log once into the read model (what snapshots avoid)."""

    async def fold() -> float:
        async with SQLiteEventStore(db) as store:
            started = time.perf_counter()
            await fleet_as_of(store)
            return time.perf_counter() - started

    return asyncio.run(fold())


def start_ui(db: Path) -> tuple[subprocess.Popen[str], str, float]:
    """``osupgrade ui`` on a free port; the seconds until it printed its URL."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "ui", "--db", str(db), "--port", "0",
         "--auth-token", TOKEN],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if "read-only" not in line:
        process.kill()
        raise SystemExit(f"osupgrade ui did not start: {line!r}")
    return process, line.split()[2].removesuffix("/ui/"), time.perf_counter() - started


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def endpoint_latency(http: httpx.Client, head: int, runs: int) -> list[tuple[str, list[float]]]:
    """Each endpoint at a few positions; every run asks for a position not seen before."""
    some_set = http.get("/ui/api/fleet", params={"offset": 5000, "limit": 1}).json()["sets"]
    key = some_set[0]["key"] if some_set else None
    rows: list[tuple[str, list[float]]] = []
    rows.append(("static file /ui/static/app.css", [
        timed(lambda: http.get("/ui/static/app.css")) for _ in range(runs)
    ]))  # fmt: skip
    rows.append(("fleet, live (the head)", [
        timed(lambda: http.get("/ui/api/fleet")) for _ in range(runs)
    ]))  # fmt: skip
    for name, base in (
        ("fleet, 1/4 of the log", head // 4),
        ("fleet, 3/4 of the log", head * 3 // 4),
    ):
        rows.append((name, [
            timed(lambda p=base + 2111 * run + 1: http.get("/ui/api/fleet", params={"at": p}))
            for run in range(runs)
        ]))  # fmt: skip
    steps = []
    for run in range(runs):  # the page's step button: the moment just shown, plus one
        shown = head // 2 + 2111 * run + 5
        http.get("/ui/api/fleet", params={"at": shown}).raise_for_status()
        steps.append(timed(lambda p=shown + 1: http.get("/ui/api/fleet", params={"at": p})))
    rows.append(("fleet, one step forward from the moment shown", steps))
    if key is not None:
        path = "/ui/api/set/" + key
        body = http.get(path).json()
        rows.append(("one set, 1/2 of the log", [
            timed(lambda p=head // 2 + run: http.get(path, params={"at": p})) for run in range(runs)
        ]))  # fmt: skip
        if body["upgrade"] is not None:
            upgrade = "/ui/api/upgrade/" + body["upgrade"]["id"]
            rows.append(("one upgrade's timeline", [
                timed(lambda p=head // 2 + run: http.get(upgrade, params={"at": p}))
                for run in range(runs)
            ]))  # fmt: skip
    rows.append(("event at a position", [
        timed(lambda p=head // 3 + run: http.get("/ui/api/event", params={"at": p}))
        for run in range(runs)
    ]))  # fmt: skip
    return rows


def first_paint(url: str, head: int, runs: int) -> list[tuple[str, list[float]]]:
    """Milliseconds from navigation to the view drawn with its data, in a fresh tab."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional

    rows: list[tuple[str, list[float]]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        for name, fragment in (
            ("fleet page, live", "#/"),
            ("fleet page, a past position", "#/?at={at}"),
        ):
            values = []
            for run in range(runs):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.add_init_script(f"sessionStorage.setItem('osupgrade.token', '{TOKEN}')")
                page = context.new_page()
                page.goto(f"{url}/ui/" + fragment.format(at=head // 3 + 2111 * run))
                page.wait_for_function("performance.getEntriesByName('osupgrade-data').length > 0")
                values.append(page.evaluate(
                    "performance.getEntriesByName('osupgrade-data')[0].startTime"
                ))  # fmt: skip
                context.close()
            rows.append((name, values))
        browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an existing log (default: build one)")
    parser.add_argument("--scale-sets", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON result line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "fleet.sqlite"
        if not db.exists():
            build_log(db, args.scale_sets, args.instances)
        run(db, args.runs, args.json)


def run(db: Path, runs: int, as_json: bool) -> None:
    folds = [reference_fold(db) * 1000 for _ in range(runs)]
    starts: list[float] = []
    for _ in range(runs - 1):  # start-up only: measured separately, then stopped
        process, _url, seconds = start_ui(db)
        starts.append(seconds * 1000)
        process.terminate()
        process.wait(30)
    process, url, seconds = start_ui(db)
    starts.append(seconds * 1000)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            head = http.get("/ui/api/meta").json()["head"]
            latency = endpoint_latency(http, head, runs)
        paint = first_paint(url, head, runs)
    finally:
        process.terminate()
        process.wait(30)
    rows = [
        ("reference: fold the whole log once (fleet_as_of)", folds),
        ("osupgrade ui start (open, fold once, listen)", starts),
        *[(f"first paint with data: {name}", values) for name, values in paint],
        *[(f"GET {name}", values) for name, values in latency],
    ]
    if as_json:
        print(json.dumps({"db": str(db), "head": head, "rows": dict(rows)}))
        return
    print(f"log {db}: {head:,} events; {runs} runs; milliseconds")
    print(f"{'measure':60} {'min':>8} {'median':>8} {'max':>8}")
    for name, values in rows:
        print(f"{name:60} {stats(values)}")


if __name__ == "__main__":
    main()

"""Latency of GET rollingUpgrades/latest and osUpgradeHistory while 1,000 scale sets upgrade.

Starts ``osupgrade serve`` (real clock, embedded SQLite, uvloop + httptools) as its own
process, creates S scale sets of I instances over HTTP, publishes a new version (healthy,
60 s boot) and starts an OS upgrade on every set. While they roll, C clients (one
keep-alive connection each, in this process) read ``latest`` and ``osUpgradeHistory`` of
random sets, in two phases:

- paced: the clients together offer ``--rate`` requests/s; latency is measured from each
  request's scheduled send time (no coordinated omission);
- saturated: every client sends its next request as soon as the previous one answered;
  the answer rate is the server's read throughput under this load.

    .venv/bin/python tools/bench_api.py --scale-sets 1000 --instances 10 --clients 50

The client is a minimal HTTP/1.1 keep-alive loop on asyncio streams, so that the load
generator costs less CPU than the server it measures (this VM has 2 cores, shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
SUB = "00000000-0000-0000-0000-00000000beef"
API = "2026-04-01"
IMAGE = (
    f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/publishers/Canonical"
    "/artifacttypes/vmimage/offers/UbuntuServer/skus/18.04-LTS/versions"
)


def vmss(i: int, suffix: str = "") -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/bench/providers/Microsoft.Compute"
        f"/virtualMachineScaleSets/vmss{i:05d}{suffix}?api-version={API}"
    )


class Connection:
    """One keep-alive HTTP/1.1 connection (enough for this server's responses)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = b"" if body is None else orjson.dumps(body)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def setup(host: str, port: int, scale_sets: int, instances: int) -> None:
    """Create the sets, publish a new version, start an upgrade on each (50 at a time)."""
    conns = [Connection(host, port) for _ in range(50)]
    first = conns[0]
    status, _ = await first.request("PUT", f"{IMAGE}/1.0.0?api-version={API}")
    assert status == 201, status
    model = {
        "location": "westeurope",
        "sku": {"name": "Standard_D2s_v3", "capacity": instances},
        "properties": {"virtualMachineProfile": {
            "storageProfile": {"imageReference": {"publisher": "Canonical",
                "offer": "UbuntuServer", "sku": "18.04-LTS", "version": "latest"}},
            "networkProfile": {"healthProbe": {"id": "/probes/p"}}}},
    }  # fmt: skip

    async def each(method: str, path_of: Any, body: Any, expected: int) -> None:
        queue = list(range(scale_sets))

        async def worker(conn: Connection) -> None:
            while queue:
                status, text = await conn.request(method, path_of(queue.pop()), body)
                assert status == expected, (status, text[:300])

        await asyncio.gather(*(worker(c) for c in conns))

    await each("PUT", vmss, model, 201)
    publish = {"properties": {"simulation": {"bootSeconds": 60}}}
    status, _ = await first.request("PUT", f"{IMAGE}/1.1.0?api-version={API}", publish)
    assert status == 201, status
    await each("POST", lambda i: vmss(i, "/osRollingUpgrade"), None, 202)
    for conn in conns:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): cost per request under noise."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    host: str, port: int, scale_sets: int, clients: int, seconds: float, rate: float | None
) -> dict[str, float]:
    """Run the clients for ``seconds``; paced at ``rate`` req/s in total, or saturated."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        rng = random.Random(index)
        conn = Connection(host, port)
        interval = clients / rate if rate else 0.0
        due = time.perf_counter() + rng.random() * interval
        while True:
            if rate:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)  # pacing the offered load, not waiting for work
            start = due if rate else time.perf_counter()
            if start >= deadline:
                break
            suffix = "/rollingUpgrades/latest" if rng.random() < 0.5 else "/osUpgradeHistory"
            status, _ = await conn.request("GET", vmss(rng.randrange(scale_sets), suffix))
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            due += interval
        conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": len(ordered) / wall,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def rolling(host: str, port: int, scale_sets: int) -> int:
    """How many sets are still rolling forward (the load ran during real upgrades)."""
    conn = Connection(host, port)
    count = 0
    for i in range(scale_sets):
        _, body = await conn.request("GET", vmss(i, "/rollingUpgrades/latest"))
        count += orjson.loads(body)["properties"]["runningStatus"]["code"] == "RollingForward"
    conn.close()
    return count


def start_server(db: Path, speed: float) -> tuple[subprocess.Popen[str], str, int]:
    command = [sys.executable, "-m", "engine.cli", "--log-format", "json", "serve",
               "--db", str(db), "--port", "0", "--clock", "real", "--speed", str(speed),
               "--auth-token", TOKEN]  # fmt: skip
    log = (db.parent / "server.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().split()[2]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return process, host, int(port)


async def bench(args: argparse.Namespace, host: str, port: int) -> None:
    began = time.perf_counter()
    await setup(host, port, args.scale_sets, args.instances)
    print(f"setup: {args.scale_sets} sets created and upgrading in "
          f"{time.perf_counter() - began:.1f} s", file=sys.stderr)  # fmt: skip
    print(f"rolling forward before: {await rolling(host, port, args.scale_sets)}", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    for name, rate in (("idle", 0.0), ("paced", args.rate), ("saturated", None)):
        cpu = cpu_seconds(args.server_pid)
        mine = time.process_time()
        if name == "idle":  # what the upgrades alone cost the server, for comparison
            began = time.perf_counter()
            await asyncio.sleep(args.seconds / 2)
            result = {"requests": 0.0, "rps": 0.0, "wall": time.perf_counter() - began}
        else:
            result = await load(host, port, args.scale_sets, args.clients, args.seconds, rate)
        result["server_cpu"] = cpu_seconds(args.server_pid) - cpu
        result["client_cpu"] = time.process_time() - mine
        results[name] = result
    idle = results.pop("idle")
    print(f"server CPU with no reads (upgrades only): {idle['server_cpu'] / idle['wall']:.0%} "
          "of a core")  # fmt: skip
    still = await rolling(host, port, args.scale_sets)
    for name, result in results.items():
        print(
            f"{name:9} {args.clients} clients: {result['requests']:,} GETs, "
            f"{result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.1f} ms, "
            f"errors {result['errors']}; server CPU "
            f"{result['server_cpu'] / result['requests'] * 1e6:.0f} µs/request, client CPU "
            f"{result['client_cpu'] / result['requests'] * 1e6:.0f} µs/request"
        )
    print(f"scale sets still rolling forward after the load: {still}/{args.scale_sets}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-sets", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--rate", type=float, default=2000.0, help="paced phase, req/s total")
    parser.add_argument("--speed", type=float, default=1.0, help="server clock speed-up")
    args = parser.parse_args()
    if args.scale_sets < 1 or not 1 <= args.instances <= 1000 or args.clients < 1:
        parser.error("--scale-sets >= 1, 1 <= --instances <= 1000, --clients >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        process, host, port = start_server(Path(tmp) / "bench.sqlite", args.speed)
        args.server_pid = process.pid
        try:
            run = asyncio.run
            try:
                import uvloop  # noqa: PLC0415 - optional, a cheaper client loop

                run = uvloop.run
            except ImportError:
                pass
            run(bench(args, host, port))
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            print(f"server exited with {code} after SIGTERM", file=sys.stderr)
            if os.environ.get("BENCH_KEEP_LOG"):
                print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()

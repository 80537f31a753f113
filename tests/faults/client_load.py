"""Concurrent API clients that keep reading and writing while a fault happens.

Each client loops over the servers and scale sets it is given: the five reads of a scale
set (model, instances, latest upgrade, history, the resource group's list) and, every
few rounds, a command (the scale set's own model PUT back: a real write that changes
nothing). Every answer is tallied by status; a 5xx other than 503 is kept with its body
for the failure message.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.api.live import API

READS = ("", "/virtualMachines", "/rollingUpgrades/latest", "/osUpgradeHistory")
MAX_ROUNDS = 10_000  # bound on each client's loop, whatever happens to ``stop``


@dataclass
class Tally:
    """What the clients got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # 5xx other than 503, transport errors
    unavailable: list[dict[str, object]] = field(default_factory=list)  # 503 bodies + header

    def record(self, method: str, path: str, response: httpx.Response) -> None:
        """Count one answer; keep the interesting ones."""
        self.statuses[response.status_code] += 1
        if response.status_code == 503:
            self.unavailable.append(
                {"body": response.json(), "retry_after": response.headers.get("retry-after")}
            )
        elif response.status_code >= 500:
            self.failures.append(f"{method} {path}: {response.status_code} {response.text[:300]}")


def vmss_path(key: str) -> str:
    """The ARM path of the scale set with engine key ``sub/rg/name``."""
    sub, rg, name = key.split("/")
    return (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute"
        f"/virtualMachineScaleSets/{name}"
    )


async def run_client(
    urls: list[str], keys: list[str], stop: asyncio.Event, tally: Tally, seed: int, token: str
) -> None:
    """Read and write until ``stop`` is set (or ``MAX_ROUNDS``), a short pause per round."""
    rng = random.Random(seed)
    query = {"api-version": API}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        for round_no in range(MAX_ROUNDS):
            if stop.is_set():
                return
            url, path = rng.choice(urls), vmss_path(rng.choice(keys))
            try:
                model = None
                for suffix in READS:
                    response = await http.get(f"{url}{path}{suffix}", params=query)
                    tally.record("GET", path + suffix, response)
                    if suffix == "" and response.status_code == 200:
                        model = response.json()
                listing = path.rsplit("/", 1)[0]
                tally.record("GET", listing, await http.get(f"{url}{listing}", params=query))
                if round_no % 3 == 0 and model is not None:
                    response = await http.put(f"{url}{path}", params=query, json=model)
                    tally.record("PUT", path, response)
            except httpx.HTTPError as exc:
                tally.failures.append(f"{path}: {exc!r}")
            await asyncio.sleep(0.05)  # pacing: a few clients, not a flood, on 2 shared cores

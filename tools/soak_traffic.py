"""The soak's clients: random ARM API traffic, counted, with a ledger of what was promised.

Every acknowledged command (a 2xx answer to a PUT, DELETE or POST) is recorded as a
``Promise``: what the log must hold afterwards (the set with that shape, the deletion,
the published version, the started upgrade, the cancel or approval request). The soak
checks each promise against the log once everything has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

API = "2026-04-01"
TOKEN = "soak-token"
LOCATION = "westeurope"
IMAGE = ("Canonical", "UbuntuServer", "18.04-LTS")
SUBSCRIPTIONS = ("00000000-0000-0000-0000-00000000500a", "00000000-0000-0000-0000-00000000500b")
GROUPS = ("soak-a", "soak-b")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
OPERATIONS_KEPT = 200


@dataclass(frozen=True)
class SetName:
    """One scale set the clients may create, change, upgrade or delete."""

    subscription: str
    group: str
    name: str

    @property
    def key(self) -> str:
        """The engine's key (``engine.domain.model.scale_set_key``: lower case)."""
        return f"{self.subscription}/{self.group}/{self.name}".lower()

    def path(self, suffix: str = "") -> str:
        """The ARM path of the set, plus ``suffix``."""
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.group}/providers"
            f"/Microsoft.Compute/virtualMachineScaleSets/{self.name}{suffix}"
        )


def set_names(count: int) -> list[SetName]:
    """``count`` names spread over two subscriptions and two resource groups."""
    return [
        SetName(SUBSCRIPTIONS[i % 2], GROUPS[(i // 2) % 2], f"soak-{i:03d}") for i in range(count)
    ]


def list_path(subscription: str, group: str) -> str:
    """The ARM path listing a resource group's scale sets."""
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers"
        "/Microsoft.Compute/virtualMachineScaleSets"
    )


def image_path(version: str | None = None) -> str:
    """The versions path of the soak's image family (one version with ``version``)."""
    publisher, offer, sku = IMAGE
    path = (
        f"/subscriptions/{SUBSCRIPTIONS[0]}/providers/Microsoft.Compute/locations/{LOCATION}"
        f"/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
    )
    return path if version is None else f"{path}/{version}"


@dataclass(frozen=True)
class SetShape:
    """The parts of a scale set model the soak varies; the log must show them after a PUT."""

    capacity: int
    mode: str
    automatic: bool
    use_rolling_policy: bool
    disable_rollback: bool
    max_batch_percent: int
    max_unhealthy_percent: int
    max_unhealthy_upgraded_percent: int
    pause_s: int

    @classmethod
    def random(cls, rng: random.Random) -> SetShape:
        """Varied capacities and policies, automatic OS upgrade on for most sets."""
        return cls(
            capacity=rng.choice((1, 2, 3, 4, 5, 6, 8, 10, 12)),
            mode=rng.choice(("Rolling", "Automatic")),
            automatic=rng.random() < 0.85,
            use_rolling_policy=rng.random() < 0.4,
            disable_rollback=rng.random() < 0.2,
            max_batch_percent=rng.choice((20, 25, 34, 50, 100)),
            max_unhealthy_percent=rng.choice((20, 50, 100)),
            max_unhealthy_upgraded_percent=rng.choice((0, 20, 50, 100)),
            pause_s=rng.choice((0, 0, 5, 20)),
        )

    def body(self) -> dict[str, Any]:
        """The ARM ``VirtualMachineScaleSet`` body of this shape."""
        publisher, offer, sku = IMAGE
        rolling = {
            "maxBatchInstancePercent": self.max_batch_percent,
            "maxUnhealthyInstancePercent": self.max_unhealthy_percent,
            "maxUnhealthyUpgradedInstancePercent": self.max_unhealthy_upgraded_percent,
            "pauseTimeBetweenBatches": f"PT{self.pause_s}S",
        }
        automatic = {
            "enableAutomaticOSUpgrade": self.automatic,
            "useRollingUpgradePolicy": self.use_rolling_policy,
            "disableAutomaticRollback": self.disable_rollback,
        }
        image = {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"}
        return {
            "location": LOCATION,
            "sku": {"name": "Standard_D2s_v3", "capacity": self.capacity},
            "properties": {
                "upgradePolicy": {
                    "mode": self.mode,
                    "rollingUpgradePolicy": rolling,
                    "automaticOSUpgradePolicy": automatic,
                },
                "virtualMachineProfile": {
                    "storageProfile": {"imageReference": image},
                    "networkProfile": {"healthProbe": {"id": "/probes/soak"}},
                },
            },
        }


@dataclass(frozen=True)
class Promise:
    """What one acknowledged command says the log must hold."""

    kind: str  # put | delete | publish | start | cancel | approve
    target: str  # scale set key, or image version
    shape: SetShape | None = None  # put
    upgrade_id: str = ""  # start, cancel, approve

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready form, for the report."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v not in (None, "")}


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Stats:
    """Requests by kind and status class, 5xx by kind, latencies, and the promise ledger."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    server_errors: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    transport: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    promises: list[Promise] = field(default_factory=list)

    def answered(self, kind: str, response: httpx.Response, seconds: float) -> None:
        """Count an answer; a 5xx is also counted with its ARM error code."""
        status = response.status_code
        self.requests[kind, f"{status // 100}xx"] += 1
        self.latencies.append(seconds)
        if status >= 500:
            self.server_errors[kind, status, arm_code(response)] += 1

    def failed(self, kind: str, error: Exception) -> None:
        """Count a request that got no answer (refused connection, timeout, reset)."""
        self.requests[kind, "error"] += 1
        self.transport[kind, type(error).__name__] += 1

    @property
    def total(self) -> int:
        """Requests sent so far."""
        return sum(self.requests.values())

    def count(self, status_class: str) -> int:
        """Requests of one status class ("2xx", "5xx", "error"...)."""
        return sum(n for (_, c), n in self.requests.items() if c == status_class)

    def status_500(self) -> int:
        """Answers with status 500 (a bug: an unexpected error in the server)."""
        return sum(n for (_, status, _), n in self.server_errors.items() if status == 500)

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 of the answered requests, in milliseconds."""
        ordered = sorted(self.latencies)
        return _pct(ordered, 0.5) * 1000, _pct(ordered, 0.99) * 1000


def arm_code(response: httpx.Response) -> str:
    """The ARM error code of an error answer (``-`` if the body is not an ARM error)."""
    try:
        error = response.json().get("error", {})
        return str(error.get("code", "-")) if isinstance(error, dict) else "-"
    except ValueError:
        return "-"


class Cluster:
    """The base URLs of the servers that are up now (only loopback addresses)."""

    def __init__(self) -> None:
        self._urls: dict[int, str] = {}

    def up(self, index: int, url: str) -> None:
        """Server ``index`` serves at ``url``."""
        host = urlsplit(url).hostname
        if host not in LOOPBACK:
            raise ValueError(f"refusing to send traffic to {url}: not a loopback address")
        self._urls[index] = url

    def down(self, index: int) -> None:
        """Server ``index`` is down: send it nothing."""
        self._urls.pop(index, None)

    def urls(self) -> list[str]:
        """Base URLs of the live servers, by index."""
        return [self._urls[i] for i in sorted(self._urls)]

    def pick(self, rng: random.Random) -> str | None:
        """A random live server (None when all are down)."""
        urls = self.urls()
        return rng.choice(urls) if urls else None


@dataclass
class Versions:
    """The image versions published so far; a new one at most every ``every_s`` seconds."""

    every_s: float
    newest: int = 0
    last_at: float = field(default_factory=time.monotonic)

    def next(self, rng: random.Random) -> str | None:
        """A version to publish: usually a new one, sometimes the newest again (a 409)."""
        if time.monotonic() - self.last_at < self.every_s:
            return None
        if rng.random() < 0.8:
            self.newest += 1
            self.last_at = time.monotonic()
        return f"1.{self.newest}.0"


@dataclass
class Traffic:
    """What every client shares: the HTTP pool, the servers, the names, the counters."""

    http: httpx.AsyncClient
    cluster: Cluster
    names: list[SetName]
    versions: Versions
    stats: Stats = field(default_factory=Stats)
    operations: deque[str] = field(default_factory=lambda: deque(maxlen=OPERATIONS_KEPT))

    async def call(
        self,
        rng: random.Random,
        kind: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """One request to a random live server; None when it got no answer."""
        base = self.cluster.pick(rng)
        if base is None:
            self.stats.requests[kind, "no server"] += 1
            return None
        params = {"api-version": API, **(query or {})}
        began = time.perf_counter()
        try:
            response = await self.http.request(method, base + path, params=params, json=body)
        except httpx.HTTPError as exc:
            self.stats.failed(kind, exc)
            return None
        self.stats.answered(kind, response, time.perf_counter() - began)
        return response

    def promise(self, promise: Promise) -> None:
        """Record what an acknowledged command promised."""
        self.stats.promises.append(promise)

    def accepted(self, response: httpx.Response, target: str, kind: str) -> None:
        """A 202: remember the operation to poll and what it promised."""
        url = response.headers.get("azure-asyncoperation", "")
        parts = urlsplit(url)
        operation = parts.path.rsplit("/", 1)[-1]
        # "start.<upgrade id>", "cancel.<upgrade id>", "approve.<upgrade id>.<ms>"
        op_kind, _, rest = operation.partition(".")
        upgrade_id = rest.split(".", 1)[0]
        if op_kind != kind or not upgrade_id:
            return  # no operation header: nothing to check but the status
        self.operations.append(parts.path)
        self.promise(Promise(kind, target, upgrade_id=upgrade_id))


# -- the actions -----------------------------------------------------------------------


async def put_set(t: Traffic, rng: random.Random) -> None:
    """Create or update a scale set with a random shape."""
    name = rng.choice(t.names)
    shape = SetShape.random(rng)
    response = await t.call(rng, "PUT vmss", "PUT", name.path(), body=shape.body())
    if response is not None and response.status_code in (200, 201):
        t.promise(Promise("put", name.key, shape=shape))


async def delete_set(t: Traffic, rng: random.Random) -> None:
    """Delete a scale set (409 while it upgrades; 204 if it is not there)."""
    name = rng.choice(t.names)
    response = await t.call(rng, "DELETE vmss", "DELETE", name.path())
    if response is not None and response.status_code == 200:
        t.promise(Promise("delete", name.key))


async def publish(t: Traffic, rng: random.Random) -> None:
    """Publish an image version, some with unhealthy instances or failing reimages."""
    version = t.versions.next(rng)
    if version is None:
        await get_latest(t, rng)
        return
    simulation = {
        "unhealthyInstancePercent": rng.choice((0, 0, 0, 0, 10, 25, 50, 100)),
        "bootSeconds": rng.choice((10, 30, 60)),
        "reimageFailurePercent": rng.choice((0, 0, 0, 10)),
    }
    body = {"properties": {"simulation": simulation}}
    response = await t.call(rng, "PUT image", "PUT", image_path(version), body=body)
    if response is not None and response.status_code == 201:
        t.promise(Promise("publish", version))


async def start_upgrade(t: Traffic, rng: random.Random) -> None:
    """POST osRollingUpgrade (409 if one runs)."""
    name = rng.choice(t.names)
    response = await t.call(rng, "POST start", "POST", name.path("/osRollingUpgrade"))
    if response is not None and response.status_code == 202:
        t.accepted(response, name.key, "start")


async def cancel_upgrade(t: Traffic, rng: random.Random) -> None:
    """POST rollingUpgrades/cancel (409 when nothing runs)."""
    name = rng.choice(t.names)
    response = await t.call(rng, "POST cancel", "POST", name.path("/rollingUpgrades/cancel"))
    if response is not None and response.status_code == 202:
        t.accepted(response, name.key, "cancel")


async def approve(t: Traffic, rng: random.Random) -> None:
    """POST approveRollingUpgrade for every pending instance (409 when nothing runs)."""
    name = rng.choice(t.names)
    response = await t.call(rng, "POST approve", "POST", name.path("/approveRollingUpgrade"))
    if response is not None and response.status_code == 202:
        t.accepted(response, name.key, "approve")


async def get_set(t: Traffic, rng: random.Random) -> None:
    """GET the scale set."""
    await t.call(rng, "GET vmss", "GET", rng.choice(t.names).path())


async def get_instances(t: Traffic, rng: random.Random) -> None:
    """GET its instances, half of the time with the instance view."""
    query = {"$expand": "instanceView"} if rng.random() < 0.5 else None
    path = rng.choice(t.names).path("/virtualMachines")
    await t.call(rng, "GET instances", "GET", path, query=query)


async def get_latest(t: Traffic, rng: random.Random) -> None:
    """GET rollingUpgrades/latest."""
    await t.call(rng, "GET latest", "GET", rng.choice(t.names).path("/rollingUpgrades/latest"))


async def get_history(t: Traffic, rng: random.Random) -> None:
    """GET osUpgradeHistory."""
    await t.call(rng, "GET history", "GET", rng.choice(t.names).path("/osUpgradeHistory"))


async def list_sets(t: Traffic, rng: random.Random) -> None:
    """GET the scale sets of a resource group."""
    path = list_path(rng.choice(SUBSCRIPTIONS), rng.choice(GROUPS))
    await t.call(rng, "GET list", "GET", path)


async def poll_operation(t: Traffic, rng: random.Random) -> None:
    """GET an operation a 202 named (on any server: the id names the upgrade)."""
    if not t.operations:
        await get_latest(t, rng)
        return
    path = rng.choice(t.operations)
    query = {"monitor": "true"} if rng.random() < 0.3 else None
    await t.call(rng, "GET operation", "GET", path, query=query)


Action = Callable[[Traffic, random.Random], Awaitable[None]]
ACTIONS: tuple[tuple[Action, int], ...] = (
    (put_set, 10),
    (delete_set, 2),
    (publish, 2),
    (start_upgrade, 5),
    (cancel_upgrade, 3),
    (approve, 2),
    (get_set, 14),
    (get_instances, 10),
    (get_latest, 20),
    (get_history, 10),
    (list_sets, 5),
    (poll_operation, 8),
)


async def client(t: Traffic, seed: int, stop: asyncio.Event, think_s: float) -> None:
    """One client: a random action, a random pause of up to ``think_s``, until ``stop``."""
    rng = random.Random(seed)
    actions = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    while not stop.is_set():
        action = rng.choices(actions, weights)[0]
        try:
            await action(t, rng)
        except Exception as exc:  # a client's own bug is counted, not fatal to the soak
            t.stats.failed(f"client {action.__name__}", exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(0, think_s)):
                await stop.wait()


async def setup(t: Traffic, rng: random.Random, deadline_s: float) -> None:
    """Publish the first version and create every set, retrying until each is acknowledged."""
    async with asyncio.timeout(deadline_s):
        while True:
            response = await t.call(rng, "PUT image", "PUT", image_path("1.0.0"))
            if response is not None and response.status_code in (201, 409):
                if response.status_code == 201:
                    t.promise(Promise("publish", "1.0.0"))
                break
            await asyncio.sleep(0.5)  # a server is starting or down: retry shortly
        for name in t.names:
            while True:
                shape = SetShape.random(rng)
                response = await t.call(rng, "PUT vmss", "PUT", name.path(), body=shape.body())
                if response is not None and response.status_code in (200, 201):
                    t.promise(Promise("put", name.key, shape=shape))
                    break
                await asyncio.sleep(0.5)

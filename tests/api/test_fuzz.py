"""A few hundred malformed or mutated requests: never a 5xx, and a refusal writes nothing.

Mutations are drawn from a seeded ``random.Random``, so a failure names a reproducible
case. Each request is checked on its own: a mutation that happens to stay valid may be
accepted (and write), but any 4xx must leave the log's head where it was.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, LiveServer, vmss_path

SEED = 20261122
CASES = 320
JUNK: list[Any] = [
    None, "", "x" * 300, "\x00\x01", -1, 0, 10**20, -(10**20), 1.5, float("1e308"), True,
    False, [], {}, [1, 2], {"a": {"b": None}}, "PT99H", "P", "latest", "Healthy", "0", "-PT1S",
    "2026-13-45T99:00:00Z", ["0", "x"], {"$ref": "#"},
]  # fmt: skip


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON value (keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def mutate(body: Any, rng: random.Random) -> bytes:
    """One mutation: replace or delete a node, add junk, or corrupt the bytes."""
    kind = rng.choice(["replace", "replace", "replace", "delete", "junk-key", "bytes"])
    if kind == "bytes":
        raw = bytearray(json.dumps(body).encode())
        position = rng.randrange(len(raw))
        if rng.random() < 0.5:
            return bytes(raw[:position])  # truncated
        raw[position] = rng.randrange(256)
        return bytes(raw)
    mutated = copy.deepcopy(body)
    where = rng.choice(paths(mutated))
    if not where:
        return json.dumps(rng.choice(JUNK)).encode()
    parent = mutated
    for step in where[:-1]:
        parent = parent[step]
    if kind == "delete":
        del parent[where[-1]]
    elif kind == "junk-key" and isinstance(parent, dict):
        parent[f"junk{rng.randrange(9)}"] = rng.choice(JUNK)
    else:
        parent[where[-1]] = rng.choice(JUNK)
    return json.dumps(mutated).encode()


def test_mutated_bodies_never_5xx_and_refusals_write_nothing(server: LiveServer) -> None:
    rng = random.Random(SEED)
    bodies = valid_bodies()
    setup = server.http.put(bodies["put"][0], params={"api-version": API}, json=bodies["put"][2])
    assert setup.status_code == 201
    refused = 0
    for case in range(CASES):
        name = rng.choice(sorted(bodies))
        path, method, body = bodies[name]
        content = mutate(body, rng)
        before = server.head()
        response = server.http.request(
            method, path, params={"api-version": API}, content=content,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        where = f"case {case} ({name}): {content[:200]!r} -> {response.status_code}"
        assert response.status_code < 500, f"{where} {response.text}"
        if response.status_code < 400:
            server.advance(0)  # let the engine finish reacting, so the next head is stable
        else:
            refused += 1
            assert server.head() == before, f"{where}: a refused request wrote to the log"
            assert "retry-after" not in response.headers, where
            assert response.json()["error"]["code"], where
    assert refused > CASES // 2  # the mutations mostly break the bodies, as intended


def test_odd_query_strings_and_paths_never_5xx(server: LiveServer) -> None:
    rng = random.Random(SEED + 1)
    bodies = valid_bodies()
    server.http.put(bodies["put"][0], params={"api-version": API}, json=bodies["put"][2])
    pieces = ["api-version=" + API, "api-version=", "api-version=%00", "api-version=2018-06-01",
              "$skiptoken=", "$skiptoken=zz", "$skiptoken=%ff%fe", "$expand=instanceView",
              "$top=0", "$top=-1", "$top=99999999999999999999", "$orderby=name%20desc",
              "monitor=true", "a=b=c", "&&", "%", "api-version=" + API + "%20"]  # fmt: skip
    paths = ["/rollingUpgrades/latest", "/osUpgradeHistory", "/virtualMachines", "",
             "/virtualMachines/0", "/rollingUpgrades", "/%2e%2e/x"]  # fmt: skip
    for _ in range(120):
        query = "&".join(rng.sample(pieces, rng.randint(0, 3)))
        path = vmss_path("fuzz", rng.choice(paths)) + "?" + query
        response = server.http.get(path)
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["code"], path

"""Concurrent creation: one event per image version and per scale set, never a 500.

Publishes of one version race on one server (20 real concurrent clients) and on two
servers sharing one PostgreSQL log; so do PUTs creating the same new scale set. The log
must hold exactly one event for each, and every loser must get an ARM answer. Version
strings have one canonical form: others are refused, and logs written before that rule
still load, each version once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.api.cluster import ClusterKey
from engine.api.service import leases_schema
from engine.domain.events import DOMAIN_EVENTS, ImageVersionPublished, catalog_stream
from engine.runtime.clock import VirtualClock
from engine.runtime.engine import Engine
from engine.sim.fleet import SimulatedFleet
from events import Metadata, NewEvent, SQLiteEventStore
from tests.api import live as api
from tests.api.errors_bodies import valid_bodies
from tests.api.live import API, TOKEN, LiveServer, image_path, live_server, vmss_path
from tests.backends import pg_dsn
from tests.engine.harness import LOCATION, T0, UBUNTU
from tests.pg_servers import CLUSTER_SECRET, drop

DEADLINE_S = 30.0
Q = {"api-version": API}


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def _at_once(urls: list[str], method: str, path: str, count: int, body: Any) -> list[int]:
    """``count`` identical requests spread over ``urls``, all in flight together."""
    clients = [
        httpx.AsyncClient(base_url=url, headers=_headers(), timeout=DEADLINE_S) for url in urls
    ]
    try:
        calls = [
            clients[i % len(clients)].request(method, path, params=Q, json=body)
            for i in range(count)
        ]
        answers = await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S)
    finally:
        for http in clients:
            await http.aclose()
    assert all(a.status_code < 500 for a in answers), [a.text for a in answers if a.is_error]
    return [a.status_code for a in answers]


def _published(live: LiveServer) -> Counter[str]:
    """How many ``image.version_published`` events the log holds per version."""
    assert live.server.service is not None
    store = live.server.service.store
    records = live.call(store.read_all(limit=1_000_000, types=["image.version_published"]))
    return Counter(r.data["version"] for r in records)


def _created(live: LiveServer) -> Counter[str]:
    assert live.server.service is not None
    store = live.server.service.store
    records = live.call(store.read_all(limit=1_000_000, types=["scaleset.created"]))
    return Counter(r.stream_id for r in records)


def test_twenty_concurrent_publishes_of_one_version_record_it_once(tmp_path: Path) -> None:
    with live_server(tmp_path) as live:
        for round_ in range(3):
            version = f"2.0.{round_}"
            statuses = asyncio.run(_at_once([live.url], "PUT", image_path(version), 20, None))
            assert Counter(statuses) == {201: 1, 409: 19}, statuses
            assert _published(live)[version] == 1


def test_non_canonical_versions_are_refused_with_400_naming_the_parameter(
    tmp_path: Path,
) -> None:
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        for version in ("01.0.0", "1.0.00", "1.00.0"):
            answer = live.http.put(image_path(version), params=Q)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert (error["code"], error["target"]) == ("InvalidParameter", "version"), error
            assert "1.0.0" in error["message"]  # says what the canonical form is
        _, _, body = valid_bodies()["put"]
        image = body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
        manual = {**body, "properties": {**body["properties"], "upgradePolicy": {"mode": "Manual"}}}
        profile = manual["properties"]["virtualMachineProfile"]
        explicit = {**profile, "storageProfile": {"imageReference": {**image, "version": "1.0.01"}}}
        manual["properties"] = {**manual["properties"], "virtualMachineProfile": explicit}
        answer = live.http.put(vmss_path("pinned"), params=Q, json=manual)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["target"].endswith("imageReference.version")
        listed = live.http.get(image_path(), params=Q).json()
        assert [v["name"] for v in listed] == ["1.0.0"]
        assert live.http.get(image_path("01.0.0"), params=Q).json()["name"] == "1.0.0"


async def test_a_log_with_non_canonical_versions_still_loads_each_version_once(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(T0)
    db = tmp_path / "old.sqlite"
    async with SQLiteEventStore(db, clock=clock) as store:
        stream = catalog_stream(LOCATION, *UBUNTU)
        for version in ("01.0.0", "1.0.00", "1.0.0", "1.2.0"):  # as an older engine let in
            event = ImageVersionPublished(LOCATION, *UBUNTU, version)
            new = DOMAIN_EVENTS.to_new_event(event, metadata=Metadata(), occurred_at=T0)
            assert isinstance(new, NewEvent)
            await store.append(stream, [new], None)
        fleet = SimulatedFleet(clock)
        async with Engine(store=store, fleet=fleet, clock=clock) as engine:
            assert engine.catalog.versions(LOCATION, *UBUNTU) == ["1.0.0", "1.2.0"]
            with pytest.raises(Exception, match="already published"):
                await engine.publish_image_version(LOCATION, *UBUNTU, "1.0.0")


# -- two servers on one PostgreSQL log ---------------------------------------------------


def _servers(tmp_path: Path, dsn: str, schema: str, stack: ExitStack) -> list[LiveServer]:
    servers = []
    for n in range(2):
        where = tmp_path / f"server{n}"
        where.mkdir()
        servers.append(
            stack.enter_context(
                live_server(where, db=dsn, pg_schema=schema, clock="real", lease_ttl_s=3.0,
                            lease_renew_s=1.0, cluster_key=ClusterKey(CLUSTER_SECRET.encode()))
            )
        )  # fmt: skip
    return servers


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = pg_dsn()
    schema = f"races_{uuid.uuid4().hex[:12]}"
    yield dsn, schema
    asyncio.run(drop(dsn, schema, leases_schema(schema)))


def test_two_servers_on_one_postgresql_log_create_each_set_and_version_once(
    tmp_path: Path, pg_schema: tuple[str, str]
) -> None:
    dsn, schema = pg_schema
    with ExitStack() as stack:
        servers = _servers(tmp_path, dsn, schema, stack)
        urls = [s.url for s in servers]
        servers[0].publish("1.0.0")
        _, _, body = valid_bodies()["put"]
        for round_ in range(10):
            version = f"3.0.{round_}"
            published = asyncio.run(_at_once(urls, "PUT", image_path(version), 4, None))
            assert Counter(published) == {201: 1, 409: 3}, published
            created = asyncio.run(_at_once(urls, "PUT", vmss_path(f"new{round_}"), 2, body))
            assert 201 in created and created.count(201) == 1, created
            assert set(created) <= {200, 201, 409}, created
        versions = _published(servers[0])
        assert all(versions[f"3.0.{r}"] == 1 for r in range(10)), versions
        sets = _created(servers[1])
        prefix = f"vmss-{api.SUB}/{api.RG}/".lower()
        assert all(sets[f"{prefix}new{r}"] == 1 for r in range(10)), sets

"""Servers sharing a log trust each other through the cluster secret, never a client's token.

Two real ``osupgrade serve`` processes share one PostgreSQL log; a command sent to one
for a scale set the other drives is forwarded. The tests put a plain HTTP listener of
their own where a forward may go: a *rogue* that wrote itself into the lease board with
database access but without the secret (it must receive nothing), or, announced by the
operator who holds the secret, a *recording proxy* in front of the real owner (it sees
exactly what the owner receives, and can add hostile reply headers).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient

from engine.api.access import Access
from engine.api.cluster import ClusterKey, SignedRequest
from engine.api.service import leases_schema
from engine.scaleout.pg_leases import PostgresLeaseBoard
from tests.api.live import API, RG, SUB, image_path, vmss_path
from tests.api.test_errors import body as vmss_body
from tests.backends import pg_dsn
from tests.pg_servers import CLUSTER_SECRET, drop, serve_process

SETS = 6
TTL, RENEW = 3.0, 1.0
CLIENT_TOKEN = f"client-token-{secrets.token_hex(8)}"
OTHER_SUB = "00000000-0000-0000-0000-0000000000ff"
ARM_HEADERS = {
    "content-type", "azure-asyncoperation", "location", "retry-after", "x-ms-request-id",
    "x-ms-correlation-request-id", "x-ms-client-request-id", "etag",
}  # fmt: skip
TRANSPORT = {"content-length", "date"}  # added by the receiving server's own HTTP layer
KEY = ClusterKey(CLUSTER_SECRET.encode())
PLATFORM = Access()


@dataclass
class Seen:
    """One request as a listener received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class Listener:
    """A plain HTTP/1.1 listener on 127.0.0.1 that records every request it gets.

    Without ``upstream`` it answers 200 itself (a rogue peer). With one it passes each
    request on and the answer back, adding ``inject`` to the answer's headers.
    """

    upstream: str | None = None
    inject: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(100):  # requests on one keep-alive connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen = await self._read(head, reader)
                self.seen.append(seen)
                status, headers, content = await self._answer(seen)
                lines = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}"]
                lines += [f"{k}: {v}" for k, v in headers]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content)
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _read(head: bytes, reader: asyncio.StreamReader) -> Seen:
        first, *rest = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in rest)]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        content = await reader.readexactly(length)
        return Seen(method, target, headers, content, head + content)

    async def _answer(self, seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.upstream is None:
            return 200, [("content-type", "application/json")], b"{}"
        passed = [(k, v) for k, v in seen.headers if k.lower() not in ("host", "content-length")]
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.request(
                seen.method, self.upstream + seen.target, headers=passed, content=seen.body
            )
        skip = {"content-length", "transfer-encoding", "connection"}
        headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in skip]
        return answer.status_code, [*headers, *self.inject.items()], answer.content


@dataclass
class Cluster:
    """Two servers on one log; the first received every set, the leases spread them."""

    dsn: str
    board: PostgresLeaseBoard
    urls: list[str]
    engine_ids: list[str]
    logs: list[Path]

    async def a_set_of(self, server: int) -> str:
        """The name of a set the given server drives now."""
        owners = await self.board.owners()
        return next(k for k, o in sorted(owners.items()) if o == self.engine_ids[server])

    async def sql(self, statement: str, *args: object) -> None:
        """Write the lease board directly, as any process with database access can."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(statement.replace("{s}", f'"{self.board.schema}"'), *args)
        finally:
            await conn.close()

    def logged(self) -> str:
        return "".join(log.read_text() for log in self.logs)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    dsn = pg_dsn()
    schema = f"t_{uuid.uuid4().hex[:10]}"
    args = ["--auth-token", CLIENT_TOKEN, "--auth-token", f"tenant-token:{SUB}",
            "--lease-ttl", str(TTL), "--lease-renew", str(RENEW)]  # fmt: skip
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        async with AsyncExitStack() as stack:
            board = await stack.enter_async_context(
                PostgresLeaseBoard(dsn, schema=leases_schema(schema), ttl_s=TTL)
            )
            servers = [
                await stack.enter_async_context(serve_process(dsn, schema, log, *args))
                for log in logs
            ]
            async with httpx.AsyncClient(base_url=servers[0][1], headers=_auth()) as http:
                q = {"api-version": API}
                assert (await http.put(image_path("1.0.0"), params=q)).status_code == 201
                for n in range(SETS):
                    created = await http.put(vmss_path(f"s{n}"), params=q, json=vmss_body())
                    assert created.status_code == 201, created.text
            ids = await _spread(board, [process.pid for process, _ in servers])
            yield Cluster(dsn, board, [url for _, url in servers], ids, logs)
    finally:
        await drop(dsn, schema, leases_schema(schema))


async def _spread(board: PostgresLeaseBoard, pids: list[int]) -> list[str]:
    """Wait until both servers drive some sets; their engine ids, in server order."""
    async with asyncio.timeout(30):
        while True:
            owners = set((await board.owners()).values())
            ids = [next((o for o in owners if o and f"-{pid}-" in o), None) for pid in pids]
            if None not in owners and all(ids):
                return [i for i in ids if i is not None]
            await asyncio.sleep(0.2)  # another process's table: nothing to wait on


def _auth(token: str = CLIENT_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_rogue_in_the_lease_board_gets_no_request_and_the_client_a_retryable_409(
    cluster: Cluster,
) -> None:
    a_url, b_id = cluster.urls[0], cluster.engine_ids[1]
    async with Listener() as rogue, httpx.AsyncClient(base_url=a_url, headers=_auth()) as http:
        stolen = [await cluster.a_set_of(1), await cluster.a_set_of(0)]
        # 1. a row of its own (a forged MAC), owning a set of B and one of A
        await cluster.sql(
            "INSERT INTO {s}.engines (engine_id, heartbeat_at, url, url_mac) "
            "VALUES ('rogue', clock_timestamp() + interval '1 hour', $1, 'forged')",
            rogue.url,
        )
        await cluster.sql(
            "UPDATE {s}.leases SET owner = 'rogue', token = token + 1, "
            "expires_at = clock_timestamp() + interval '1 hour' WHERE scale_set = ANY($1)",
            stolen,
        )
        for key in stolen:
            await _until_not_driven_here(http, key)
        answers = [await _command(http, key, n) for n in range(10) for key in stolen]
        # 2. B's MAC copied onto the rogue's row, and no MAC at all
        await cluster.sql(
            "UPDATE {s}.engines SET url_mac = (SELECT url_mac FROM {s}.engines "
            "WHERE engine_id = $1) WHERE engine_id = 'rogue'",
            b_id,
        )
        answers += [await _command(http, key, n) for n in range(3) for key in stolen]
        await cluster.sql("UPDATE {s}.engines SET url_mac = NULL WHERE engine_id = 'rogue'")
        answers += [await _command(http, key, n) for n in range(3) for key in stolen]
        # 3. B's own row pointed at the rogue (B's MAC kept), for a set B drives
        b_set = await cluster.a_set_of(1)
        await cluster.sql("UPDATE {s}.engines SET url = $1 WHERE engine_id = $2", rogue.url, b_id)
        answers += [await _command(http, b_set, n) for n in range(3)]
    assert len(answers) == 35
    assert {(status, code) for status, code in answers} == {(409, "OperationNotAllowed")}
    assert rogue.connections == 0 and rogue.seen == []  # not even a connection
    assert CLIENT_TOKEN not in cluster.logged() and CLUSTER_SECRET not in cluster.logged()


async def _until_not_driven_here(http: httpx.AsyncClient, key: str) -> None:
    """Wait until A's lease loop has seen the lease move (its worker for ``key`` stopped)."""
    path = vmss_path(key.split("/")[2], "/rollingUpgrades/cancel")
    async with asyncio.timeout(10):
        while True:
            answer = await http.post(path, params={"api-version": API})
            if "driven by another engine" in answer.text:
                return
            assert "no ongoing Rolling Upgrade" in answer.text, answer.text  # A drives it still
            await asyncio.sleep(0.1)  # the lease loop runs every RENEW seconds


async def _command(http: httpx.AsyncClient, key: str, n: int) -> tuple[int, str]:
    """One of several commands for the set ``key``: its status and ARM error code."""
    name = key.split("/")[2]
    q = {"api-version": API}
    requests = [
        lambda: http.post(vmss_path(name, "/osRollingUpgrade"), params=q),
        lambda: http.post(vmss_path(name, "/rollingUpgrades/cancel"), params=q),
        lambda: http.put(vmss_path(name), params=q, json=vmss_body()),
        lambda: http.delete(vmss_path(name), params=q),
        lambda: http.post(vmss_path(name, "/approveRollingUpgrade"), params=q),
    ]
    answer = await requests[n % len(requests)]()
    assert "retry-after" not in answer.headers
    assert answer.status_code >= 400, (answer.request.method, answer.status_code, answer.text)
    return answer.status_code, answer.json()["error"]["code"]


async def test_a_forward_carries_a_signature_not_the_token_and_answers_with_arm_headers_only(
    cluster: Cluster,
) -> None:
    a_url, b_url, b_id = cluster.urls[0], cluster.urls[1], cluster.engine_ids[1]
    hostile = {"set-cookie": "session=stolen", "x-evil": "1", "server": "evil/1.0"}
    async with (
        Listener(upstream=b_url, inject=hostile) as proxy,
        httpx.AsyncClient(base_url=a_url, headers=_auth()) as http,
    ):
        name = (await cluster.a_set_of(1)).split("/")[2]
        # the operator, who holds the secret, announces B behind the recording proxy
        mac = KEY.sign_announcement(b_id, proxy.url)
        await cluster.sql(
            "UPDATE {s}.engines SET url = $1, url_mac = $2 WHERE engine_id = $3",
            proxy.url, mac, b_id,
        )  # fmt: skip
        q = {"api-version": API}
        started = await http.post(
            vmss_path(name, "/osRollingUpgrade"), params=q,
            headers={"x-ms-client-request-id": "cid-1"},
        )  # fmt: skip
        assert started.status_code == 202, started.text
        status = await http.get(started.headers["azure-asyncoperation"])
        refused = await http.post(vmss_path(name, "/approveRollingUpgrade"), params=q)
        sdk = await asyncio.to_thread(_sdk_start, a_url, name)
    # what the owner received: the command, signed, without the client's token
    assert len(proxy.seen) >= 3 and all(s.target.startswith("/subscriptions/") for s in proxy.seen)
    for seen in proxy.seen:
        assert CLIENT_TOKEN.encode() not in seen.raw
        assert seen.header("authorization") is None
        assert seen.header("x-osupgrade-peer-signature") and seen.header("x-osupgrade-peer-to")
        assert seen.header("x-osupgrade-peer-access") == "platform"
    assert proxy.seen[0].header("x-ms-client-request-id") == "cid-1"
    # what the client got: ARM's headers only, operation URLs on the server it asked
    for answer in (started, refused):
        assert set(answer.headers) <= ARM_HEADERS | TRANSPORT, answer.headers
        assert len(answer.headers.get_list("x-ms-request-id")) == 1
    assert started.headers["azure-asyncoperation"].startswith(f"{a_url}/subscriptions/{SUB}/")
    assert started.headers["location"].startswith(f"{a_url}/subscriptions/{SUB}/")
    assert started.headers["x-ms-correlation-request-id"] == "cid-1"
    assert status.status_code == 200, status.text  # polled on A, which did not create it
    assert status.json()["status"] in ("InProgress", "Succeeded")
    assert refused.status_code in (202, 409) and refused.headers["content-type"]
    assert sdk == "ok"
    assert CLIENT_TOKEN not in cluster.logged() and CLUSTER_SECRET not in cluster.logged()


def _sdk_start(url: str, name: str) -> str:
    """azure-mgmt-compute through A: start an upgrade of B's set and poll it to the end."""
    client = ComputeManagementClient(
        _Credential(),
        SUB,
        base_url=url,
        authentication_policy=_TokenPolicy(),
        polling_interval=0.05,
        retry_total=0,
    )
    poller = client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, name)
    poller.result(timeout=60)
    return "ok" if poller.status() == "Succeeded" else poller.status()


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(CLIENT_TOKEN, int(time.time()) + 3600)


class _TokenPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Sets this module's client token (the SDK's own bearer policy refuses plain http)."""

    def on_request(self, request: Any) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {CLIENT_TOKEN}"


async def test_replayed_tampered_and_misdirected_signed_requests_are_401(
    cluster: Cluster,
) -> None:
    b_url, b_id = cluster.urls[1], cluster.engine_ids[1]
    name = (await cluster.a_set_of(1)).split("/")[2]
    target = vmss_path(name, "/rollingUpgrades/cancel") + f"?api-version={API}"
    other_target = image_path("9.9.9") + f"?api-version={API}"

    def signed(access: Access = PLATFORM, to: str = b_id, path: str = target) -> dict[str, str]:
        request = SignedRequest("POST", path, b"", access, "test-peer", to)
        return KEY.sign_request(request)

    async with httpx.AsyncClient(base_url=b_url, trust_env=False) as http:
        good = signed()
        first = await http.post(target, headers=good)
        replayed = await http.post(target, headers=good)
        tampered = await http.post(target, headers=good | {"x-osupgrade-peer-nonce": "0" * 32})
        wrong_sig = await http.post(
            target, headers=signed() | {"x-osupgrade-peer-signature": "0" * 64}
        )
        other_secret = ClusterKey(b"another-cluster-secret-" + b"7" * 32)
        foreign = await http.post(
            target,
            headers=other_secret.sign_request(
                SignedRequest("POST", target, b"", Access(), "x", b_id)
            ),
        )
        misdirected = await http.post(target, headers=signed(to="someone-else"))
        with_body = await http.post(target, headers=signed(), content=b'{"smuggled": true}')
        bare_claim = await http.post(target, headers={"x-osupgrade-peer-from": "test-peer"})
        # the carried access gets the route's role checks, as a token would
        other_tenant = await http.post(target, headers=signed(Access(frozenset({OTHER_SUB}))))
        tenant_publish = await http.put(
            other_target,
            headers=_sign_put(other_target, Access(frozenset({SUB.lower()})), b_id),
        )
    assert first.status_code == 409, first.text  # verified: B's own "nothing to cancel"
    assert "no ongoing Rolling Upgrade" in first.json()["error"]["message"]
    assert replayed.status_code == 401 and "replay" in replayed.json()["error"]["message"]
    for answer in (tampered, wrong_sig, foreign, misdirected, with_body, bare_claim):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "AuthenticationFailed"
    assert other_tenant.status_code == 403
    assert tenant_publish.status_code == 403


def _sign_put(target: str, access: Access, to: str) -> dict[str, str]:
    return KEY.sign_request(SignedRequest("PUT", target, b"", access, "test-peer", to))


def test_the_announcement_and_url_of_a_peer_are_checked_before_use() -> None:
    from engine.api.forward import verified_url  # noqa: PLC0415
    from engine.scaleout.leases import PeerAddress  # noqa: PLC0415

    def address(url: str, engine: str = "b", mac_for: str | None = None) -> PeerAddress:
        return PeerAddress(engine, url, KEY.sign_announcement(engine, mac_for or url))

    assert verified_url(KEY, address("http://127.0.0.1:8081")) == "http://127.0.0.1:8081"
    assert verified_url(KEY, address("HTTPS://Peer.Example:443/")) == "https://peer.example:443"
    # signed by the operator, still not a base URL: refused
    for url in ("http://evil.example:80/x?", "http://u:p@h:1", "http://[::1", "ftp://h:21",
                "http://h", "http://h:1#f", "http://h:1?q=1", "http://0.0.0.0:80"):  # fmt: skip
        assert verified_url(KEY, address(url)) is None, url
    assert verified_url(KEY, address("http://127.0.0.1:1", mac_for="http://127.0.0.1:2")) is None
    assert verified_url(KEY, PeerAddress("b", "http://127.0.0.1:1", None)) is None

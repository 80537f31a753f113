"""A real server on a free port, in a background thread, for tests that drive it over HTTP.

The synchronous azure SDK (and httpx) run in the test's thread; the engine, its workers,
the projection and uvicorn run in the server thread's own event loop. ``call`` runs a
coroutine on that loop (e.g. to read the log's head), ``advance`` moves the virtual
clock through the HTTP API and returns once every piece of work due is done and
projected: tests never sleep.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient

from engine.api.auth import Token
from engine.api.server import ApiServer
from engine.api.service import ServeSettings

T = TypeVar("T")
TOKEN = "test-token"
SUB = "00000000-0000-0000-0000-000000000001"
OTHER_SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-api"
LOCATION = "westeurope"
UBUNTU = ("Canonical", "UbuntuServer", "18.04-LTS")
API = "2026-04-01"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class LiveServer:
    """Handle on a running server thread."""

    def __init__(self, server: ApiServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.url = server.base_url
        self.ca = server.settings.tls_cert  # self-signed: the certificate is its own CA
        self.http = client(self.url, {"Authorization": f"Bearer {TOKEN}"}, self.ca)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def head(self) -> int:
        """The event log's head position."""
        assert self.server.service is not None
        return self.call(self.server.service.store.head())

    def advance(self, seconds: float) -> None:
        """Move the virtual clock; returns when everything due is done and projected."""
        response = self.http.post("/admin/clock/advance", json={"seconds": seconds})
        assert response.status_code == 200, response.text

    def publish(self, version: str, **simulation: int) -> None:
        """Publish an Ubuntu 18.04 image version (with a simulation profile)."""
        body = {"properties": {"simulation": simulation}} if simulation else None
        path = image_path(version)
        response = self.http.put(path, params={"api-version": API}, json=body)
        assert response.status_code == 201, response.text

    def publish_image(self, publisher: str, offer: str, sku: str, version: str) -> None:
        """Publish a version of any platform image in the test location."""
        path = image_path(version, (publisher, offer, sku))
        response = self.http.put(path, params={"api-version": API})
        assert response.status_code == 201, response.text

    def sdk(self) -> ComputeManagementClient:
        """azure-mgmt-compute pointed at this server (plain http, static bearer token)."""
        return ComputeManagementClient(
            _Credential(),
            SUB,
            base_url=self.url,
            authentication_policy=_StaticBearer(),
            polling_interval=0.05,
            retry_total=0,
        )


def client(url: str, headers: dict[str, str], ca: Path | None = None) -> httpx.Client:
    """An httpx client with TCP_NODELAY: without it, a request whose body goes out in a
    second write waits ~40 ms for the server's delayed ACK (Nagle)."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    verify = ssl.create_default_context(cafile=str(ca)) if ca is not None else True
    transport = httpx.HTTPTransport(socket_options=nodelay, verify=verify)
    return httpx.Client(base_url=url, headers=headers, timeout=60, transport=transport)


def image_path(version: str | None = None, image: tuple[str, str, str] = UBUNTU) -> str:
    """The image versions path of ``image`` (Ubuntu 18.04) in the test location."""
    publisher, offer, sku = image
    path = (
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{LOCATION}"
        f"/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
    )
    return path if version is None else f"{path}/{version}"


def vmss_path(name: str, suffix: str = "", sub: str = SUB) -> str:
    """The ARM path of a scale set (plus ``suffix``)."""
    return (
        f"/subscriptions/{sub}/resourceGroups/{RG}/providers/Microsoft.Compute"
        f"/virtualMachineScaleSets/{name}{suffix}"
    )


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(TOKEN, int(time.time()) + 3600)


class _StaticBearer(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Replaces the SDK's bearer policy, which refuses plain http."""

    def on_request(self, request: Any) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {TOKEN}"


@contextmanager
def live_server(tmp_path: Path, **overrides: Any) -> Iterator[LiveServer]:
    """Start a server (virtual clock at ``T0``) on a free port; stop it afterwards."""
    settings = ServeSettings(
        db=tmp_path / "api.sqlite",
        port=0,
        clock="virtual",
        start=T0,
        tokens=(Token(TOKEN), Token("limited-token", frozenset({OTHER_SUB}))),
    )
    server = ApiServer(replace(settings, **overrides))
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: list[asyncio.AbstractEventLoop] = []

    def on_ready(url: str) -> None:
        holder.append(asyncio.get_running_loop())
        ready.set()

    def run() -> None:
        try:
            asyncio.run(server.run(on_ready))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="api-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    if failure:
        raise failure[0]
    live = LiveServer(server, holder[0])
    try:
        yield live
    finally:
        live.http.close()
        server.stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"
        if failure:
            raise failure[0]

"""Two ``osupgrade serve`` processes on one PostgreSQL log: the new ARM operations work
through either. Conditional writes and reimages sent to the server that does not drive
the set are forwarded (``If-Match`` included) to the one that does, and the reimage's
operation status and the instances' new image are read from the log by either server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from engine.api.service import leases_schema
from engine.scaleout.pg_leases import PostgresLeaseBoard
from tests.api.live import API
from tests.backends import pg_dsn
from tests.test_multi_engine_pg import TTL, drop, engine_process

SUB, RG, NAME = "00000000-0000-0000-0000-000000000001", "rg", "shared"
VMSS = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute"
    f"/virtualMachineScaleSets/{NAME}"
)
IMAGES = (
    f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/publishers/Canonical"
    "/artifacttypes/vmimage/offers/UbuntuServer/skus/18.04-LTS/versions"
)
BODY = {
    "location": "westeurope",
    "sku": {"capacity": 2},
    "properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {
        "publisher": "Canonical", "offer": "UbuntuServer", "sku": "18.04-LTS"}}}},
}  # fmt: skip
Q = {"api-version": API}
DEADLINE_S = 30.0


async def until(what: str, check: Any) -> Any:
    """Poll ``check()`` (another process's state) until it returns a truthy value."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)  # another process: nothing here to wait on
    raise AssertionError(f"{what}: not within {DEADLINE_S} s")


async def test_conditional_writes_and_reimage_through_a_server_that_does_not_drive_the_set(
    tmp_path: Path,
) -> None:
    dsn = pg_dsn()
    schema = f"arm_{uuid.uuid4().hex[:8]}"
    try:
        async with AsyncExitStack() as stack:
            servers = [
                await stack.enter_async_context(engine_process(dsn, schema, tmp_path / f"{i}.log"))
                for i in range(2)
            ]
            first = httpx.AsyncClient(base_url=servers[0][1], headers={"Authorization": "Bearer t"})
            await stack.enter_async_context(first)
            assert (await first.put(f"{IMAGES}/1.0.0", params=Q)).status_code == 201
            assert (await first.put(VMSS, params=Q, json=BODY)).status_code == 201
            board = PostgresLeaseBoard(dsn, schema=leases_schema(schema), ttl_s=TTL)
            await stack.enter_async_context(board)
            key = f"{SUB}/{RG}/{NAME}".lower()

            async def owner() -> str | None:
                return (await board.owners()).get(key)

            owned_by = await until("the set is driven", owner)
            other = next(url for process, url in servers if f"-{process.pid}-" not in owned_by)
            http = httpx.AsyncClient(base_url=other, headers={"Authorization": "Bearer t"})
            await stack.enter_async_context(http)

            etag = (await http.get(VMSS, params=Q)).json()["etag"]
            stale = await http.patch(
                VMSS, params=Q, json={"tags": {"a": "1"}}, headers={"If-Match": '"0"'}
            )
            assert stale.status_code == 412, stale.text
            fresh = await http.patch(
                VMSS, params=Q, json={"tags": {"a": "1"}}, headers={"If-Match": etag}
            )
            assert fresh.status_code == 200 and fresh.json()["tags"] == {"a": "1"}

            assert (await http.put(f"{IMAGES}/1.1.0", params=Q)).status_code == 201
            reimage = await http.post(f"{VMSS}/virtualMachines/1/reimage", params=Q)
            assert reimage.status_code == 202, reimage.text
            status_url = httpx.URL(reimage.headers["Azure-AsyncOperation"])
            status = await http.get(status_url.path, params=dict(status_url.params))
            assert status.json()["status"] == "Succeeded"  # read here, from the log

            async def moved() -> bool:
                vm = await http.get(f"{VMSS}/virtualMachines/1", params=Q)
                return bool(vm.json()["properties"]["storageProfile"]["imageReference"][
                    "exactVersion"] == "1.1.0")  # fmt: skip

            await until("this server's projection shows the new image", moved)
    finally:
        await drop(dsn, schema, leases_schema(schema))

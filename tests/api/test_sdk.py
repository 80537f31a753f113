"""azure-mgmt-compute 39 (a client nobody here wrote) drives the server unchanged."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.compute import models as m

from events import PostgresEventStore
from projections.postgres import PostgresTables
from tests.api.live import API, LOCATION, RG, UBUNTU, LiveServer, live_server, vmss_path
from tests.backends import pg_drop_schema, pg_dsn

PROBE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/probes/p"


def scale_set(capacity: int, *, automatic: bool) -> m.VirtualMachineScaleSet:
    """A scale set model as an SDK user writes it."""
    publisher, offer, sku = UBUNTU
    return m.VirtualMachineScaleSet(
        location=LOCATION,
        sku=m.Sku(name="Standard_D2s_v3", capacity=capacity),
        upgrade_policy=m.UpgradePolicy(
            mode="Rolling",
            automatic_os_upgrade_policy=m.AutomaticOSUpgradePolicy(
                enable_automatic_os_upgrade=automatic
            ),
        ),
        virtual_machine_profile=m.VirtualMachineScaleSetVMProfile(
            storage_profile=m.VirtualMachineScaleSetStorageProfile(
                image_reference=m.ImageReference(
                    publisher=publisher, offer=offer, sku=sku, version="latest"
                )
            ),
            network_profile=m.VirtualMachineScaleSetNetworkProfile(
                health_probe=m.ApiEntityReference(id=PROBE)
            ),
        ),
    )


def test_create_update_and_watch_an_automatic_upgrade(server: LiveServer) -> None:
    client = server.sdk()
    vmss = client.virtual_machine_scale_sets
    created = vmss.begin_create_or_update(RG, "web", scale_set(10, automatic=True)).result()
    assert created.provisioning_state == "Succeeded"
    assert created.upgrade_policy.automatic_os_upgrade_policy.enable_automatic_os_upgrade

    update = m.VirtualMachineScaleSetUpdate(
        upgrade_policy=m.UpgradePolicy(
            mode="Rolling",
            rolling_upgrade_policy=m.RollingUpgradePolicy(
                max_batch_instance_percent=50, pause_time_between_batches="PT1M"
            ),
            automatic_os_upgrade_policy=m.AutomaticOSUpgradePolicy(
                enable_automatic_os_upgrade=True, use_rolling_upgrade_policy=True
            ),
        )
    )
    vmss.begin_update(RG, "web", update).result()
    got = vmss.get(RG, "web")
    rolling = got.upgrade_policy.rolling_upgrade_policy
    assert (rolling.max_batch_instance_percent, rolling.pause_time_between_batches) == (50, "PT60S")
    assert got.sku.capacity == 10  # PATCH kept what it did not mention
    assert got.virtual_machine_profile.network_profile.health_probe.id

    server.publish("1.1.0", bootSeconds=60)
    server.advance(4 * 3600)  # first rollout within 3 hours of enabling

    latest = client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, "web")
    assert latest.running_status.code == "Completed"
    assert latest.progress.successful_instance_count == 10
    assert latest.policy.max_batch_instance_percent == 50
    history = list(vmss.get_os_upgrade_history(RG, "web"))
    assert len(history) == 1
    item = history[0].properties
    assert (item.started_by, item.target_image_reference.version) == ("Platform", "1.1.0")
    assert item.running_status.end_time > item.running_status.start_time

    vms = list(client.virtual_machine_scale_set_vms.list(RG, "web", expand="instanceView"))
    assert len(vms) == 10
    assert {vm.storage_profile.image_reference.exact_version for vm in vms} == {"1.1.0"}
    assert {vm.instance_view.vm_health.status.code for vm in vms} == {"HealthState/healthy"}
    assert [s.name for s in vmss.list(RG)] == ["web"]


def test_start_and_cancel_with_pollers(server: LiveServer) -> None:
    client = server.sdk()
    upgrades = client.virtual_machine_scale_set_rolling_upgrades
    client.virtual_machine_scale_sets.begin_create_or_update(
        RG, "app", scale_set(10, automatic=False)
    ).result()
    with pytest.raises(ResourceExistsError, match="There is no ongoing Rolling Upgrade to cancel"):
        upgrades.begin_cancel(RG, "app").result()

    server.publish("1.1.0", bootSeconds=60)
    start = upgrades.begin_start_os_upgrade(RG, "app")
    server.advance(0)  # the first batch is being reimaged; health wait pending
    with pytest.raises(ResourceExistsError):
        upgrades.begin_start_os_upgrade(RG, "app").result()
    cancel = upgrades.begin_cancel(RG, "app")
    server.advance(600)
    assert cancel.result() is None
    with pytest.raises(HttpResponseError) as cancelled:
        start.result()
    assert cancelled.value.error.code == "OperationCanceled"

    latest = upgrades.get_latest(RG, "app")
    assert (latest.running_status.code, latest.running_status.last_action) == (
        "Cancelled",
        "Cancel",
    )
    assert latest.progress.successful_instance_count == 2  # the batch in flight finished
    assert latest.progress.pending_instance_count == 8

    done = upgrades.begin_start_os_upgrade(RG, "app")  # a new one runs to the end
    server.advance(3600)
    assert done.result() is None
    assert upgrades.get_latest(RG, "app").running_status.code == "Completed"
    assert upgrades.get_latest(RG, "app").progress.successful_instance_count == 10


def test_a_faulted_upgrade_fails_its_operation(server: LiveServer) -> None:
    client = server.sdk()
    upgrades = client.virtual_machine_scale_set_rolling_upgrades
    client.virtual_machine_scale_sets.begin_create_or_update(
        RG, "bad", scale_set(5, automatic=False)
    ).result()
    for instance in ("0", "1"):  # 40 % unhealthy: the pre-check refuses to start
        response = server.http.post(
            vmss_path("bad", f"/virtualMachines/{instance}/simulateHealth"),
            params={"api-version": API},
            json={"state": "Unhealthy"},
        )
        assert response.status_code == 200
    server.publish("1.1.0")
    poller = upgrades.begin_start_os_upgrade(RG, "bad")
    server.advance(0)
    with pytest.raises(HttpResponseError) as failed:
        poller.result()
    assert failed.value.error.code == "MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade"


def test_history_pages_through_absolute_next_links(tmp_path: Path) -> None:
    with live_server(tmp_path, history_page_size=2) as server:
        server.publish("1.0.0")
        client = server.sdk()
        client.virtual_machine_scale_sets.begin_create_or_update(
            RG, "paged", scale_set(2, automatic=False)
        ).result()
        for version in ("1.1.0", "1.2.0", "1.3.0"):
            server.publish(version, bootSeconds=10)
            client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, "paged")
            server.advance(3600)

        first = server.http.get(
            vmss_path("paged", "/osUpgradeHistory"), params={"api-version": API}
        )
        page = first.json()
        assert len(page["value"]) == 2
        assert page["nextLink"].startswith(f"{server.url}/subscriptions/")

        history = list(client.virtual_machine_scale_sets.get_os_upgrade_history(RG, "paged"))
        targets = [h.properties.target_image_reference.version for h in history]
        assert targets == ["1.3.0", "1.2.0", "1.1.0"]  # newest first, across two pages
        assert {h.properties.started_by for h in history} == {"User"}


def test_image_versions_and_missing_resources(server: LiveServer) -> None:
    client = server.sdk()
    server.publish("1.2.0")
    versions = client.virtual_machine_images.list(LOCATION, *UBUNTU)
    assert [v.name for v in versions] == ["1.0.0", "1.2.0"]
    newest = client.virtual_machine_images.list(LOCATION, *UBUNTU, top=1, orderby="name desc")
    assert [v.name for v in newest] == ["1.2.0"]
    assert client.virtual_machine_images.get(LOCATION, *UBUNTU, "1.2.0").name == "1.2.0"
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_images.get(LOCATION, *UBUNTU, "9.9.9")
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_scale_sets.get(RG, "nope")
    client.virtual_machine_scale_sets.begin_create_or_update(
        RG, "fresh", scale_set(1, automatic=False)
    ).result()
    with pytest.raises(ResourceNotFoundError):  # never had an upgrade
        client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, "fresh")
    client.virtual_machine_scale_sets.begin_delete(RG, "fresh").result()
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_scale_sets.get(RG, "fresh")


def test_the_sdk_drives_a_server_whose_log_is_postgresql(tmp_path: Path) -> None:
    dsn = pg_dsn()
    schema = f"api_{uuid.uuid4().hex[:12]}"
    with live_server(tmp_path, db=dsn, pg_schema=schema) as server:
        server.publish("1.0.0")
        client = server.sdk()
        vmss = client.virtual_machine_scale_sets
        vmss.begin_create_or_update(RG, "web", scale_set(5, automatic=True)).result()
        server.publish("1.1.0", bootSeconds=60)
        server.advance(4 * 3600)
        latest = client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, "web")
        assert latest.running_status.code == "Completed"
        assert latest.progress.successful_instance_count == 5
        head = server.head()
    asyncio.run(_check_postgres_log(dsn, schema, head))


async def _check_postgres_log(dsn: str, schema: str, head: int) -> None:
    """The log and the projection's checkpoint are in PostgreSQL, and the chain holds."""
    async with PostgresEventStore(dsn, schema=schema) as store:
        try:
            assert await store.head() == head > 0
            assert (await store.verify()).ok
            types = {e.type for e in await store.read_all(limit=10_000)}
            assert {"scaleset.created", "upgrade.completed"} <= types
            checkpoint, _, sets = await PostgresTables(dsn, schema=schema).rows()
            assert checkpoint == head and len(sets) == 1
        finally:
            await pg_drop_schema(store)

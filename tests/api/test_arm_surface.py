"""The ARM surface real clients use, driven by azure-mgmt-compute 39 against a live server.

Tags and identity kept, etags and conditional writes, the instance and listing reads,
reimage and manual upgrade with their long-running operations, the read-only properties
Azure fills in, and bodies shaped by the requested api-version.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.compute import models as m

from engine.domain.grouping import decode_all
from tests.api.live import API, LOCATION, RG, SUB, T0, TOKEN, LiveServer, live_server, vmss_path
from tests.api.live import client as http_client
from tests.api.test_sdk import scale_set

PROBE = (
    "/subscriptions/s/resourceGroups/RG-Net/providers/Microsoft.Network/loadBalancers/LB"
    "/probes/Health"
)
USER_IDENTITY = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/deployer"
)


def manual_set(capacity: int, version: str = "1.0.0", **kwargs: Any) -> m.VirtualMachineScaleSet:
    """A Manual-mode set on a pinned image version (what manualupgrade is for)."""
    model = scale_set(capacity, automatic=False)
    model.upgrade_policy.mode = "Manual"
    model.virtual_machine_profile.storage_profile.image_reference.version = version
    model.virtual_machine_profile.network_profile.health_probe.id = PROBE
    for name, value in kwargs.items():
        setattr(model, name, value)
    return model


def log_types(server: LiveServer, stream: str) -> list[str]:
    """The event types of one stream, groups expanded, in log order."""
    assert server.server.service is not None
    records = server.call(server.server.service.store.read_stream(stream))
    return [type(e).type_name for r in records for e in decode_all(r)]


def test_tags_and_identity_are_kept_in_the_log_and_a_patch_replaces_the_tags(
    tmp_path: Path,
) -> None:
    identity = m.VirtualMachineScaleSetIdentity(
        type="SystemAssigned, UserAssigned",
        user_assigned_identities={USER_IDENTITY: m.UserAssignedIdentitiesValue()},
    )
    with live_server(tmp_path) as server:
        server.publish("1.0.0")
        vmss = server.sdk().virtual_machine_scale_sets
        model = manual_set(2, tags={"env": "prod", "team": "a"}, identity=identity)
        created = vmss.begin_create_or_update(RG, "tagged", model).result()
        assert created.tags == {"env": "prod", "team": "a"}
        assert created.identity.type == "SystemAssigned, UserAssigned"
        assert created.identity.principal_id and created.identity.tenant_id
        assert list(created.identity.user_assigned_identities) == [USER_IDENTITY]

        update = m.VirtualMachineScaleSetUpdate(tags={"env": "test"})
        assert vmss.begin_update(RG, "tagged", update).result().tags == {"env": "test"}
        untouched = m.VirtualMachineScaleSetUpdate(sku=m.Sku(capacity=3))
        patched = vmss.begin_update(RG, "tagged", untouched).result()
        assert patched.tags == {"env": "test"}  # a PATCH without tags keeps them
        assert patched.identity.principal_id == created.identity.principal_id
    with live_server(tmp_path) as server:  # a new process: only the log remembers them
        again = server.sdk().virtual_machine_scale_sets.get(RG, "tagged")
        assert again.tags == {"env": "test"}
        assert again.identity.type == "SystemAssigned, UserAssigned"
        assert again.identity.principal_id == created.identity.principal_id


def test_etag_changes_with_the_model_and_conditional_writes_are_honoured(
    server: LiveServer,
) -> None:
    vmss = server.sdk().virtual_machine_scale_sets
    created = vmss.begin_create_or_update(RG, "cond", manual_set(2)).result()
    assert created.etag == '"1"'
    assert vmss.begin_create_or_update(RG, "cond", manual_set(2)).result().etag == '"1"'

    bigger = m.VirtualMachineScaleSetUpdate(sku=m.Sku(capacity=3))
    updated = vmss.begin_update(
        RG, "cond", bigger, etag='"1"', match_condition=MatchConditions.IfNotModified
    ).result()
    assert updated.etag == '"2"'
    head = server.head()
    with pytest.raises(HttpResponseError) as stale:
        vmss.begin_update(
            RG, "cond", bigger, etag='"1"', match_condition=MatchConditions.IfNotModified
        ).result()
    assert (stale.value.status_code, stale.value.error.code) == (412, "PreconditionFailed")
    with pytest.raises(HttpResponseError) as exists:
        vmss.begin_create_or_update(
            RG, "cond", manual_set(5), match_condition=MatchConditions.IfMissing
        ).result()
    assert exists.value.status_code == 412
    assert server.head() == head  # refused writes wrote nothing
    assert vmss.get(RG, "cond").sku.capacity == 3

    fresh = vmss.begin_create_or_update(
        RG, "new", manual_set(1), match_condition=MatchConditions.IfMissing
    ).result()
    assert fresh.etag == '"1"'
    q = {"api-version": API}
    stale_delete = server.http.delete(vmss_path("cond"), params=q, headers={"If-Match": '"1"'})
    assert stale_delete.status_code == 412
    assert stale_delete.json()["error"]["code"] == "PreconditionFailed"
    assert server.http.delete(vmss_path("cond"), params=q, headers={"If-Match": '"2"'}).status_code
    assert (
        server.http.delete(vmss_path("cond"), params=q, headers={"If-Match": "*"}).status_code
        == 412
    )
    with pytest.raises(ResourceNotFoundError):
        vmss.get(RG, "cond")


def test_instance_reads_listings_and_skus(server: LiveServer) -> None:
    client = server.sdk()
    vmss, vms = client.virtual_machine_scale_sets, client.virtual_machine_scale_set_vms
    vmss.begin_create_or_update(RG, "reads", manual_set(7)).result()

    view = vmss.get_instance_view(RG, "reads")
    assert view.virtual_machine.statuses_summary[0].count == 7
    vm = vms.get(RG, "reads", "6", expand="instanceView")
    assert (vm.instance_id, vm.latest_model_applied) == ("6", True)
    assert vm.storage_profile.os_disk.create_option == "FromImage"
    assert vm.instance_view.vm_health.status.code == "HealthState/healthy"
    instance = vms.get_instance_view(RG, "reads", "6")
    assert (instance.platform_update_domain, instance.platform_fault_domain) == (1, 1)
    with pytest.raises(ResourceNotFoundError):
        vms.get(RG, "reads", "7")

    assert [s.name for s in vmss.list_all()] == ["reads"]
    assert [s.name for s in vmss.list_by_location(LOCATION)] == ["reads"]
    assert list(vmss.list_by_location("northeurope")) == []
    skus = list(vmss.list_skus(RG, "reads"))
    assert "Standard_D2s_v3" in {s.sku.name for s in skus}
    assert {s.resource_type for s in skus} == {"Microsoft.Compute/virtualMachineScaleSets"}


def test_read_only_properties_are_populated_where_azure_populates_them(
    tmp_path: Path,
) -> None:
    with live_server(tmp_path) as server:
        server.publish("1.0.0")
        client = server.sdk()
        vmss = client.virtual_machine_scale_sets
        created = vmss.begin_create_or_update(RG, "ro", manual_set(2)).result()
        assert created.time_created == T0
        assert created.unique_id and vmss.get(RG, "ro").unique_id == created.unique_id
        storage = created.virtual_machine_profile.storage_profile
        assert storage.os_disk.create_option == "FromImage"
        assert created.virtual_machine_profile.network_profile.health_probe.id == PROBE
        server.advance(3600)
        vmss.begin_update(RG, "ro", m.VirtualMachineScaleSetUpdate(sku=m.Sku(capacity=3))).result()
        vms = {vm.instance_id: vm for vm in client.virtual_machine_scale_set_vms.list(RG, "ro")}
        assert vms["0"].time_created == T0
        assert vms["2"].time_created > T0  # scaled out an hour later
        assert {vm.latest_model_applied for vm in vms.values()} == {True}
    with live_server(tmp_path) as server:  # the same ids after a restart: from the log
        again = server.sdk().virtual_machine_scale_sets.get(RG, "ro")
        assert (again.unique_id, again.time_created) == (created.unique_id, T0)
        vmss = server.sdk().virtual_machine_scale_sets
        vmss.begin_delete(RG, "ro").result()
        recreated = vmss.begin_create_or_update(RG, "ro", manual_set(1)).result()
        assert recreated.unique_id != created.unique_id  # a new resource of the same name


def test_manual_upgrade_gives_the_model_image_to_the_instances_asked_for(
    server: LiveServer,
) -> None:
    client = server.sdk()
    vmss, vms = client.virtual_machine_scale_sets, client.virtual_machine_scale_set_vms
    vmss.begin_create_or_update(RG, "man", manual_set(4)).result()
    server.publish("1.1.0")
    model = manual_set(4, version="1.1.0")
    vmss.begin_create_or_update(RG, "man", model).result()
    applied = {vm.instance_id: vm.latest_model_applied for vm in vms.list(RG, "man")}
    assert applied == dict.fromkeys("0123", False)

    ids = m.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0", "2"])
    assert vmss.begin_update_instances(RG, "man", ids).result() is None
    after = {vm.instance_id: vm for vm in vms.list(RG, "man")}
    assert {i: vm.latest_model_applied for i, vm in after.items()} == {
        "0": True, "1": False, "2": True, "3": False
    }  # fmt: skip
    assert after["0"].storage_profile.image_reference.exact_version == "1.1.0"
    assert after["1"].storage_profile.image_reference.exact_version == "1.0.0"
    stream = "vmss-" + f"{SUB}/{RG}/man".lower()
    types = log_types(server, stream)
    assert types[-2:] == ["scaleset.reimage_requested", "scaleset.reimage_finished"]

    everyone = m.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["*"])
    vmss.begin_update_instances(RG, "man", everyone).result()
    assert {vm.latest_model_applied for vm in vms.list(RG, "man")} == {True}
    bad = m.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["9"])
    with pytest.raises(HttpResponseError) as missing:
        vmss.begin_update_instances(RG, "man", bad).result()
    assert (missing.value.status_code, missing.value.error.target) == (400, "instanceIds")


def test_reimage_puts_the_newest_image_of_a_latest_model_on_the_instances(
    server: LiveServer,
) -> None:
    client = server.sdk()
    vmss, vms = client.virtual_machine_scale_sets, client.virtual_machine_scale_set_vms
    vmss.begin_create_or_update(RG, "re", scale_set(4, automatic=False)).result()
    server.publish("1.1.0")

    vms.begin_reimage(RG, "re", "3").result()
    one = m.VirtualMachineScaleSetReimageParameters(instance_ids=["1"])
    vmss.begin_reimage(RG, "re", vm_scale_set_reimage_input=one).result()
    versions = {
        vm.instance_id: vm.storage_profile.image_reference.exact_version
        for vm in vms.list(RG, "re")
    }
    assert versions == {"0": "1.0.0", "1": "1.1.0", "2": "1.0.0", "3": "1.1.0"}
    vmss.begin_reimage(RG, "re").result()  # no ids: every instance
    assert {vm.storage_profile.image_reference.exact_version for vm in vms.list(RG, "re")} == {
        "1.1.0"
    }
    stream = "vmss-" + f"{SUB}/{RG}/re".lower()
    assert log_types(server, stream).count("scaleset.reimage_finished") == 3
    back = m.VirtualMachineScaleSetVMReimageParameters(exact_version="1.0.0")
    vms.begin_reimage(RG, "re", "2", vm_scale_set_vm_reimage_input=back).result()
    assert vms.get(RG, "re", "2").storage_profile.image_reference.exact_version == "1.0.0"
    unknown = m.VirtualMachineScaleSetReimageParameters(exact_version="9.9.9")
    with pytest.raises(HttpResponseError) as unpublished:
        vmss.begin_reimage(RG, "re", vm_scale_set_reimage_input=unknown).result()
    assert (unpublished.value.status_code, unpublished.value.error.target) == (400, "exactVersion")

    server.advance(120)  # the reimaged instances have booted
    server.publish("1.2.0", bootSeconds=60)
    upgrades = client.virtual_machine_scale_set_rolling_upgrades
    upgrades.begin_start_os_upgrade(RG, "re")
    server.advance(0)
    with pytest.raises(ResourceExistsError, match="rolling upgrade is in progress"):
        vms.begin_reimage(RG, "re", "0").result()


def test_bodies_follow_the_requested_api_version(server: LiveServer) -> None:
    vmss = server.sdk().virtual_machine_scale_sets
    vmss.begin_create_or_update(RG, "ver", manual_set(1)).result()

    def get(version: str, suffix: str = "") -> dict[str, Any]:
        response = server.http.get(vmss_path("ver", suffix), params={"api-version": version})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    new, old = get("2024-03-01"), get("2021-07-01")
    rolling = "rollingUpgradePolicy"
    assert "etag" in new and "etag" not in old
    assert "timeCreated" in new["properties"] and "timeCreated" not in old["properties"]
    assert "maxSurge" in new["properties"]["upgradePolicy"][rolling]
    assert "maxSurge" not in old["properties"]["upgradePolicy"][rolling]
    assert "maxSurge" not in get("2022-08-01")["properties"]["upgradePolicy"][rolling]
    assert "maxSurge" in get("2022-11-01")["properties"]["upgradePolicy"][rolling]
    vm_new, vm_old = (
        get("2024-03-01", "/virtualMachines/0"),
        get("2019-03-01", "/virtualMachines/0"),
    )
    assert "exactVersion" in vm_new["properties"]["storageProfile"]["imageReference"]
    assert "exactVersion" not in vm_old["properties"]["storageProfile"]["imageReference"]
    assert "timeCreated" not in get("2023-03-01", "/virtualMachines/0")["properties"]
    assert "timeCreated" in get("2023-07-01", "/virtualMachines/0")["properties"]


def test_an_approval_operation_starts_when_it_is_given(server: LiveServer) -> None:
    client = server.sdk()
    model = scale_set(4, automatic=False)
    model.upgrade_policy.automatic_os_upgrade_policy.os_rolling_upgrade_deferral = True
    client.virtual_machine_scale_sets.begin_create_or_update(RG, "defer", model).result()
    server.publish("1.1.0")
    upgrades = client.virtual_machine_scale_set_rolling_upgrades
    upgrades.begin_start_os_upgrade(RG, "defer")
    server.advance(0)
    server.advance(600)
    response = server.http.post(
        vmss_path("defer", "/approveRollingUpgrade"), params={"api-version": API}
    )
    assert response.status_code == 202
    status = server.http.get(response.headers["Azure-AsyncOperation"]).json()
    assert status["status"] == "Succeeded"
    assert status["startTime"].startswith("2026-03-01T08:10:00")  # not the upgrade's 08:00
    server.advance(60)
    again = server.http.post(
        vmss_path("defer", "/approveRollingUpgrade"), params={"api-version": API}
    )
    later = server.http.get(again.headers["Azure-AsyncOperation"]).json()
    assert later["startTime"].startswith("2026-03-01T08:11:00")  # each approval its own


def test_upgrade_views_follow_the_requested_api_version(server: LiveServer) -> None:
    client = server.sdk()
    client.virtual_machine_scale_sets.begin_create_or_update(
        RG, "views", scale_set(2, automatic=False)
    ).result()
    server.publish("1.1.0")
    client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, "views")
    server.advance(600)

    def get(suffix: str, version: str) -> dict[str, Any]:
        response = server.http.get(vmss_path("views", suffix), params={"api-version": version})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    policy_new = get("/rollingUpgrades/latest", "2024-03-01")["properties"]["policy"]
    policy_old = get("/rollingUpgrades/latest", "2021-07-01")["properties"]["policy"]
    assert "maxSurge" in policy_new and "maxSurge" not in policy_old
    assert "prioritizeUnhealthyInstances" in policy_old  # defined since 2020-12-01
    target = "targetImageReference"
    new = get("/osUpgradeHistory", "2024-03-01")["value"][0]["properties"][target]
    old = get("/osUpgradeHistory", "2019-03-01")["value"][0]["properties"][target]
    assert (new["exactVersion"], "exactVersion" in old) == ("1.1.0", False)


def test_a_failed_reimage_fails_its_operation(server: LiveServer) -> None:
    client = server.sdk()
    vmss = client.virtual_machine_scale_sets
    vmss.begin_create_or_update(RG, "bad", scale_set(2, automatic=False)).result()
    server.publish("1.1.0", reimageFailurePercent=100)
    with pytest.raises(HttpResponseError) as failed:
        vmss.begin_reimage(RG, "bad").result()
    assert failed.value.error.code == "OSProvisioningTimedOut"
    versions = {
        vm.storage_profile.image_reference.exact_version
        for vm in client.virtual_machine_scale_set_vms.list(RG, "bad")
    }
    assert versions == {"1.0.0"}  # nothing changed on a failed reimage


def test_of_concurrent_writers_holding_one_etag_exactly_one_wins(server: LiveServer) -> None:
    vmss = server.sdk().virtual_machine_scale_sets
    vmss.begin_create_or_update(RG, "race", manual_set(1)).result()
    q = {"api-version": API}

    def patch(n: int) -> int:
        with http_client(server.url, {"Authorization": f"Bearer {TOKEN}"}) as http:
            body = {"tags": {"writer": str(n)}}
            return http.patch(
                vmss_path("race"), params=q, json=body, headers={"If-Match": '"1"'}
            ).status_code

    def create(n: int) -> int:
        with http_client(server.url, {"Authorization": f"Bearer {TOKEN}"}) as http:
            body = http.get(vmss_path("race"), params=q).json()
            return http.put(
                vmss_path("new"), params=q, json=body, headers={"If-None-Match": "*"}
            ).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        patched = sorted(pool.map(patch, range(6)))
        created = sorted(pool.map(create, range(6)))
    assert patched == [200] + [412] * 5
    assert created == [201] + [412] * 5
    assert vmss.get(RG, "race").etag == '"2"'

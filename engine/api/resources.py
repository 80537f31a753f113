"""Domain values -> ARM resource bodies (``VirtualMachineScaleSet``, VMs, image versions).

``render_scale_set`` is the inverse of ``parsing.parse_scale_set``: PATCH merges its body
onto the rendered model and parses the result, so the two must round-trip.
"""

from __future__ import annotations

from typing import Any

from engine.api.envelope import render_identity, render_tags
from engine.domain.model import Health, ScaleSetSpec, UpgradePolicy
from engine.domain.scale_set import ScaleSetState
from engine.runtime.reimaging import runs_model
from projections.fleet_view import InstanceView
from projections.upgrade_view import rfc3339

JSON = dict[str, Any]
VMSS_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
FAULT_DOMAINS = 5
_HEALTH_CODES = {
    Health.HEALTHY: "HealthState/healthy",
    Health.UNHEALTHY: "HealthState/unhealthy",
    Health.INITIALIZING: "HealthState/initializing",
    Health.UNKNOWN: "HealthState/unknown",
}


def scale_set_id(subscription: str, resource_group: str, name: str) -> str:
    """The ARM id of a scale set (also the API path prefix)."""
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/{VMSS_TYPE}/{name}"
    )


def render_policy(policy: UpgradePolicy) -> JSON:
    """``properties.upgradePolicy`` with every field present."""
    r, a = policy.rolling, policy.automatic
    return {
        "mode": policy.mode,
        "rollingUpgradePolicy": {
            "maxBatchInstancePercent": r.max_batch_instance_percent,
            "maxUnhealthyInstancePercent": r.max_unhealthy_instance_percent,
            "maxUnhealthyUpgradedInstancePercent": r.max_unhealthy_upgraded_instance_percent,
            "pauseTimeBetweenBatches": f"PT{r.pause_time_between_batches_s}S",
            "prioritizeUnhealthyInstances": r.prioritize_unhealthy_instances,
            "enableCrossZoneUpgrade": r.enable_cross_zone_upgrade,
            "maxSurge": r.max_surge,
            "rollbackFailedInstancesOnPolicyBreach": r.rollback_failed_instances_on_policy_breach,
        },
        "automaticOSUpgradePolicy": {
            "enableAutomaticOSUpgrade": a.enable_automatic_os_upgrade,
            "disableAutomaticRollback": a.disable_automatic_rollback,
            "useRollingUpgradePolicy": a.use_rolling_upgrade_policy,
            "osRollingUpgradeDeferral": a.os_rolling_upgrade_deferral,
        },
    }


def render_scale_set(spec: ScaleSetSpec, state: ScaleSetState | None = None) -> JSON:
    """The ``VirtualMachineScaleSet`` resource as GET returns it.

    With the folded ``state``, the read-only parts the log decides are added: ``etag``,
    ``uniqueId`` and ``timeCreated`` (PATCH merges onto the model without them).
    """
    ident = scale_set_id(spec.subscription, spec.resource_group, spec.name)
    body: JSON = {
        "id": ident,
        "name": spec.name,
        "type": VMSS_TYPE,
        "location": spec.location,
        "sku": {"name": spec.sku, "tier": "Standard", "capacity": spec.capacity},
        "properties": {
            "upgradePolicy": render_policy(spec.policy),
            "virtualMachineProfile": _vm_profile(spec, ident),
            "provisioningState": "Succeeded",
            "orchestrationMode": "Uniform",
        },
    }
    if spec.zones:
        body["zones"] = list(spec.zones)
    if spec.tags:
        body["tags"] = render_tags(spec.tags)
    if state is not None:
        body["etag"] = etag(state)
        body["properties"]["uniqueId"] = state.unique_id
        if state.created_at is not None:
            body["properties"]["timeCreated"] = rfc3339(state.created_at)
    if spec.identity is not None:
        body["identity"] = render_identity(spec.identity, state.unique_id if state else "")
    return body


def etag(state: ScaleSetState) -> str:
    """The scale set's etag: a quoted counter of model changes, as Compute writes it."""
    return f'"{state.model_generation}"'


def _vm_profile(spec: ScaleSetSpec, ident: str) -> JSON:
    image = spec.image
    reference: JSON = (
        {"id": image.id}
        if image.is_gallery
        else {
            "publisher": image.publisher,
            "offer": image.offer,
            "sku": image.sku,
            "version": image.version,
        }
    )
    storage: JSON = {
        "imageReference": reference,
        "osDisk": {"osType": spec.os_type, "createOption": "FromImage"},
    }
    if spec.data_disks:
        storage["dataDisks"] = [
            {"lun": d.lun, "diskSizeGB": d.size_gb, "createOption": "Empty"}
            for d in spec.data_disks
        ]
    profile: JSON = {"storageProfile": storage}
    if spec.os_type == "Windows":
        windows: JSON = {}
        if spec.enable_automatic_updates is not None:
            windows["enableAutomaticUpdates"] = spec.enable_automatic_updates
        profile["osProfile"] = {"windowsConfiguration": windows}
    if spec.health_probe:  # as sent; logs from before the id was kept: name one
        probe = spec.health_probe_id or f"{ident}-lb/probes/health".replace(
            VMSS_TYPE, "Microsoft.Network/loadBalancers"
        )
        profile["networkProfile"] = {"healthProbe": {"id": probe}}
    extensions = _extensions(spec)
    if extensions:
        profile["extensionProfile"] = {"extensions": extensions}
    return profile


def _extensions(spec: ScaleSetSpec) -> list[JSON]:
    out: list[JSON] = []
    health = spec.health_extension
    if health is not None:
        settings: JSON = {
            "intervalInSeconds": health.interval_s,
            "numberOfProbes": health.number_of_probes,
        }
        if health.grace_period_s is not None:
            settings["gracePeriod"] = health.grace_period_s
        kind = "ApplicationHealthWindows" if spec.os_type == "Windows" else "ApplicationHealthLinux"
        out.append(_extension("ApplicationHealth", "Microsoft.ManagedServices", kind, settings))
    if spec.service_fabric:
        settings = {"durabilityLevel": spec.service_fabric_durability or "Bronze"}
        fabric = _extension(
            "ServiceFabricNode", "Microsoft.Azure.ServiceFabric", "ServiceFabricNode", settings
        )
        fabric["properties"]["typeHandlerVersion"] = "1.1"
        out.append(fabric)
    for ext in spec.extensions:
        settings = {}
        if ext.credential_expires_at is not None:
            settings["credentialExpiresAt"] = ext.credential_expires_at.isoformat()
        item = _extension(ext.name, ext.publisher, ext.type, settings)
        if ext.provision_after:
            item["properties"]["provisionAfterExtensions"] = list(ext.provision_after)
        out.append(item)
    return out


def _extension(name: str, publisher: str, kind: str, settings: JSON) -> JSON:
    return {
        "name": name,
        "properties": {"publisher": publisher, "type": kind, "settings": settings},
    }


def render_instance(
    spec: ScaleSetSpec,
    instance_id: str,
    view: InstanceView,
    health: Health | None,
    state: ScaleSetState | None = None,
) -> JSON:
    """One ``VirtualMachineScaleSetVM``; ``health`` given means ``$expand=instanceView``."""
    ident = scale_set_id(spec.subscription, spec.resource_group, spec.name)
    image = spec.image
    reference: JSON = (
        {"id": image.id}
        if image.is_gallery
        else {"publisher": image.publisher, "offer": image.offer, "sku": image.sku,
              "version": image.version}
    )  # fmt: skip
    reference["exactVersion"] = view.version
    properties: JSON = {
        "latestModelApplied": runs_model(spec, view.version),
        "provisioningState": "Succeeded",
        "storageProfile": {
            "imageReference": reference,
            "osDisk": {"osType": spec.os_type, "createOption": "FromImage"},
        },
    }
    created = state.instances_created.get(instance_id) if state is not None else None
    if created is not None:
        properties["timeCreated"] = rfc3339(created)
    if health is not None:
        properties["instanceView"] = render_instance_view(spec, instance_id, health)
    body: JSON = {
        "id": f"{ident}/virtualMachines/{instance_id}",
        "name": f"{spec.name}_{instance_id}",
        "instanceId": instance_id,
        "type": f"{VMSS_TYPE}/virtualMachines",
        "location": spec.location,
        "sku": {"name": spec.sku, "tier": "Standard"},
        "properties": properties,
    }
    if spec.zones:
        body["zones"] = [spec.zone_of(instance_id)]
    return body


def render_instance_view(spec: ScaleSetSpec, instance_id: str, health: Health | None) -> JSON:
    """``VirtualMachineScaleSetVMInstanceView``: domains, statuses, and health when known."""
    body: JSON = {
        "platformUpdateDomain": spec.update_domain_of(instance_id),
        "platformFaultDomain": fault_domain_of(spec, instance_id),
        "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info",
                      "displayStatus": "Provisioning succeeded"},
                     {"code": "PowerState/running", "level": "Info",
                      "displayStatus": "VM running"}],
    }  # fmt: skip
    if health is not None:
        body["vmHealth"] = {
            "status": {
                "code": _HEALTH_CODES[health],
                "level": "Info",
                "displayStatus": f"The VM health is {health.value}",
            }
        }
    return body


def fault_domain_of(spec: ScaleSetSpec, instance_id: str) -> int:
    """Azure spreads a regional set over 5 fault domains; a zonal one has 1 per zone."""
    return 0 if spec.zones else int(instance_id) % FAULT_DOMAINS


def image_version_id(
    subscription: str, location: str, publisher: str, offer: str, sku: str, version: str
) -> str:
    """ARM's id of a platform image version (its own capitalisation, as Azure returns it)."""
    return (
        f"/Subscriptions/{subscription}/Providers/Microsoft.Compute/Locations/{location}"
        f"/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}"
        f"/Versions/{version}"
    )


def render_image_version(
    subscription: str, location: str, family: tuple[str, str, str], version: str, *, full: bool
) -> JSON:
    """``VirtualMachineImageResource`` (list item) or ``VirtualMachineImage`` (``full``)."""
    body: JSON = {
        "name": version,
        "location": location,
        "id": image_version_id(subscription, location, *family, version),
    }
    if full:
        body["properties"] = {
            "osDiskImage": {
                "operatingSystem": "Windows" if "windows" in family[1].lower() else "Linux"
            },
            "dataDiskImages": [],
            "architecture": "x64",
        }
    return body

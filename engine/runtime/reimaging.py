"""Reimage and manual upgrade: a worker's commands that replace OS disks outside upgrades.

``POST VMSS/reimage`` (and per instance) puts the model's image on the instances again
(its newest version when the model says ``latest``); ``POST VMSS/manualupgrade`` gives
the model's image to the instances that do not run it. Both run in the scale set's
worker like an upgrade's batch: the intent (``ReimageRequested``) is committed before
the fleet is touched, the fleet's answers are recorded as ``ReimageFinished``. A worker
that finds an intent without its result when it loads carries it out again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from engine.domain.catalog import Catalog
from engine.domain.events import ReimageFinished, ReimageRequested
from engine.domain.model import ImageReference, ScaleSetSpec, version_key
from engine.domain.reimage import ReimageOperation, reimage_operation_id
from engine.domain.scale_set import OperationNotAllowedError, ScaleSetState
from engine.domain.validation import InvalidParameterError
from engine.runtime.fleet import BatchFleet, Reimage, ReimageOutcome

if TYPE_CHECKING:
    from engine.runtime.worker import ScaleSetWorker

log = structlog.get_logger("osupgrade.reimage")

KINDS = ("reimage", "manualupgrade")


def runs_model(spec: ScaleSetSpec, version: str) -> bool:
    """ARM's ``latestModelApplied`` for the image: the instance runs the model's image.

    A model that says ``latest`` (or a gallery image) is applied by any version: a newer
    one reaches the instances through OS image upgrades, not through the model.
    """
    image = spec.image
    return image.is_gallery or image.version.lower() == "latest" or version == image.version


async def request_reimage(
    worker: ScaleSetWorker,
    catalog: Catalog,
    kind: str,
    instance_ids: Sequence[str] | None,
    exact_version: str | None = None,
) -> str:
    """Record the intent, carry it out, record the result; return the operation id.

    ``exact_version`` (a reimage's ``exactVersion``) installs that published version of
    the model's image instead of the model's own.
    """
    state = worker.state
    spec = state.spec
    assert spec is not None and kind in KINDS
    if worker.upgrade is not None:
        raise OperationNotAllowedError(
            f"Operation '{kind}' is not allowed on Virtual Machine Scale Set '{spec.name}' "
            "while a rolling upgrade is in progress."
        )
    chosen = _chosen(state, instance_ids)
    if kind == "reimage":
        version = exact_version or _model_version(spec, catalog, state)
        _check_published(spec, catalog, version)
    else:
        version = spec.image.version if not runs_model(spec, "") else ""
        chosen = [i for i in chosen if not runs_model(spec, state.instance_versions[i])]
    operation_id = reimage_operation_id(spec.key, state.version)
    intent = ReimageRequested(operation_id, kind, tuple(chosen), version)
    await worker.append_set(intent, actor="User")
    await carry_out(worker, worker.state.reimages.operations[operation_id])
    return operation_id


def _model_version(spec: ScaleSetSpec, catalog: Catalog, state: ScaleSetState) -> str:
    """The version a reimage installs: the model's, or the newest when it says latest."""
    if not spec.image.is_gallery and spec.image.version.lower() != "latest":
        return spec.image.version
    latest = catalog.latest(spec.image, spec.location)
    if latest is not None:
        return latest
    return max(state.instance_versions.values(), key=version_key)


def _check_published(spec: ScaleSetSpec, catalog: Catalog, version: str) -> None:
    image = spec.image
    if image.is_gallery:
        return  # a gallery reimage always takes the model's (latest replicated) version
    if version not in catalog.versions(spec.location, image.publisher, image.offer, image.sku):
        raise InvalidParameterError(
            "exactVersion", f"version {version} of the model's image is not published here"
        )


def _chosen(state: ScaleSetState, instance_ids: Sequence[str] | None) -> list[str]:
    """The instances asked for (all when None or ``["*"]``), in id order."""
    known = state.instance_versions
    if instance_ids is None or list(instance_ids) == ["*"]:
        return sorted(known, key=int)
    unknown = [i for i in instance_ids if i not in known]
    if unknown:
        raise InvalidParameterError(
            "instanceIds", f"the scale set has no instance {', '.join(unknown[:5])}"
        )
    return sorted(set(instance_ids), key=int)


async def carry_out(worker: ScaleSetWorker, operation: ReimageOperation) -> None:
    """Reimage through the fleet (the intent committed first), then record the results."""
    await worker.flush()
    spec = worker.state.spec
    assert spec is not None
    request = operation.request
    image = spec.image
    target = ImageReference(image.publisher, image.offer, image.sku, request.version, image.id)
    ops = [Reimage(i, target, f"{request.operation_id}/{i}/reimage") for i in request.instance_ids]
    fleet = worker.ctx.fleet
    outcomes: Sequence[object]
    if isinstance(fleet, BatchFleet):
        outcomes = await fleet.apply(spec, ops)
    else:
        outcomes = await asyncio.gather(
            *(fleet.reimage(spec, op.instance_id, op.image, op.operation_id) for op in ops)
        )
    reimaged, failed = {}, {}
    for op, outcome in zip(ops, outcomes, strict=True):
        assert isinstance(outcome, ReimageOutcome)
        if outcome.ok:
            reimaged[op.instance_id] = request.version
        else:
            failed[op.instance_id] = outcome.error
    await worker.append_set(ReimageFinished(request.operation_id, reimaged, failed))
    log.info(
        "instances reimaged",
        scale_set=spec.key,
        operation_id=request.operation_id,
        kind=request.kind,
        version=request.version,
        reimaged=len(reimaged),
        failed=len(failed),
    )

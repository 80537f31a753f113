"""``If-Match`` / ``If-None-Match`` on scale set writes: optimistic concurrency for clients.

A client that read etag ``"3"`` and sends ``If-Match: "3"`` gets its PUT, PATCH or
DELETE applied only if nobody changed the model since; ``If-None-Match: *`` creates
only. The check runs inside the scale set's worker, in the same step as the write, so
two clients racing on one etag cannot both win. A failed check is 412
``PreconditionFailed`` and writes nothing.
"""

from __future__ import annotations

from starlette.requests import Request

from engine.api.errors import ApiError
from engine.api.resources import etag
from engine.domain.scale_set import ScaleSetState
from engine.runtime.engine import Precondition


def precondition(request: Request) -> Precondition | None:
    """The request's conditions as a check of the current state (None: unconditional)."""
    if_match = request.headers.get("if-match")
    if_none_match = request.headers.get("if-none-match")
    if if_match is None and if_none_match is None:
        return None

    def check(state: ScaleSetState | None) -> None:
        live = state if state is not None and state.spec is not None else None
        live = None if live is not None and live.deleted else live
        if if_none_match is not None and _matches(if_none_match, live):
            raise failed()
        if if_match is not None and not _matches(if_match, live):
            raise failed()

    return check


def _matches(header: str, state: ScaleSetState | None) -> bool:
    """Whether the header's list (``*`` or etags) matches the current resource."""
    if state is None:
        return False
    wanted = [tag.strip() for tag in header.split(",")]
    current = etag(state)
    return "*" in wanted or any(_bare(tag) == _bare(current) for tag in wanted)


def _bare(tag: str) -> str:
    """An etag without a weak prefix or quotes: clients send ``"3"``, ``3`` or ``W/"3"``."""
    return tag.removeprefix("W/").strip('"')


def failed() -> ApiError:
    """ARM's answer to a condition that does not hold."""
    return ApiError(
        412,
        "PreconditionFailed",
        "The condition specified using HTTP conditional header(s) is not met.",
    )

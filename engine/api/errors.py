"""ARM error bodies: ``{"error": {"code", "message", "target", "details"}}``.

Every refusal goes through ``ApiError`` so that status, code and shape stay the ones
azure-mgmt-compute maps to its exceptions (401 -> ClientAuthenticationError, 404 ->
ResourceNotFoundError, 409 -> ResourceExistsError, others -> HttpResponseError). Only
503 ``ServiceUnavailable`` (the event log is unreachable or full) carries
``Retry-After``: azure-core retries any error that has one, which is right for it alone.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from engine.domain.scale_set import OperationNotAllowedError
from engine.domain.validation import InvalidParameterError
from engine.runtime.engine import (
    CommandConflictError,
    NotOwnedHereError,
    ScaleSetNotFoundError,
    WorkerCrashedError,
    WorkerRestartingError,
)
from engine.runtime.worker import WorkerGoneError
from events import StoreClosedError, StoreFullError, StoreUnavailableError

RETRY_AFTER_S = 5  # what a 503 asks clients to wait before trying again


class ApiError(Exception):
    """A refused request: HTTP status plus the ARM error code, message and target."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """The ARM-shaped JSON response for this error (a 503 with ``Retry-After``)."""
        if self.status == 503:
            headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
        return json_response(error_body(self.code, self.message, self.target), self.status, headers)


def error_body(code: str, message: str, target: str | None = None) -> dict[str, Any]:
    """``CloudError``: the body of every error response and of a failed operation."""
    return {"error": {"code": code, "message": message, "target": target, "details": []}}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON via orjson: several times cheaper than ``json.dumps`` on the hot read paths."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def invalid(target: str, message: str) -> ApiError:
    """400 ``InvalidParameter`` naming the offending property."""
    return ApiError(400, "InvalidParameter", message, target)


def not_found(message: str) -> ApiError:
    """404 ``ResourceNotFound``."""
    return ApiError(404, "ResourceNotFound", message)


def scale_set_not_found(resource_group: str, name: str) -> ApiError:
    """ARM's wording for a missing scale set."""
    return not_found(
        f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' under resource "
        f"group '{resource_group}' was not found."
    )


def from_domain(exc: Exception) -> ApiError | None:
    """Translate the engine's refusals; None for anything unexpected (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidParameterError):
        return invalid(exc.target, exc.message)
    if isinstance(exc, WorkerRestartingError):  # the database is back soon: retry
        return unavailable(exc.cause)
    if isinstance(exc, (StoreUnavailableError, StoreClosedError)):
        return unavailable(exc)
    for kinds, status, code in _REFUSALS:
        if isinstance(exc, kinds):
            return ApiError(status, code, str(exc))
    return None


_REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str], ...] = (
    (ScaleSetNotFoundError, 404, "ResourceNotFound"),
    # several servers share the log: the client asks again (the owner, once one is live)
    ((OperationNotAllowedError, NotOwnedHereError), 409, "OperationNotAllowed"),
    ((CommandConflictError, WorkerGoneError), 409, "Conflict"),  # raced a change: retry
    # The set's worker stopped on a bug (logged when it happened): the command was not
    # carried out, and a restart of the server starts the worker again from the log.
    (WorkerCrashedError, 409, "Conflict"),
)


def unavailable(cause: Exception | None) -> ApiError:
    """503 ``ServiceUnavailable``, saying whether the event log is full or unreachable.

    Nothing was written (or, for a lost ``COMMIT``, a retry of the request is safe);
    reads keep answering from what the server last folded.
    """
    if isinstance(cause, StoreFullError):
        message = (
            "The event log is full: no change can be recorded until space is freed. "
            "Reads still answer. Retry later."
        )
    elif isinstance(cause, StoreClosedError):
        message = "The server is shutting down. Retry, on another server if there is one."
    else:
        message = (
            "The event log is unreachable: no change can be recorded until the database "
            "answers again. Reads still answer. Retry later."
        )
    return ApiError(503, "ServiceUnavailable", message)

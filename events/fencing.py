"""Fencing tokens: how the log refuses appends from an engine that lost its lease.

A lease alone cannot stop a paused engine (GC, SIGSTOP, a partition) from appending
after another engine took its scale set over. So every lease change hands out a higher
token, the owner passes ``Fence(scope, token)`` with each append, and the store refuses
an append whose token is lower than one it already recorded for that scope, checked in
the same transaction as the insert. Whatever the old owner's clock says, once the new
owner has appended, the old owner's writes are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.errors import FencedError, InvalidFenceError

MAX_SCOPE_LENGTH = 200
MAX_TOKEN = 2**63 - 1  # fits the durable backends' 64-bit integer columns


@dataclass(frozen=True, slots=True)
class Fence:
    """``append(..., fence=Fence(scope, token))``: refused if ``scope`` has seen a higher token.

    ``scope`` names what one lease covers (a scale set's key); ``token`` is the lease's
    fencing token. Validated here, so a bad fence fails at the caller, not in the writer.
    """

    scope: str
    token: int

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not self.scope:
            raise InvalidFenceError(f"fence scope must be a non-empty str, got {self.scope!r}")
        if len(self.scope) > MAX_SCOPE_LENGTH:
            raise InvalidFenceError(
                f"fence scope is {len(self.scope)} characters; the limit is {MAX_SCOPE_LENGTH}"
            )
        if "\x00" in self.scope:
            raise InvalidFenceError("fence scope must not contain NUL characters")
        if isinstance(self.token, bool) or not isinstance(self.token, int):
            raise InvalidFenceError(f"fencing token must be an int, got {self.token!r}")
        if not 0 <= self.token <= MAX_TOKEN:
            raise InvalidFenceError(f"fencing token must be in 0..2**63-1, got {self.token}")


def check_fence(fence: object) -> Fence | None:
    """Return ``fence`` if it is ``None`` or a ``Fence``, else raise (a tuple is a mistake)."""
    if fence is None or isinstance(fence, Fence):
        return fence
    raise InvalidFenceError(f"fence must be a Fence or None, not {type(fence).__name__}")


def check_scope(scope: object) -> str:
    """Return ``scope`` if a ``Fence`` could name it (for ``fence_token``), else raise."""
    return Fence(scope, 0).scope  # type: ignore[arg-type]


def fence_refusal(fence: Fence | None, recorded: dict[str, int]) -> FencedError | None:
    """The ``FencedError`` for ``fence`` if ``recorded`` holds a higher token, else ``None``."""
    if fence is None:
        return None
    current = recorded.get(fence.scope, 0)
    if fence.token < current:
        return FencedError(fence.scope, fence.token, current)
    return None


def record(fence: Fence | None, recorded: dict[str, int]) -> None:
    """Raise ``fence.scope``'s recorded token to ``fence.token`` if that is higher."""
    if fence is not None and fence.token > recorded.get(fence.scope, 0):
        recorded[fence.scope] = fence.token

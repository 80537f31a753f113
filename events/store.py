"""The ``EventStore`` protocol: the one interface every backend implements.

The engine and the projections depend on this protocol only; backends (in-memory,
SQLite, later PostgreSQL) are interchangeable and pass the same contract test suite.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from events.envelope import NewEvent, RecordedEvent
from events.fencing import Fence
from events.verify import VerifyReport

if TYPE_CHECKING:
    from events.subscription import Subscription

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` during long walks such as ``verify``."""


class EventStore(Protocol):
    """An append-only log of streams with one global, commit-ordered position."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        fence: Fence | None = None,
    ) -> list[int]:
        """Append ``events`` to ``stream_id`` atomically and return their positions.

        :param expected_version: the stream's current version (0 for a new stream), or
            ``None`` to append whatever the version is.
        :param fence: the caller's lease, if it has one. If the store has recorded a
            higher token for ``fence.scope``, nothing is written. Otherwise the append
            commits and the scope's recorded token becomes ``max(recorded, token)`` in
            the same transaction, so from then on every lower token is refused. Equal
            tokens are accepted; appends without a fence are not checked.
        :raises FencedError: a higher token was already used for ``fence.scope``;
            nothing written (other appends committed in the same group are unaffected).
            Checked before ``expected_version``: a fenced caller must stop, not retry.
        :raises ConcurrencyError: the stream is at another version; nothing written.
        :raises DuplicateEventIdError: ids are reused but this is not a retry.

        Resending an append with the same event ids returns the original positions and
        writes nothing, so a caller that lost the answer can simply retry. This is
        decided first: a retry is answered even if its fence is stale by now.
        """
        ...

    async def fence_token(self, scope: str) -> int:
        """Return the highest fencing token recorded for ``scope`` (0 if none)."""
        ...

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        """Return the events of one stream with ``from_version <= version <= to_version``."""
        ...

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Collection[str] | None = None,
        up_to: int | None = None,
    ) -> list[RecordedEvent]:
        """Return up to ``limit`` events with ``after < position <= up_to``, in order.

        ``types`` keeps only events of those type names.
        """
        ...

    async def head(self) -> int:
        """Return the highest committed position (0 for an empty log)."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """Return the current version of a stream (0 if it has no events)."""
        ...

    def subscribe(
        self, *, after: int = 0, types: Collection[str] | None = None, batch_size: int = 1000
    ) -> Subscription:
        """Deliver every event after ``after`` in order, then live events as they commit."""
        ...

    async def until(self, position: int) -> int:
        """Wait until ``position`` is committed and readable; return the head then."""
        ...

    async def verify(self, progress: ProgressCallback | None = None) -> VerifyReport:
        """Walk the hash chain and report the first position that was tampered with."""
        ...

    async def close(self) -> None:
        """Finish pending appends, then release every resource."""
        ...

"""Walking the hash chain to find the first place where the log was changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from events.hashing import GENESIS_HASH, event_hash

StoredRow = tuple[int, str, int, bytes, str, int, int, int, bytes, bytes, bytes]
"""(position, stream_id, stream_version, event_id, type, schema_version, occurred_us,
recorded_us, data, metadata, hash): one event exactly as stored."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of ``verify()``: how far the chain was checked and what broke."""

    ok: bool
    checked: int
    first_bad_position: int | None = None
    problem: str | None = None


class ChainVerifier:
    """Checks stored rows page by page, so a log of any size runs in constant memory."""

    def __init__(self, *, gapless: bool = True) -> None:
        self._prev = GENESIS_HASH
        self._expected_position = 1
        self._gapless = gapless
        self.checked = 0
        self.first_bad_position: int | None = None
        self.problem: str | None = None

    @property
    def failed(self) -> bool:
        """True once a bad position was found (later rows are then ignored)."""
        return self.first_bad_position is not None

    def feed(self, rows: Iterable[StoredRow]) -> bool:
        """Check ``rows`` (in position order); return False once the chain is broken."""
        for row in rows:
            if self.failed:
                return False
            self._check(row)
        return not self.failed

    def _check(self, row: StoredRow) -> None:
        position = row[0]
        if position != self._expected_position and (
            self._gapless or position < self._expected_position
        ):
            missing = position > self._expected_position
            self._fail(
                self._expected_position if missing else position,
                "event missing (deleted)" if missing else "position out of order",
            )
            return
        expected_hash = event_hash(self._prev, *row[:10])
        if expected_hash != row[10]:
            self._fail(position, "hash mismatch: content changed, or rows reordered or removed")
            return
        self._prev = row[10]
        self._expected_position = position + 1
        self.checked += 1

    def _fail(self, position: int, problem: str) -> None:
        self.first_bad_position = position
        self.problem = problem

    def report(self) -> VerifyReport:
        """Summarise what was checked."""
        return VerifyReport(
            ok=not self.failed,
            checked=self.checked,
            first_bad_position=self.first_bad_position,
            problem=self.problem,
        )


async def verify_paged(
    read_page: Callable[[int], Awaitable[Sequence[StoredRow]]],
    total: int,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Walk the chain page by page (``read_page(after)``: the rows after a position).

    The durable stores read their raw rows in pages so a log of any size is verified in
    bounded memory; the walk stops at the first broken link.
    """
    verifier = ChainVerifier()
    after = 0
    while True:
        page = await read_page(after)
        if not page or not verifier.feed(page):
            break
        after = page[-1][0]
        if progress is not None:
            progress(verifier.checked, total)
    return verifier.report()

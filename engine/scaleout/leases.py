"""Which engine drives which scale set when several engines share one log.

Each scale set has a lease: an owner, an expiry and a fencing token that grows by one
on every change of owner. An engine renews what it holds and claims free or expired
leases up to its fair share, so work spreads across the live engines and a dead
engine's sets are taken over once its leases expire. The lease alone cannot stop a
paused engine from writing late, so the token also travels with every append of the
owner (``events.Fence``) and the store refuses older tokens.

``LeaseBoard`` is the interface; ``MemoryLeaseBoard`` serves engines sharing one
process (tests, simulations) and ``engine.scaleout.pg_leases.PostgresLeaseBoard`` engines
sharing a PostgreSQL database.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol


class LeaseBoard(Protocol):
    """The shared table of leases; every method is one atomic step."""

    ttl_s: float
    """How long a lease lasts without renewal."""

    async def add(self, keys: Collection[str]) -> None:
        """Make sure a lease exists for each key (new ones start free)."""
        ...

    async def remove(self, keys: Collection[str]) -> None:
        """Forget the leases of deleted scale sets."""
        ...

    async def renew_and_claim(self, engine_id: str, *, claim: bool = True) -> Holdings:
        """Heartbeat, renew every unexpired lease held, claim free ones up to the fair share.

        A lease missing from the answer was lost; one with another token was lost and
        claimed again. ``claim=False`` only heartbeats and renews (an engine joining
        announces itself first, so engines starting together split the work at once
        instead of the first taking everything and handing most of it back).
        """
        ...

    async def release(self, engine_id: str, keys: Collection[str]) -> None:
        """Give up leases (only those still held by ``engine_id``)."""
        ...

    async def leave(self, engine_id: str) -> None:
        """Release everything and stop counting as a live engine (graceful stop)."""
        ...

    async def owners(self) -> dict[str, str | None]:
        """Every lease's current owner (None when free or expired), for operators and tests."""
        ...

    async def announce(self, engine_id: str, url: str, mac: str | None = None) -> None:
        """Say where this engine takes requests (its HTTP API's base URL), and the MAC of
        engine id and URL made with the cluster credential (``engine.api.cluster``)."""
        ...

    async def owner_address(self, key: str) -> PeerAddress | None:
        """Where the engine driving ``key`` now takes requests (None: no live owner with a
        live heartbeat, or no URL). Stored text: verify it before use."""
        ...


@dataclass(frozen=True)
class PeerAddress:
    """An engine's announcement as the board holds it: unverified until its MAC checks."""

    engine_id: str
    url: str
    mac: str | None


@dataclass(frozen=True)
class Holdings:
    """What one engine holds after a lease step, and how much it should hold."""

    held: dict[str, int]  # scale set key -> fencing token
    share: int  # the fair share: leases per live engine, rounded up


def fair_share(leases: int, engines: int) -> int:
    """Leases per live engine, rounded up (an engine that is alone takes everything)."""
    return math.ceil(leases / max(1, engines))


@dataclass
class _Lease:
    owner: str | None = None
    token: int = 0
    expires_at: datetime | None = None
    live: bool = True  # False once its set is deleted: the token is kept for a new set


@dataclass
class MemoryLeaseBoard:
    """Leases for engines in one process, timed by ``now`` (e.g. a virtual clock's)."""

    now: Callable[[], datetime]
    ttl_s: float = 15.0
    _leases: dict[str, _Lease] = field(default_factory=dict)
    _heartbeats: dict[str, datetime] = field(default_factory=dict)
    _urls: dict[str, PeerAddress] = field(default_factory=dict)

    async def add(self, keys: Collection[str]) -> None:
        """Make sure a live lease exists for each key (new ones start free; one of a set
        deleted before keeps its token, so the next owner's is higher)."""
        for key in keys:
            self._leases.setdefault(key, _Lease()).live = True

    async def remove(self, keys: Collection[str]) -> None:
        """Retire the leases of deleted scale sets (their tokens are kept, see ``add``)."""
        for key in keys:
            lease = self._leases.get(key)
            if lease is not None:
                lease.live, lease.owner, lease.expires_at = False, None, None

    async def renew_and_claim(self, engine_id: str, *, claim: bool = True) -> Holdings:
        """Heartbeat, renew, then claim free or expired leases up to the fair share."""
        now = self.now()
        until = now + timedelta(seconds=self.ttl_s)
        self._heartbeats[engine_id] = now
        held: dict[str, int] = {}
        leases = {key: lease for key, lease in self._leases.items() if lease.live}
        for key, lease in leases.items():
            if lease.owner == engine_id and _alive(lease, now):
                lease.expires_at = until
                held[key] = lease.token
        live = sum(1 for beat in self._heartbeats.values() if beat + _ttl(self) > now)
        share = fair_share(len(leases), live)
        want = share - len(held) if claim else 0
        for key in sorted(leases):
            lease = leases[key]
            if want <= 0:
                break
            if lease.owner is None or not _alive(lease, now):
                lease.owner, lease.token, lease.expires_at = engine_id, lease.token + 1, until
                held[key] = lease.token
                want -= 1
        return Holdings(held, share)

    async def release(self, engine_id: str, keys: Collection[str]) -> None:
        """Give up leases still held by ``engine_id``."""
        for key in keys:
            lease = self._leases.get(key)
            if lease is not None and lease.owner == engine_id:
                lease.owner, lease.expires_at = None, None

    async def leave(self, engine_id: str) -> None:
        """Release everything held and drop the heartbeat."""
        await self.release(engine_id, list(self._leases))
        self._heartbeats.pop(engine_id, None)

    async def owners(self) -> dict[str, str | None]:
        """Every lease's current owner (None when free or expired)."""
        now = self.now()
        return {k: (v.owner if _alive(v, now) else None) for k, v in self._leases.items() if v.live}

    async def announce(self, engine_id: str, url: str, mac: str | None = None) -> None:
        """Say where this engine takes requests."""
        self._urls[engine_id] = PeerAddress(engine_id, url, mac)

    async def owner_address(self, key: str) -> PeerAddress | None:
        """The announcement of the engine driving ``key`` now, if its heartbeat is live."""
        owner = (await self.owners()).get(key)
        beat = self._heartbeats.get(owner) if owner is not None else None
        if owner is None or beat is None or beat + _ttl(self) <= self.now():
            return None
        return self._urls.get(owner)


def _alive(lease: _Lease, now: datetime) -> bool:
    return lease.owner is not None and lease.expires_at is not None and lease.expires_at > now


def _ttl(board: MemoryLeaseBoard) -> timedelta:
    return timedelta(seconds=board.ttl_s)


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Ownership:
    """How an engine shares the scale sets of its log with other engines.

    ``renew_s`` must stay well under the board's TTL (a third by default) so a live
    engine never loses a lease to one slow round trip; a dead engine's sets are taken
    over within ``ttl_s + renew_s``. ``sleep`` paces the lease loop: real seconds by
    default, the engine clock's in simulations.
    """

    board: LeaseBoard
    engine_id: str
    renew_s: float = 5.0
    sleep: Sleep | None = None
    claim: bool = True  # False: serve commands and reads only, drive no scale set

    def __post_init__(self) -> None:
        if not 0 < self.renew_s * 2 < self.board.ttl_s:
            raise ValueError(
                f"lease renewal every {self.renew_s} s needs a TTL above twice that "
                f"(the board's TTL is {self.board.ttl_s} s)"
            )

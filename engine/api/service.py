"""Everything one server process runs: log, engine, simulated fleet, clock, projection.

The engine, its workers and the projection runner share the process and the log (the
embedded SQLite file, or a PostgreSQL database when ``db`` is a ``postgresql://`` DSN);
HTTP reads come from the runner's in-memory fold and the workers' state, never from a
scan of the log.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from engine.api.auth import Token
from engine.api.cache import RenderCache
from engine.api.cluster import ClusterKey
from engine.api.forward import PeerClient
from engine.api.limits import WireLimits
from engine.api.log_lock import serving_lock
from engine.domain.scale_set import EngineSettings
from engine.runtime.clock import EngineClock, RealClock, VirtualClock
from engine.runtime.engine import Engine, WorkerCrashedError
from engine.scaleout.leases import Ownership
from engine.scaleout.pg_leases import PostgresLeaseBoard
from engine.sim.fleet import SimulatedFleet
from events import EventStore, PostgresEventStore, SQLiteEventStore, StoreUnavailableError
from projections.postgres import PostgresTables
from projections.runner import ProjectionRunner, ProjectionStoppedError, ProjectionTables

log = structlog.get_logger("osupgrade.api")

PROJECTED_WAIT_S = 10.0  # longest a command's answer waits for its write to be projected
STOP_WAIT_S = 10.0  # longest a stop waits for the projection's rows to be stored


@dataclass(frozen=True)
class ServeSettings:
    """What ``osupgrade serve`` was asked to run."""

    db: Path | str  # a SQLite file, or a postgresql:// DSN
    host: str = "127.0.0.1"
    port: int = 8080
    clock: Literal["real", "virtual"] = "real"
    speed: float = 1.0
    tokens: tuple[Token, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    seed: int = 0
    history_page_size: int = 5
    start: datetime | None = None  # the virtual clock's start (default: now)
    engine: EngineSettings = field(default_factory=EngineSettings)
    fleet_journal: Path | None = None
    pg_schema: str = "osupgrade"  # the PostgreSQL schema holding the log and projections
    lease_ttl_s: float = 15.0  # engines sharing PostgreSQL: a dead one's sets move after this
    lease_renew_s: float = 5.0
    advertise_url: str | None = None  # how other servers reach this one (default: bound URL)
    cluster_key: ClusterKey | None = None  # servers sharing a log trust each other with it
    wire: WireLimits = field(default_factory=WireLimits)  # header size, timeouts, connections

    @property
    def shared(self) -> bool:
        """Several servers may drive this log: PostgreSQL on a real clock (leases)."""
        return self.postgres and self.clock == "real"

    @property
    def postgres(self) -> bool:
        """True when ``db`` names a PostgreSQL server rather than a SQLite file."""
        return is_postgres_dsn(self.db)


def is_postgres_dsn(db: Path | str) -> bool:
    """``postgresql://...`` or ``postgres://...`` (a file path otherwise)."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class ApiService:
    """The running parts behind the HTTP API."""

    def __init__(
        self,
        settings: ServeSettings,
        store: EventStore,
        engine: Engine,
        fleet: SimulatedFleet,
        runner: ProjectionRunner,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.fleet = fleet
        self.runner = runner
        self.advance_lock = asyncio.Lock()
        self.cache = RenderCache()
        self.peer_client = PeerClient(settings.tls_cert)  # forwards to the other servers

    @property
    def clock(self) -> EngineClock:
        """The engine's clock (virtual or real)."""
        return self.engine.clock

    @property
    def virtual(self) -> VirtualClock | None:
        """The virtual clock, if the server runs on one."""
        clock = self.engine.clock
        return clock if isinstance(clock, VirtualClock) else None

    async def announce(self, url: str) -> None:
        """Tell the other servers on this log where to forward commands for our sets."""
        own, key = self.engine.ownership, self.settings.cluster_key
        if own is not None:
            mac = key.sign_announcement(own.engine_id, url) if key is not None else None
            await own.board.announce(own.engine_id, url, mac)

    async def projected(self) -> None:
        """Wait until the projection has folded everything in the log now.

        Called after each command, so a client's next read sees its own write. The
        command is in the log by then: if the log cannot be read, or the projection
        does not get there within ``PROJECTED_WAIT_S``, it is answered anyway (reads
        catch up once the database answers again).
        """
        try:
            head = await self.store.head()
            async with asyncio.timeout(PROJECTED_WAIT_S):
                await self.runner.wait_folded(head)
        except (StoreUnavailableError, TimeoutError) as exc:
            log.warning("answering before the projection has caught up",
                        folded=self.runner.folded, error=repr(exc))  # fmt: skip

    async def _settle(self) -> None:
        """On the way out: decided work into the log, rows and checkpoint stored.

        Bounded, and never an error: with the database away, what is not stored yet
        is folded again from the log at the next start.
        """
        await self.engine.durable()
        try:
            head = await self.store.head()
            async with asyncio.timeout(STOP_WAIT_S):
                await self.runner.wait_for(head)
        except (StoreUnavailableError, TimeoutError, ProjectionStoppedError) as exc:
            log.warning("stopping before the projection is stored; it catches up on the next "
                        "start", checkpoint=self.runner.checkpoint, error=repr(exc))  # fmt: skip

    async def quiesced(self) -> None:
        """Wait until every worker's decisions are committed and projected."""
        await self.engine.durable()
        await self.projected()

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: ServeSettings) -> AsyncIterator[ApiService]:
        """Start everything; on exit hand unfinished work back to the log and close."""
        async with AsyncExitStack() as stack:
            ownership = None
            clock = _clock(settings)
            if settings.shared:
                board = PostgresLeaseBoard(
                    str(settings.db), schema=leases_schema(settings.pg_schema),
                    ttl_s=settings.lease_ttl_s,
                )  # fmt: skip
                await stack.enter_async_context(board)
                clock = await board.shared_clock(settings.speed, settings.start or _now())
                ownership = Ownership(board, engine_id(), renew_s=settings.lease_renew_s)
            if not settings.postgres:  # one server per SQLite file: refuse a second one
                stack.enter_context(serving_lock(Path(settings.db)))
            store, tables = _log(settings, clock)
            fleet = SimulatedFleet(clock, seed=settings.seed, journal=settings.fleet_journal)
            await stack.enter_async_context(store)
            engine = Engine(
                store=store, fleet=fleet, clock=clock, settings=settings.engine, ownership=ownership
            )
            runner = ProjectionRunner(store, tables)
            await engine.start()
            try:
                async with runner:
                    service = cls(settings, store, engine, fleet, runner)
                    stack.push_async_callback(service.peer_client.aclose)
                    await runner.wait_folded(await store.head())  # no read older than the log
                    log.info("engine and projection started", db=redacted(settings.db))
                    yield service
                    await service._settle()
            finally:
                await _stop(engine)
        log.info("stopped; unfinished upgrades continue from the log on the next start")


def _log(
    settings: ServeSettings, clock: EngineClock
) -> tuple[SQLiteEventStore | PostgresEventStore, Path | ProjectionTables]:
    """The event store and the projection's tables, side by side in one database."""
    if settings.postgres:
        dsn = str(settings.db)
        store = PostgresEventStore(dsn, schema=settings.pg_schema, clock=clock)
        return store, PostgresTables(dsn, schema=settings.pg_schema)
    return SQLiteEventStore(settings.db, clock=clock), Path(settings.db)


def redacted(db: Path | str) -> str:
    """``db`` for logs: a DSN's password never appears."""
    if not is_postgres_dsn(db):
        return str(db)
    scheme, _, rest = str(db).partition("://")
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}{at}{host}"


def leases_schema(log_schema: str) -> str:
    """The leases of a log's engines live beside it, in a schema of their own."""
    return f"{log_schema}_engines"


def engine_id() -> str:
    """A readable id, unique per process: host, pid and a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _now() -> datetime:
    return datetime.now(UTC)


def _clock(settings: ServeSettings) -> EngineClock:
    if settings.clock == "virtual":
        start = settings.start or datetime.now(UTC).replace(microsecond=0)
        return VirtualClock(start, autojump=False)  # time moves on /admin/clock/advance
    return RealClock(speed=settings.speed)


async def _stop(engine: Engine) -> None:
    try:
        await engine.stop()
    except WorkerCrashedError as exc:
        log.error("a worker had crashed", error=repr(exc.__cause__))
        raise

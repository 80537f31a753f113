"""Everything one server process runs: log, engine, simulated fleet, clock, projection.

The engine, its workers and the projection runner share the process (and the embedded
SQLite file); HTTP reads come from the runner's in-memory fold and the workers' state,
never from a scan of the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from engine.api.auth import Token
from engine.api.cache import RenderCache
from engine.clock import EngineClock, RealClock, VirtualClock
from engine.domain.scale_set import EngineSettings
from engine.engine import Engine, WorkerCrashedError
from engine.simulated_fleet import SimulatedFleet
from events import SQLiteEventStore
from projections.runner import ProjectionRunner

log = structlog.get_logger("osupgrade.api")


@dataclass(frozen=True)
class ServeSettings:
    """What ``osupgrade serve`` was asked to run."""

    db: Path
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


class ApiService:
    """The running parts behind the HTTP API."""

    def __init__(
        self,
        settings: ServeSettings,
        store: SQLiteEventStore,
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

    @property
    def clock(self) -> EngineClock:
        """The engine's clock (virtual or real)."""
        return self.engine.clock

    @property
    def virtual(self) -> VirtualClock | None:
        """The virtual clock, if the server runs on one."""
        clock = self.engine.clock
        return clock if isinstance(clock, VirtualClock) else None

    async def projected(self) -> None:
        """Wait until the projection has folded everything in the log now.

        Called after each command, so a client's next read sees its own write.
        """
        await self.runner.wait_for(await self.store.head())

    async def quiesced(self) -> None:
        """Wait until every worker's decisions are committed and projected."""
        await self.engine.durable()
        await self.projected()

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: ServeSettings) -> AsyncIterator[ApiService]:
        """Start everything; on exit hand unfinished work back to the log and close."""
        clock = _clock(settings)
        store = SQLiteEventStore(settings.db, clock=clock)
        fleet = SimulatedFleet(clock, seed=settings.seed, journal=settings.fleet_journal)
        async with store:
            engine = Engine(store=store, fleet=fleet, clock=clock, settings=settings.engine)
            runner = ProjectionRunner(store, settings.db)
            await engine.start()
            try:
                async with runner:
                    service = cls(settings, store, engine, fleet, runner)
                    await service.projected()  # serve no read older than the log
                    log.info("engine and projection started", db=str(settings.db))
                    yield service
                    await engine.durable()  # decided work reaches the log before we stop
                    await service.projected()
            finally:
                await _stop(engine)
        log.info("stopped; unfinished upgrades continue from the log on the next start")


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

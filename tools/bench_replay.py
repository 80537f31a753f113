"""Replay speed: rebuild the fleet projection from a large log, beside ``eventsourcing``.

Measured in one run on one log (make one with ``tools/bench_fleet.py --db PATH``):
1. osupgrade: read the whole log (``read_all`` pages of 5,000, data decoded) and fold it
   into ``FleetView``: the pure rebuild of every projection;
2. osupgrade: ``ProjectionRunner.rebuild()`` to the head: the same fold plus writing the
   rows and checkpoints to SQLite;
3. the same events copied into an ``eventsourcing`` 9.5 application (SQLite), then read
   through its notification log (``select`` + ``mapper.to_domain_event``) and folded
   into the same ``FleetView``: the same work through the library.

    .venv/bin/python tools/bench_fleet.py --scale-sets 2400 --instances 100 --db /tmp/log.sqlite
    .venv/bin/python tools/bench_replay.py --db /tmp/log.sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.logging import configure_logging  # noqa: E402
from events import RecordedEvent, SQLiteEventStore  # noqa: E402
from projections.fleet_view import FleetView  # noqa: E402
from projections.runner import ProjectionRunner  # noqa: E402

PAGE = 5000


async def fold_store(db: Path) -> tuple[int, float]:
    """Read and fold the whole log; return (events, seconds)."""
    async with SQLiteEventStore(db) as store:
        view = FleetView()
        started = time.perf_counter()
        count, after = 0, 0
        while page := await store.read_all(after=after, limit=PAGE):
            for event in page:
                view.apply(event)
            count += len(page)
            after = page[-1].position
        return count, time.perf_counter() - started


async def rebuild_runner(db: Path, work: Path) -> tuple[int, float]:
    """Rebuild the stored projection (rows + checkpoints) into a scratch file."""
    async with SQLiteEventStore(db) as store:
        head = await store.head()
        runner = ProjectionRunner(store, work / "projection.sqlite", batch_size=PAGE)
        started = time.perf_counter()
        await runner.start()
        await runner.wait_for(head)
        elapsed = time.perf_counter() - started
        await runner.stop()
    return head, elapsed


def es_copy_and_fold(db: Path, work: Path) -> tuple[int, float] | None:
    """Copy the log into eventsourcing, then time its notification-log read + the fold."""
    try:
        from eventsourcing.application import Application  # noqa: PLC0415
        from eventsourcing.domain import DomainEvent  # noqa: PLC0415
        from eventsourcing.persistence import StoredEvent  # noqa: PLC0415
        from eventsourcing.utils import get_topic  # noqa: PLC0415
    except ImportError:
        return None

    class Recorded(DomainEvent):
        """One osupgrade event as an eventsourcing domain event."""

    class ReplayApp(Application[Any]):
        log_section_size = PAGE

    app = ReplayApp(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                         "SQLITE_DBNAME": str(work / "es.sqlite")})  # fmt: skip
    topic = get_topic(Recorded)
    asyncio.run(_copy_into(db, app, topic, StoredEvent))
    started = time.perf_counter()
    view, count, position = FleetView(), 0, 1
    to_domain_event = app.mapper.to_domain_event
    while notifications := app.notification_log.select(position, limit=PAGE):
        for notification in notifications:
            event = to_domain_event(notification)
            view.apply(
                RecordedEvent(
                    notification.id,
                    event.stream,
                    event.originator_version,
                    b"",
                    event.kind,
                    1,
                    0,
                    0,
                    event.data,
                    b"{}",
                )
            )
        count += len(notifications)
        position = notifications[-1].id + 1
    elapsed = time.perf_counter() - started
    app.close()
    return count, elapsed


async def _copy_into(db: Path, app: Any, topic: str, stored_event: Any) -> None:
    async with SQLiteEventStore(db) as store:
        after = 0
        while page := await store.read_all(after=after, limit=PAGE):
            rows = []
            for event in page:
                state = {
                    "originator_id": str(uuid.uuid5(uuid.NAMESPACE_URL, event.stream_id)),
                    "originator_version": event.stream_version,
                    "timestamp": {
                        "_type_": "datetime_iso",
                        "_data_": event.occurred_at.isoformat(),
                    },
                    "stream": event.stream_id,
                    "kind": event.type,
                    "data": event.data,
                }
                rows.append(
                    stored_event(
                        uuid.uuid5(uuid.NAMESPACE_URL, event.stream_id),
                        event.stream_version,
                        topic,
                        app.mapper.transcoder.encode(state),
                    )
                )
            app.recorder.insert_events(rows)
            after = page[-1].position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="an osupgrade log to replay")
    parser.add_argument("--skip-eventsourcing", action="store_true")
    args = parser.parse_args()
    if not args.db.is_file():
        parser.error(f"{args.db} does not exist")
    configure_logging("console", logging.WARNING)
    rows = []
    count, seconds = asyncio.run(fold_store(args.db))
    rows.append(("osupgrade read_all + FleetView fold", count, seconds))
    with tempfile.TemporaryDirectory() as tmp:
        count, seconds = asyncio.run(rebuild_runner(args.db, Path(tmp)))
        rows.append(("osupgrade ProjectionRunner rebuild (rows + checkpoints)", count, seconds))
        if not args.skip_eventsourcing:
            es = es_copy_and_fold(args.db, Path(tmp))
            if es is None:
                print("eventsourcing is not installed: pip install -e '.[bench]'")
            else:
                rows.append(("eventsourcing notification log + same fold", *es))
    reference = rows[-1][1] / rows[-1][2]
    print(f"{'workload':<58} {'events':>10} {'seconds':>8} {'events/s':>10} {'ratio':>6}")
    for name, count, seconds in rows:
        speed = count / seconds
        print(f"{name:<58} {count:>10,} {seconds:>8.1f} {speed:>10,.0f} {speed / reference:>6.2f}")
    print(orjson.dumps({name: count / seconds for name, count, seconds in rows}).decode())


if __name__ == "__main__":
    main()

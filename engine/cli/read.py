"""The read-only commands: ``audit verify``, ``events``, ``status``, ``history``, ``instances``.

They read an existing log, a SQLite file or a PostgreSQL DSN (never create one: see
``engine.cli.log_source``), fail clearly on a missing, foreign or corrupt log, and fold with
the current code, so an audit re-checks every decision's read model against what was
stored. Exit codes: 0 ok; 1 a check failed (or ``status``: the set never had an
upgrade); 2 no readable log, or a moment the log does not have; 3 no such scale set or
stream in the log.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.api.service import is_postgres_dsn
from engine.cli.log_source import EXIT_NOT_FOUND, describe, has_table, open_log
from engine.domain.names import fold
from events import EventStore, RecordedEvent
from projections.fleet_view import FleetView, fleet_as_of
from projections.postgres import PostgresTables
from projections.runner import (
    StoredRows,
    scale_set_row,
    stored_rows,
    stored_typed_rows,
    upgrade_row,
)
from projections.sql_tables import SCALE_SETS, all_records, compare_records


def parse_time(text: str) -> datetime:
    """An RFC 3339 time; naive times are taken as UTC."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_as_of(text: str) -> int | datetime:
    """``--as-of``: a global position (an integer) or an RFC 3339 time.

    Which one a value is never depends on the log: digits only is a position, anything
    else must parse as a time. Whether the log has that moment is checked on reading
    (``AsOfError``), so a Unix timestamp is refused instead of read as a position.
    """
    return int(text) if text.isdigit() else parse_time(text)


class AsOfError(ValueError):
    """``--as-of`` names a moment the log does not have (exit ``EXIT_UNREADABLE``)."""


async def audit_verify(db: str, schema: str) -> int:
    """Check the hash chain, then re-fold the log and compare with the stored projection."""
    async with open_log(db, schema) as store:
        report = await store.verify()
        if not report.ok:
            print(f"TAMPERED: first bad position {report.first_bad_position}: {report.problem}")
            return 1
        print(f"hash chain: ok ({report.checked} events)")
        stored = await _stored_projection(db, schema)
        if stored is None:
            print("projections: none stored with this log (nothing to compare)")
            return 0
        checkpoint, upgrades, sets = stored
        refolded = await fleet_as_of(store, position=checkpoint)
    problem = _compare(refolded, upgrades, sets)
    if problem is not None:
        print(f"PROJECTION MISMATCH (as of position {checkpoint}): {problem}")
        return 1
    print(f"projections: ok (re-folded {checkpoint} events, {len(upgrades)} upgrades match)")
    return await _verify_sql_tables(db, schema, checkpoint, refolded)


async def _verify_sql_tables(db: str, schema: str, checkpoint: int, refolded: FleetView) -> int:
    """Compare the typed SQL tables with the records the re-folded log implies."""
    if not await has_table(db, schema, SCALE_SETS.name):
        print("SQL tables: none stored (an older layout; a running server writes them)")
        return 0
    pg = is_postgres_dsn(db)
    typed_at, stored = await (
        PostgresTables(db, schema=schema).typed_rows() if pg else stored_typed_rows(Path(db))
    )
    if typed_at != checkpoint:  # the projection moved on between the two reads
        async with open_log(db, schema) as store:
            refolded = await fleet_as_of(store, position=typed_at)
    problem = compare_records(all_records(refolded), stored, sqlite=not pg)
    if problem is not None:
        print(f"SQL TABLES MISMATCH (as of position {typed_at}): {problem}")
        return 1
    counts = ", ".join(f"{len(rows):,} {name}" for name, rows in stored.items())
    print(f"SQL tables: ok ({counts})")
    return 0


async def _stored_projection(db: str, schema: str) -> StoredRows | None:
    """The stored projection beside the log (same file or schema); None if there is none."""
    if not await has_table(db, schema, "projection_checkpoints"):
        return None
    if is_postgres_dsn(db):
        return await PostgresTables(db, schema=schema).rows()
    return await stored_rows(Path(db))


def _compare(
    view: FleetView, upgrades: dict[str, bytes], sets: dict[str, tuple[bytes, bytes]]
) -> str | None:
    expected_upgrades = {u: upgrade_row(v)[2] for u, v in view.upgrades.items()}
    for upgrade_id in sorted(set(expected_upgrades) | set(upgrades)):
        if expected_upgrades.get(upgrade_id) != upgrades.get(upgrade_id):
            return f"upgrade {upgrade_id} differs from the log"
    expected_sets = {k: scale_set_row(view, k)[1:] for k in view.scale_sets}
    for key in sorted(set(expected_sets) | set(sets)):
        if expected_sets.get(key) != sets.get(key):
            return f"scale set {key} differs from the log"
    return None


async def print_events(
    db: str,
    schema: str,
    stream: str | None,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> int:
    """A readable timeline of the log (or JSON lines)."""
    async with open_log(db, schema) as store:
        if stream is not None:
            events = await store.read_stream(stream)
            if not events:
                return _not_found(f"no stream {stream!r} in {describe(db, schema)}")
            _print_page(events, since, until, as_json)
            return 0
        after = 0
        while page := await store.read_all(after=after, limit=5000):
            _print_page(page, since, until, as_json)
            after = page[-1].position
    return 0


def _print_page(
    events: list[RecordedEvent], since: datetime | None, until: datetime | None, as_json: bool
) -> None:
    out = sys.stdout
    for event in events:
        when = event.occurred_at
        if (since is not None and when < since) or (until is not None and when > until):
            continue
        if as_json:
            record: dict[str, Any] = {
                "position": event.position,
                "stream": event.stream_id,
                "version": event.stream_version,
                "type": event.type,
                "occurred_at": when.isoformat(),
                "data": event.data,
            }
            out.write(orjson.dumps(record).decode() + "\n")
        else:
            summary = orjson.dumps(event.data).decode()
            summary = summary if len(summary) <= 100 else summary[:97] + "..."
            out.write(
                f"{event.position:>8}  {when:%Y-%m-%d %H:%M:%S}  {event.stream_id:<40}  "
                f"{event.type:<36}  {summary}\n"
            )


async def print_status(db: str, schema: str, scale_set: str, as_of: int | datetime | None) -> int:
    """The latest rolling upgrade of a scale set, as of now or a past moment."""
    view, _ = await _view(db, schema, as_of)
    if not _exists(view, scale_set):
        return _no_scale_set(db, schema, scale_set, view)
    latest = view.latest(fold(scale_set))
    if latest is None:
        print(f"{scale_set}: no rolling upgrade (as of position {view.position})")
        return 1
    print(json.dumps(latest, indent=2))
    return 0


async def print_history(db: str, schema: str, scale_set: str, as_of: int | datetime | None) -> int:
    """The last five OS upgrade attempts within two months of ``as_of`` (or the log's end)."""
    view, now = await _view(db, schema, as_of)
    if not _exists(view, scale_set):
        return _no_scale_set(db, schema, scale_set, view)
    print(json.dumps({"value": view.history(fold(scale_set), now)}, indent=2))
    return 0


async def print_instances(
    db: str, schema: str, scale_set: str, as_of: int | datetime | None
) -> int:
    """Each instance's image version and last observed health, as of now or the past."""
    view, _ = await _view(db, schema, as_of)
    if not _exists(view, scale_set):
        return _no_scale_set(db, schema, scale_set, view)
    instances = view.instances[fold(scale_set)]
    value = [
        {"instanceId": i, "exactVersion": v.version, "health": v.health}
        for i, v in sorted(instances.items(), key=lambda item: int(item[0]))
    ]
    print(json.dumps({"value": value}, indent=2))
    return 0


def _exists(view: FleetView, scale_set: str) -> bool:
    return fold(scale_set) in view.instances


def _no_scale_set(db: str, schema: str, scale_set: str, view: FleetView) -> int:
    where = describe(db, schema)
    return _not_found(f"no scale set {scale_set} in {where} (as of position {view.position})")


def _not_found(message: str) -> int:
    """One answer for "no such thing" across the read commands."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_NOT_FOUND


async def _view(db: str, schema: str, as_of: int | datetime | None) -> tuple[FleetView, datetime]:
    async with open_log(db, schema) as store:
        head = await store.head()
        last = await _event_at(store, head)
        end = last.occurred_at if last is not None else datetime.now(UTC)
        if isinstance(as_of, int) and as_of > head:
            raise AsOfError(
                f"--as-of {as_of}: the log ends at position {head}; a number is a log "
                "position (write a time as RFC 3339, e.g. 2026-03-01T02:26:27Z)"
            )
        if isinstance(as_of, datetime):
            if as_of > max(end, datetime.now(UTC)):
                raise AsOfError(f"--as-of {as_of.isoformat()} is in the future")
            return await fleet_as_of(store, time=as_of), as_of
        view = await fleet_as_of(store, position=as_of)
        at = await _event_at(store, view.position)
        now = at.occurred_at if at is not None else end
    return view, now


async def _event_at(store: EventStore, position: int) -> RecordedEvent | None:
    page = await store.read_all(after=max(0, position - 1), limit=1)
    return page[0] if page else None

"""The read-only commands: ``audit verify``, ``events``, ``status`` and ``history``.

They open an existing log (never create one), fail clearly on a missing, foreign or
corrupt file, and fold with the current code, so an audit re-checks every decision's
read model against what was stored.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from engine.domain.names import fold
from events import RecordedEvent, SQLiteEventStore
from projections.fleet_view import FleetView, fleet_as_of
from projections.runner import scale_set_row, stored_rows, upgrade_row


def parse_time(text: str) -> datetime:
    """An RFC 3339 time; naive times are taken as UTC."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_as_of(text: str) -> int | datetime:
    """``--as-of``: a global position (an integer) or an RFC 3339 time."""
    return int(text) if text.isdigit() else parse_time(text)


async def audit_verify(db: Path) -> int:
    """Check the hash chain, then re-fold the log and compare with the stored projection."""
    async with SQLiteEventStore(db) as store:
        report = await store.verify()
        if not report.ok:
            print(f"TAMPERED: first bad position {report.first_bad_position}: {report.problem}")
            return 1
        print(f"hash chain: ok ({report.checked} events)")
        if not await _has_projection(db):
            print("projections: none stored in this file (nothing to compare)")
            return 0
        checkpoint, upgrades, sets = await stored_rows(db)
        refolded = await fleet_as_of(store, position=checkpoint)
    problem = _compare(refolded, upgrades, sets)
    if problem is not None:
        print(f"PROJECTION MISMATCH (as of position {checkpoint}): {problem}")
        return 1
    print(f"projections: ok (re-folded {checkpoint} events, {len(upgrades)} upgrades match)")
    return 0


async def _has_projection(db: Path) -> bool:
    async with aiosqlite.connect(db) as conn:
        rows = await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE name = 'projection_checkpoints'"
        )
    return bool(list(rows))


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
    db: Path, stream: str | None, since: datetime | None, until: datetime | None, as_json: bool
) -> int:
    """A readable timeline of the log (or JSON lines)."""
    async with SQLiteEventStore(db) as store:
        if stream is not None:
            events = await store.read_stream(stream)
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


async def print_status(db: Path, scale_set: str, as_of: int | datetime | None) -> int:
    """The latest rolling upgrade of a scale set, as of now or a past moment."""
    view, _ = await _view(db, as_of)
    latest = view.latest(fold(scale_set))
    if latest is None:
        print(f"{scale_set}: no rolling upgrade (as of position {view.position})")
        return 1
    print(json.dumps(latest, indent=2))
    return 0


async def print_history(db: Path, scale_set: str, as_of: int | datetime | None) -> int:
    """The last five OS upgrade attempts within two months of ``as_of`` (or the log's end)."""
    view, now = await _view(db, as_of)
    print(json.dumps({"value": view.history(fold(scale_set), now)}, indent=2))
    return 0


async def print_instances(db: Path, scale_set: str, as_of: int | datetime | None) -> int:
    """Each instance's image version and last observed health, as of now or the past."""
    view, _ = await _view(db, as_of)
    instances = view.instances.get(fold(scale_set))
    if instances is None:
        print(f"{scale_set}: no such scale set (as of position {view.position})")
        return 1
    value = [
        {"instanceId": i, "exactVersion": v.version, "health": v.health}
        for i, v in sorted(instances.items(), key=lambda item: int(item[0]))
    ]
    print(json.dumps({"value": value}, indent=2))
    return 0


async def _view(db: Path, as_of: int | datetime | None) -> tuple[FleetView, datetime]:
    async with SQLiteEventStore(db) as store:
        if isinstance(as_of, datetime):
            return await fleet_as_of(store, time=as_of), as_of
        view = await fleet_as_of(store, position=as_of)
        tail = await store.read_all(after=max(0, view.position - 1), limit=1)
        now = tail[0].occurred_at if tail else datetime.now(UTC)
    return view, now

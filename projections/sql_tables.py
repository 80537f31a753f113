"""The fleet read model as relational tables with typed columns, for plain SQL.

The projection reloads its own state from JSON rows (``projection_upgrades``,
``projection_scale_sets``); people and BI tools want columns they can filter, group and
join. These four tables are derived from the same fold and written in the same
transaction as the checkpoint, so a query sees exactly the checkpointed view, on SQLite
and on PostgreSQL alike:

* ``fleet_scale_sets``: one row per scale set (key, location, zones, policy, image);
* ``fleet_instances``: one row per instance (version, health, its phase in the set's
  latest upgrade);
* ``fleet_upgrades``: one row per rolling upgrade (status, error, who started it,
  target image, start and end, the progress and rollback counts);
* ``fleet_image_versions``: when each image version became available, and where.

Everything here is pure: records are built from a ``FleetView``; the ``ProjectionTables``
implementations write them. ``audit verify`` rebuilds the records from the log and
compares them with what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from events import RecordedEvent
from projections.fleet_view import FleetView, ImageVersionKey, ScaleSetModel, image_versions_of
from projections.upgrade_view import GROUP, UpgradeView

# Bumped whenever a table of this module (or the JSON rows) changes shape: a runner that
# finds an older version stored clears the projection and folds the log again.
SCHEMA_VERSION = 2
SCHEMA_ROW = "fleet-schema"  # its row in projection_checkpoints


@dataclass(frozen=True)
class Column:
    """One typed column: ``kind`` is text, int, bool or time (UTC)."""

    name: str
    kind: str
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    """A table's columns, its primary key and the index SQL users will want."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


_SQLITE_TYPES = {"text": "TEXT", "int": "INTEGER", "bool": "INTEGER", "time": "TEXT"}
_PG_TYPES = {"text": "text", "int": "bigint", "bool": "boolean", "time": "timestamptz"}


def _model_columns() -> tuple[Column, ...]:
    hints = {"str": "text", "int": "int", "bool": "bool", "datetime": "time", "str | None": "text"}
    return tuple(
        Column(f.name, hints[str(f.type)], nullable="None" in str(f.type))
        for f in fields(ScaleSetModel)
    )


SCALE_SETS = Table(
    "fleet_scale_sets",
    (
        Column("key", "text"),
        *_model_columns(),
        Column("instance_count", "int"),
        Column("upgrade_count", "int"),
        Column("latest_upgrade_id", "text", nullable=True),
        Column("latest_status", "text", nullable=True),
    ),
    key=("key",),
    indexes=(("location",), ("latest_status",)),
)
INSTANCES = Table(
    "fleet_instances",
    (
        Column("scale_set", "text"),
        Column("instance_id", "text"),
        Column("version", "text"),
        Column("health", "text"),
        Column("phase", "text", nullable=True),  # in the latest upgrade; NULL without one
    ),
    key=("scale_set", "instance_id"),
)
UPGRADES = Table(
    "fleet_upgrades",
    (
        Column("upgrade_id", "text"),
        Column("scale_set", "text"),
        Column("location", "text"),
        Column("status", "text"),
        Column("error_code", "text", nullable=True),
        Column("error_message", "text", nullable=True),
        Column("started_by", "text"),
        Column("target_publisher", "text", nullable=True),
        Column("target_offer", "text", nullable=True),
        Column("target_sku", "text", nullable=True),
        Column("target_version", "text", nullable=True),
        Column("target_id", "text", nullable=True),
        Column("start_time", "time", nullable=True),
        Column("end_time", "time", nullable=True),
        Column("last_action", "text"),
        Column("instance_count", "int"),
        Column("successful_count", "int"),
        Column("failed_count", "int"),
        Column("in_progress_count", "int"),
        Column("pending_count", "int"),
        Column("rolled_back_count", "int"),
        Column("rollback_failed_count", "int"),
        Column("rollback_error", "text", nullable=True),
        Column("position", "int"),
    ),
    key=("upgrade_id",),
    indexes=(("scale_set",), ("status",), ("target_version",)),
)
IMAGE_VERSIONS = Table(
    "fleet_image_versions",
    (
        Column("image", "text"),
        Column("version", "text"),
        Column("location", "text"),
        Column("published_time", "time"),
    ),
    key=("image", "version", "location"),
)
TABLES = (SCALE_SETS, INSTANCES, UPGRADES, IMAGE_VERSIONS)

Record = tuple[Any, ...]


def create_statements(dialect: str, schema: str = "") -> list[str]:
    """``CREATE TABLE/INDEX IF NOT EXISTS`` for every table (``dialect``: sqlite or postgres)."""
    types = _SQLITE_TYPES if dialect == "sqlite" else _PG_TYPES
    prefix = f"{schema}." if schema else ""
    statements = []
    for table in TABLES:
        columns = ", ".join(
            f"{c.name} {types[c.kind]}{'' if c.nullable else ' NOT NULL'}" for c in table.columns
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {prefix}{table.name} ("
            f"{columns}, PRIMARY KEY ({', '.join(table.key)}))"
        )
        for index in table.indexes:
            name = f"{table.name}_by_{'_'.join(index)}"
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {name} ON {prefix}{table.name} ({', '.join(index)})"
            )
    return statements


def upgrade_record(view: UpgradeView) -> Record:
    """One ``fleet_upgrades`` row."""
    progress = view.progress
    target = view.target
    error = view.error or {}
    return (
        view.upgrade_id,
        view.scale_set,
        view.location,
        view.code,
        error.get("code"),
        error.get("message"),
        view.started_by,
        target.get("publisher"),
        target.get("offer"),
        target.get("sku"),
        target.get("version"),
        target.get("id"),
        view.start_time,
        view.end_time,
        view.last_action,
        len(view.instances),
        progress["successfulInstanceCount"],
        progress["failedInstanceCount"],
        progress["inProgressInstanceCount"],
        progress["pendingInstanceCount"],
        view.rolled_back,
        view.rollback_failed,
        view.rollback_error,
        view.position,
    )


def scale_set_record(fleet: FleetView, key: str) -> Record | None:
    """One ``fleet_scale_sets`` row (None for a set whose creation the log lacks)."""
    model = fleet.models.get(key)
    if model is None:
        return None
    ids = fleet.scale_sets.get(key, [])
    latest = fleet.upgrades.get(ids[-1]) if ids else None
    return (
        key,
        *(getattr(model, f.name) for f in fields(ScaleSetModel)),
        len(fleet.instances.get(key, {})),
        len(ids),
        latest.upgrade_id if latest is not None else None,
        latest.code if latest is not None else None,
    )


def instance_records(fleet: FleetView, key: str, ids: Iterable[str] | None = None) -> list[Record]:
    """``fleet_instances`` rows of one set: all of them, or those in ``ids`` that exist."""
    instances = fleet.instances.get(key, {})
    upgrade_ids = fleet.scale_sets.get(key, [])
    latest = fleet.upgrades.get(upgrade_ids[-1]) if upgrade_ids else None
    phases = latest.instances if latest is not None else {}
    chosen = sorted(instances) if ids is None else sorted(i for i in ids if i in instances)
    return [(key, i, instances[i].version, instances[i].health, phases.get(i)) for i in chosen]


def image_version_records(fleet: FleetView, keys: Iterable[ImageVersionKey]) -> list[Record]:
    """``fleet_image_versions`` rows for ``keys``."""
    return [(*k, fleet.image_versions[k]) for k in sorted(keys) if k in fleet.image_versions]


@dataclass
class TypedChanges:
    """What one projection commit changes in the typed tables."""

    upgrades: list[Record] = field(default_factory=list)
    scale_sets: list[Record] = field(default_factory=list)
    gone_sets: list[str] = field(default_factory=list)  # with their instances
    whole_sets: list[str] = field(default_factory=list)  # instances replaced as a whole
    instances: list[Record] = field(default_factory=list)
    image_versions: list[Record] = field(default_factory=list)


def all_records(fleet: FleetView) -> dict[str, set[Record]]:
    """Every typed row the fold implies, by table (what ``audit verify`` compares)."""
    sets = [r for k in fleet.scale_sets if (r := scale_set_record(fleet, k)) is not None]
    return {
        SCALE_SETS.name: set(sets),
        INSTANCES.name: {r for k in fleet.scale_sets for r in instance_records(fleet, k)},
        UPGRADES.name: {upgrade_record(v) for v in fleet.upgrades.values()},
        IMAGE_VERSIONS.name: set(image_version_records(fleet, fleet.image_versions)),
    }


def compare_records(
    expected: dict[str, set[Record]], stored: dict[str, set[Record]], *, sqlite: bool
) -> str | None:
    """The first difference between the rows a fold implies and the stored rows, or None."""
    for table in TABLES:
        want = {to_sqlite(r) for r in expected[table.name]} if sqlite else expected[table.name]
        have = stored.get(table.name, set())
        width = len(table.key)
        missing = {r[:width]: r for r in want - have}
        extra = {r[:width]: r for r in have - want}
        if not missing and not extra:
            continue
        key = min((*missing, *extra), key=lambda k: tuple(map(str, k)))
        where = ", ".join(f"{name}={value}" for name, value in zip(table.key, key, strict=True))
        if key in missing and key in extra:
            return f"{table.name} row ({where}) differs from the log"
        if key in missing:
            return f"{table.name} row ({where}) is missing (the log implies it)"
        return f"{table.name} row ({where}) is stored but the log does not imply it"
    return None


def to_sqlite(record: Sequence[Any]) -> Record:
    """SQLite has no time or boolean type: ISO 8601 text (UTC offset kept) and 0/1."""
    return tuple(
        v.isoformat() if isinstance(v, datetime) else int(v) if isinstance(v, bool) else v
        for v in record
    )


def sqlite_records(table: Table, records: list[Record]) -> list[Record]:
    """``records`` in SQLite's form; a table of text and integers only is left as it is."""
    if all(c.kind in ("text", "int") for c in table.columns):
        return records
    return [to_sqlite(r) for r in records]


def model_from_row(row: Sequence[Any], from_sqlite: bool) -> tuple[str, ScaleSetModel]:
    """A stored ``fleet_scale_sets`` row back to its key and model (for reloading)."""
    values = dict(zip(SCALE_SETS.names, row, strict=True))
    kinds = {c.name: c.kind for c in SCALE_SETS.columns}
    arguments: dict[str, Any] = {}
    for f in fields(ScaleSetModel):
        value = values[f.name]
        if from_sqlite and kinds[f.name] == "bool":
            value = bool(value)
        elif from_sqlite and kinds[f.name] == "time":
            value = datetime.fromisoformat(value)
        arguments[f.name] = value
    return values["key"], ScaleSetModel(**arguments)


def image_version_from_row(
    row: Sequence[Any], from_sqlite: bool
) -> tuple[ImageVersionKey, datetime]:
    """A stored ``fleet_image_versions`` row back to its fold entry."""
    image, version, location, published = row
    when = datetime.fromisoformat(published) if from_sqlite else published
    return (image, version, location), when


def placeholders(table: Table, dialect: str) -> str:
    """``?, ?, ...`` or ``$1, $2, ...`` for one row of ``table``."""
    if dialect == "sqlite":
        return ", ".join("?" for _ in table.columns)
    return ", ".join(f"${i}" for i in range(1, len(table.columns) + 1))


# Scale set events after which every instance row of the set is written again.
_WHOLE_SET_EVENTS = frozenset(
    {"scaleset.created", "scaleset.model_updated", "scaleset.deleted", "scaleset.reimage_finished"}
)


@dataclass
class PendingTyped:
    """Which typed rows the events folded since the last commit touched.

    Instance rows are many (a million in a large fleet), so only those an event names are
    written again, not every instance of a set whose upgrade moved.
    """

    instances: dict[str, set[str]] = field(default_factory=dict)
    whole_sets: set[str] = field(default_factory=set)
    images: set[ImageVersionKey] = field(default_factory=set)

    def note(self, event: RecordedEvent, fleet: FleetView) -> None:
        """Record what ``event`` (already folded into ``fleet``) changed."""
        stream = event.stream_id
        data = event.data
        if stream.startswith("upgrade-"):
            key = fleet.upgrades[stream[8:]].scale_set
            if event.type == GROUP:  # per-instance events of one instant (the common case)
                touched = self.instances.get(key)
                if touched is None:
                    touched = self.instances[key] = set()
                touched.update(item["instance_id"] for item in data["items"])
            elif event.type == "upgrade.requested":  # every instance gets a phase
                self.whole_sets.add(key)
            elif "instance_id" in data:
                self.instances.setdefault(key, set()).add(data["instance_id"])
        elif stream.startswith("vmss-"):
            if event.type in _WHOLE_SET_EVENTS:
                self.whole_sets.add(stream[5:])
        else:
            self.images.update(image_versions_of(event))

    def merge(self, other: PendingTyped) -> None:
        """Add ``other`` back (its commit failed; it is written with the next one)."""
        for key, ids in other.instances.items():
            self.instances.setdefault(key, set()).update(ids)
        self.whole_sets |= other.whole_sets
        self.images |= other.images

    def changes(
        self, fleet: FleetView, upgrades: Iterable[str], sets: Iterable[str]
    ) -> TypedChanges:
        """The rows to write for these touched upgrades and sets, as ``fleet`` has them now."""
        out = TypedChanges()
        out.upgrades = [upgrade_record(fleet.upgrades[u]) for u in sorted(upgrades)]
        for key in sorted(sets):
            record = scale_set_record(fleet, key) if key in fleet.scale_sets else None
            if record is None:
                out.gone_sets.append(key)
            else:
                out.scale_sets.append(record)
        live = set(fleet.scale_sets)
        for key in sorted(self.whole_sets & live):
            out.whole_sets.append(key)
            out.instances.extend(instance_records(fleet, key))
        for key in sorted(set(self.instances) - self.whole_sets):
            if key in live:
                out.instances.extend(instance_records(fleet, key, self.instances[key]))
        out.image_versions = image_version_records(fleet, self.images)
        return out


def upsert(table: Table, dialect: str, schema: str = "") -> str:
    """Insert a row, or update the one with its key (PostgreSQL's upsert)."""
    prefix = f"{schema}." if schema else ""
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.names if c not in table.key)
    return (
        f"INSERT INTO {prefix}{table.name} VALUES ({placeholders(table, dialect)})"
        f" ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )

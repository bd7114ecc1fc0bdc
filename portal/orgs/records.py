"""Records of an org: the one write path (API, admin, sync) and single-record reads.

Every write takes the org's write lock (BEGIN IMMEDIATE), gives the record a
new org-wide `versionnumber`, and commits the record, its tombstone (on
delete) and the version counter together. Values are checked against the
attribute types before anything is written.
"""

import dataclasses
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed
from portal.orgs import transactions
from portal.orgs.metadata import SYSTEM_ATTRIBUTES, Entity
from portal.orgs.store import OrgDb, next_versions
from portal.orgs.types import TYPES, new_guid, normalize_guid

# The most rows one upsert statement writes (fewer where SQLite's limit of bound values
# says so): big enough that binding, not the GIL's hand-overs, is the cost.
ROWS_PER_STATEMENT = 1000


class EntityCodec:
    """Converts between JSON records and rows of one entity (per metadata version)."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self.pk = entity.primaryidattribute
        self.writable = {a.logicalname: a for a in entity.writable_attributes()}
        self.coercers = {name: TYPES[a.type].coercer(a) for name, a in self.writable.items()}
        # The store sets createdon/modifiedon; a copy (keep_timestamps) takes the given ones.
        self.timestamps = {a.logicalname: TYPES[a.type].coercer(a) for a in entity.attributes
                           if a.logicalname in ("createdon", "modifiedon")}
        self.booleans = [a.logicalname for a in entity.attributes if a.type == "boolean"]
        self.required = [a.logicalname for a in self.writable.values() if a.required]
        self.lookups = [a for a in self.writable.values() if a.type == "lookup"]
        self.columns = [a.logicalname for a in entity.attributes]
        self.bulk_checks = {a.logicalname: TYPES[a.type].column_check(a)
                            for a in entity.attributes if a.logicalname != "versionnumber"}

    def clean(self, values: dict[str, Any], *, keep_timestamps: bool = False) -> dict[str, Any]:
        """Check and convert values for writing; unknown attributes are refused."""
        if not isinstance(values, dict):
            raise InvalidInput("a record must be an object")
        out: dict[str, Any] = {}
        for name, value in values.items():
            coerce = self.coercers.get(name)
            if coerce is not None:
                out[name] = None if value is None else coerce(value)
            elif name in SYSTEM_ATTRIBUTES or name == self.pk:
                if keep_timestamps and name in ("createdon", "modifiedon") and value is not None:
                    out[name] = self.timestamps[name](value)
            else:
                raise InvalidInput(
                    f"attribute {name!r} does not exist in entity {self.entity.logicalname}",
                    field=name)
        return out

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """A stored row as a JSON record (booleans as true/false)."""
        for name in self.booleans:
            value = row.get(name)
            if value is not None:
                row[name] = bool(value)
        return row


def codec(org: OrgDb, entity_name: str) -> EntityCodec:
    """The codec of an entity, rebuilt whenever the org's metadata changes."""
    entity = org.entity(entity_name)
    key = ("codec", entity_name)
    found = org.derived.get(key)
    if found is None:
        found = org.derived[key] = EntityCodec(entity)
    return found


def get_record(org: OrgDb, entity_name: str, record_id: str) -> dict[str, Any] | None:
    """One record by id, or None."""
    c = codec(org, entity_name)
    record_id = normalize_guid(record_id, c.pk)
    rows = list(org.db.query(f"SELECT * FROM [{entity_name}] WHERE [{c.pk}] = ?", [record_id]))
    return c.record(rows[0]) if rows else None


def create_record(org: OrgDb, entity_name: str, values: dict[str, Any], *,
                  record_id: str | None = None) -> dict[str, Any]:
    """Create a record; its id may be given by the caller (AlreadyExists if taken)."""
    record, _ = upsert_record(org, entity_name, record_id, values, mode="create")
    return record


def update_record(org: OrgDb, entity_name: str, record_id: str, values: dict[str, Any], *,
                  if_version: int | None = None) -> dict[str, Any]:
    """Update an existing record (NotFound if missing; PreconditionFailed if stale)."""
    record, _ = upsert_record(org, entity_name, record_id, values, mode="update",
                              if_version=if_version)
    return record


def upsert_record(org: OrgDb, entity_name: str, record_id: str | None,
                  values: dict[str, Any], *, mode: str = "upsert",
                  if_version: int | None = None) -> tuple[dict[str, Any], bool]:
    """Create or update one record as Dataverse's PATCH does; returns (record, created).

    mode "create" refuses an existing id, "update" a missing one; `if_version`
    is optimistic concurrency: the write happens only if the stored
    versionnumber is still that one.
    """
    c = codec(org, entity_name)
    record_id = normalize_guid(record_id, c.pk) if record_id else new_guid()
    if c.pk in values and values[c.pk] is not None and \
            normalize_guid(values[c.pk], c.pk) != record_id:
        raise InvalidInput(f"{c.pk} in the body differs from the record's id", field=c.pk)
    clean = c.clean(values)
    db = org.db
    with immediate(db):
        found = db.execute(f"SELECT versionnumber FROM [{entity_name}] WHERE [{c.pk}] = ?",
                           [record_id]).fetchone()
        if found is None:
            if mode == "update":
                raise NotFound(f"{entity_name} {record_id} does not exist")
            if if_version is not None:
                raise PreconditionFailed(f"{entity_name} {record_id} does not exist")
            missing = [n for n in c.required if clean.get(n) is None]
            if missing:
                raise InvalidInput(f"attribute {missing[0]} is required", field=missing[0])
        else:
            if mode == "create":
                raise AlreadyExists(f"{entity_name} {record_id} exists already", field=c.pk)
            if if_version is not None and found[0] != if_version:
                raise PreconditionFailed(
                    f"{entity_name} {record_id} has changed (version {found[0]}, "
                    f"expected {if_version})")
            nulled = [n for n in c.required if n in clean and clean[n] is None]
            if nulled:
                raise InvalidInput(f"attribute {nulled[0]} is required", field=nulled[0])
        _check_lookups(org, c, clean)
        now = utcnow()
        version = next_versions(db)
        with alternate_keys_kept(entity_name):
            if found is None:
                row = {**clean, c.pk: record_id, "createdon": now, "modifiedon": now,
                       "versionnumber": version}
                db.table(entity_name).insert(row)
                db.execute("DELETE FROM _tombstones WHERE entity = ? AND id = ?",
                           [entity_name, record_id])
            else:
                changes = {**clean, "modifiedon": now, "versionnumber": version}
                sets = ", ".join(f"[{name}] = ?" for name in changes)
                db.execute(f"UPDATE [{entity_name}] SET {sets} WHERE [{c.pk}] = ?",
                           [*changes.values(), record_id])
        if transactions.is_client(db):
            transactions.record(db, entity_name, record_id,
                                "create" if found is None else "update",
                                c.record(dict(clean)), version)
        rows = list(db.query(f"SELECT * FROM [{entity_name}] WHERE [{c.pk}] = ?", [record_id]))
    return c.record(rows[0]), found is None


@contextmanager
def alternate_keys_kept(entity_name: str) -> Iterator[None]:
    """Refuse a write whose values another record has for an alternate key (portal.orgs.keys).

    The key's unique index refuses it in SQLite; the caller's transaction rolls back.
    """
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE constraint failed" not in str(exc):
            raise
        columns = str(exc).split("failed:", 1)[1].strip()
        raise AlreadyExists(f"A record with matching key values already exists: another "
                            f"{entity_name} has the same {columns.replace(entity_name + '.', '')}",
                            field=entity_name) from None


def delete_record(org: OrgDb, entity_name: str, record_id: str, *,
                  if_version: int | None = None) -> int:
    """Delete a record, leaving a tombstone; returns the tombstone's version."""
    c = codec(org, entity_name)
    record_id = normalize_guid(record_id, c.pk)
    db = org.db
    with immediate(db):
        found = db.execute(f"SELECT versionnumber FROM [{entity_name}] WHERE [{c.pk}] = ?",
                           [record_id]).fetchone()
        if found is None:
            raise NotFound(f"{entity_name} {record_id} does not exist")
        if if_version is not None and found[0] != if_version:
            raise PreconditionFailed(f"{entity_name} {record_id} has changed")
        version = _delete(org, entity_name, c.pk, [record_id])
        if transactions.is_client(db):
            transactions.record(db, entity_name, record_id, "delete", {}, version)
        return version


def set_timestamps(org: OrgDb, entity_name: str, record_id: str, createdon: Any,
                   modifiedon: Any) -> None:
    """Take a server's createdon/modifiedon for a record we uploaded (no offline transaction).

    The record gets a new version, so orgs that sync from this one see the times too.
    """
    c = codec(org, entity_name)
    stamps = {name: c.timestamps[name](value)
              for name, value in (("createdon", createdon), ("modifiedon", modifiedon)) if value}
    if not stamps:
        return
    with immediate(org.db):
        current = org.db.execute(
            f"SELECT createdon, modifiedon FROM [{entity_name}] WHERE [{c.pk}] = ?",
            [record_id]).fetchone()
        if current is None or (current[0], current[1]) == (
                stamps.get("createdon", current[0]), stamps.get("modifiedon", current[1])):
            return
        sets = ", ".join(f"[{n}] = ?" for n in stamps)
        org.db.execute(f"UPDATE [{entity_name}] SET {sets}, versionnumber = ? WHERE [{c.pk}] = ?",
                       [*stamps.values(), next_versions(org.db), record_id])


@dataclass(frozen=True)
class CheckedRecords:
    """Records of one entity checked against its attribute types, as one column per attribute.

    `check_records` makes them without the database, so the sync engine checks
    a page in the thread that read it while the writer commits the page before;
    `save_checked` writes them.
    """

    entity: str
    pk: str
    names: list[str]  # the attributes the records name (never versionnumber)
    columns: list[Sequence[Any]]  # each name's stored values, one per record (None: missing)
    partial: dict[int, list[str]]  # records lacking some names (by index) -> those names

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def without(self, indexes: set[int]) -> "CheckedRecords":
        """The same minus the records at these indexes."""
        if not indexes:
            return self
        keep = [n for n in range(len(self)) if n not in indexes]
        return dataclasses.replace(
            self, columns=[[column[n] for n in keep] for column in self.columns],
            partial={new: self.partial[old] for new, old in enumerate(keep)
                     if old in self.partial})


def check_records(c: EntityCodec, records: list[dict[str, Any]], *,
                  keep_timestamps: bool = True, project: bool = False) -> CheckedRecords:
    """Check records of one entity and lay them out as columns (no database: any thread).

    An attribute the entity lacks is refused, or with `project` left out (a
    server's records may carry attributes the client's entity does not have).
    Without `keep_timestamps` the records' createdon/modifiedon are left out.
    """
    name = c.entity.logicalname
    if not records:
        return CheckedRecords(name, c.pk, [], [], {})
    keys: set[str] = set().union(*records)
    # Every record names the same attributes when each has as many keys as the union.
    complete = all([len(record) == len(keys) for record in records])
    names = list(records[0]) + sorted(keys - records[0].keys())
    if not keep_timestamps:
        names = [n for n in names if n not in ("createdon", "modifiedon")]
    names = [n for n in names if n != "versionnumber"]
    unknown = [n for n in names if n not in c.bulk_checks]
    if unknown and not project:
        c.clean({unknown[0]: None})  # raises the unknown-attribute error
    names = [n for n in names if n in c.bulk_checks] if unknown else names
    partial = {} if complete else {
        n: lacking for n, record in enumerate(records)
        if (lacking := [a for a in names if a not in record])}
    columns = [c.bulk_checks[n](values) for n, values in zip(
        names, _columns(records, names, not partial), strict=True)]
    if c.pk not in names or None in columns[names.index(c.pk)]:
        raise InvalidInput(f"each record needs its {c.pk}", field=c.pk)
    return CheckedRecords(name, c.pk, names, columns, partial)


def save_records(org: OrgDb, entity_name: str, records: Iterable[dict[str, Any]], *,
                 keep_timestamps: bool = True, from_server: bool = False) -> int:
    """Upsert many records in one transaction (the replication path); returns the count.

    Types are checked as for single writes; required attributes and lookup
    targets are not, because a replica takes the server's records as they are
    and children may arrive before their parents. With `keep_timestamps` the
    records' own createdon/modifiedon are kept (a copy keeps the server's).
    `from_server` marks records the sync engine downloaded: on a client org
    they are not recorded as offline transactions, so they never go back.
    """
    checked = check_records(codec(org, entity_name), list(records),
                            keep_timestamps=keep_timestamps)
    return save_checked(org, checked, from_server=from_server)


def save_checked(org: OrgDb, checked: CheckedRecords, *, from_server: bool = False) -> int:
    """Upsert records check_records checked, in one transaction (see save_records)."""
    if not len(checked):
        return 0
    entity_name, pk, count = checked.entity, checked.pk, len(checked)
    names, columns = list(checked.names), list(checked.columns)
    db = org.db
    with immediate(db):
        if checked.partial:
            # A record missing a name keeps its stored value: the upsert writes every
            # column the batch names, so give such records their stored values first.
            columns[:] = _filled(org, checked)
        now = utcnow()
        for stamp in ("createdon", "modifiedon"):
            if stamp not in names:
                names.append(stamp)
                columns.append([now] * count)
            else:
                column = columns[names.index(stamp)]
                columns[names.index(stamp)] = [now if v is None else v for v in column]
        ids = columns[names.index(pk)]
        record_changes = not from_server and transactions.is_client(db)
        if record_changes:
            existing = _existing_ids(org, entity_name, pk, ids)
        first = next_versions(db, count)
        columns.append(range(first, first + count))
        names.append("versionnumber")
        # A record keeps its createdon, unless it comes from the server: then the
        # server's is the record's (a create whose answer was lost, then changed on
        # the server, arrives here with the time the server made it).
        updates = ", ".join(f"[{n}] = excluded.[{n}]" for n in names
                            if n != pk and (from_server or n != "createdon"))
        with alternate_keys_kept(entity_name):
            _upsert(db, entity_name, names, updates, pk, columns)
        if db.execute("SELECT 1 FROM _tombstones WHERE entity = ? LIMIT 1",
                      [entity_name]).fetchone():
            db.conn.executemany("DELETE FROM _tombstones WHERE entity = ? AND id = ?",
                                [(entity_name, i) for i in ids])
        if record_changes:
            c = codec(org, entity_name)
            for values in zip(*columns, strict=True):
                row = dict(zip(names, values, strict=True))
                record_id = row.pop(pk)
                version = row.pop("versionnumber")
                row.pop("createdon")
                row.pop("modifiedon")
                transactions.record(db, entity_name, record_id,
                                    "update" if record_id in existing else "create",
                                    c.record(row), version)
    return count


def _upsert(db: Database, entity_name: str, names: list[str], updates: str, pk: str,
            columns: list[Sequence[Any]]) -> None:
    """Upsert the rows of `columns`, many rows to a statement.

    A statement per row (executemany) gives the GIL back on every row, and a busy
    reader thread then holds the writer up each time; a statement of many rows
    binds them at once and runs them without the GIL (measured on 100k records
    beside a thread parsing JSON: 0.8 s against 3.9 s; alone 0.42 s against 0.47 s).
    A column no row has a value for is a NULL in the statement, not bound row by
    row: CRM records are sparse (the same records, 38% of their columns empty:
    0.27 s against 0.41 s).
    """
    count = len(columns[0])
    empty = [column.count(None) == count for column in columns]
    bound = [column for column, none in zip(columns, empty, strict=True) if not none]
    per = min(ROWS_PER_STATEMENT,
              db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(bound))
    row = f"({', '.join('NULL' if none else '?' for none in empty)})"
    head = f"INSERT INTO [{entity_name}] ({', '.join(f'[{n}]' for n in names)}) VALUES "
    tail = f" ON CONFLICT([{pk}]) DO UPDATE SET {updates}"
    for start in range(0, count, per):
        rows = min(per, count - start)
        values = chain.from_iterable(zip(*(c[start:start + rows] for c in bound), strict=True))
        db.conn.execute(head + ", ".join([row] * rows) + tail, list(values))


def _columns(rows: list[dict[str, Any]], names: list[str], complete: bool) -> list[list[Any]]:
    """The rows' values as one list per name (None where a row lacks the name)."""
    if complete and len(names) > 1:
        # Every row has every name: pick and transpose in C, not value by value.
        return [list(column) for column in zip(*map(itemgetter(*names), rows), strict=True)]
    return [[row.get(n) for row in rows] for n in names]


def _filled(org: OrgDb, checked: CheckedRecords) -> list[list[Any]]:
    """The checked columns with each partial record's missing values taken from its stored row."""
    names, columns = checked.names, [list(column) for column in checked.columns]
    ids = columns[names.index(checked.pk)]
    for n, lacking in checked.partial.items():
        stored = org.db.execute(
            f"SELECT {', '.join(f'[{a}]' for a in lacking)} FROM [{checked.entity}] "
            f"WHERE [{checked.pk}] = ?", [ids[n]]).fetchone()
        for name, value in zip(lacking, stored or [None] * len(lacking), strict=True):
            columns[names.index(name)][n] = value
    return columns


def _existing_ids(org: OrgDb, entity_name: str, pk: str, ids: Sequence[str]) -> set[str]:
    # The ids travel as one JSON array: one statement for a whole batch.
    return {r[0] for r in org.db.execute(
        f"SELECT [{pk}] FROM [{entity_name}] WHERE [{pk}] IN (SELECT value FROM json_each(?))",
        [orjson.dumps(list(ids)).decode()])}


def delete_records(org: OrgDb, entity_name: str, record_ids: Iterable[str], *,
                   from_server: bool = False) -> int:
    """Delete many records in one transaction, leaving tombstones; missing ids are skipped.

    `from_server` as for save_records: deletions the sync engine downloaded
    are not recorded as offline transactions.
    """
    c = codec(org, entity_name)
    ids = [normalize_guid(i, c.pk) for i in record_ids]
    with immediate(org.db):
        marks = ",".join("?" * len(ids))
        sql = f"SELECT [{c.pk}] FROM [{entity_name}] WHERE [{c.pk}] IN ({marks})"
        present = [r[0] for r in org.db.execute(sql, ids)] if ids else []
        if present:
            last = _delete(org, entity_name, c.pk, present)
            if not from_server and transactions.is_client(org.db):
                first = last - len(present) + 1
                for n, record_id in enumerate(present):
                    transactions.record(org.db, entity_name, record_id, "delete", {}, first + n)
    return len(present)


def _delete(org: OrgDb, entity_name: str, pk: str, ids: list[str]) -> int:
    db = org.db
    first = next_versions(db, len(ids))
    now = utcnow()
    db.conn.executemany(f"DELETE FROM [{entity_name}] WHERE [{pk}] = ?", [(i,) for i in ids])
    db.conn.executemany(
        "INSERT INTO _tombstones (entity, id, versionnumber, deletedon) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(entity, id) DO UPDATE SET versionnumber = excluded.versionnumber, "
        "deletedon = excluded.deletedon",
        [(entity_name, i, first + n, now) for n, i in enumerate(ids)])
    return first + len(ids) - 1


def _check_lookups(org: OrgDb, c: EntityCodec, values: dict[str, Any]) -> None:
    """Refuse a lookup that points to no record of its target entities."""
    entities = org.entities()
    for attr in c.lookups:
        target_id = values.get(attr.logicalname)
        if target_id is None:
            continue
        for target in attr.targets:
            entity = entities.get(target)
            if entity is not None and org.db.execute(
                f"SELECT 1 FROM [{target}] WHERE [{entity.primaryidattribute}] = ?", [target_id]
            ).fetchone():
                break
        else:
            raise InvalidInput(
                f"attribute {attr.logicalname}: no {' or '.join(attr.targets)} "
                f"with id {target_id}", field=attr.logicalname)

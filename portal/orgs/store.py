"""An org's own SQLite file: its system tables, version counter and cached metadata.

Layout of instance/orgs/{org}.db:
  _org            key/value: the org-wide version counter, metadata version and
                  each entity's change feed start (feed_start:{entity})
  _entities       one row per entity definition
  _attributes     one row per attribute definition
  _tombstones     (entity, id) of deleted records, with the version of the delete
  _metadata_log   every metadata change applied to the org
  _relationships  the schema names clients gave relationships they created
  _keys           alternate keys: the attributes whose values identify a record
  {entity}        one table per entity: primary id, attributes, createdon,
                  modifiedon, versionnumber (unique, org-wide, strictly increasing)
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from portal.db import connect, immediate
from portal.errors import NotFound
from portal.orgs.metadata import Attribute, Entity, Option
from portal.orgs.types import FOLD_SQL, fold_text

if TYPE_CHECKING:  # the data layer takes an app for its settings only, never imports Flask
    from flask import Flask

org_migrations = Migrations("org")


@org_migrations()
def m001_system_tables(db: Database) -> None:
    db.table("_org").create({"key": str, "value": int}, pk="key")
    db.table("_org").insert_all(
        [{"key": "version", "value": 0}, {"key": "metadata_version", "value": 0}])
    db.table("_entities").create(
        {
            "logicalname": str,
            "displayname": str,
            "labels": str,
            "primaryidattribute": str,
            "primarynameattribute": str,
            "entitysetname": str,
            "isintersect": int,
            "position": int,
        },
        pk="logicalname",
    )
    db.table("_attributes").create(
        {
            "entity": str,
            "logicalname": str,
            "type": str,
            "displayname": str,
            "labels": str,
            "maxlength": int,
            "precision": int,
            "required": int,
            "options": str,
            "targets": str,
            "issystem": int,
            "position": int,
        },
        pk=("entity", "logicalname"),
    )
    db.table("_tombstones").create(
        {"entity": str, "id": str, "versionnumber": int, "deletedon": str},
        pk=("entity", "id"),
    )
    db.table("_tombstones").create_index(["entity", "versionnumber"], unique=True)
    db.table("_metadata_log").create(
        {"id": int, "at": str, "change": str, "entity": str, "attribute": str, "detail": str},
        pk="id",
    )


@org_migrations()
def m002_sync_client_tables(db: Database) -> None:
    # Offline transactions (Resco's migrate_transaction): every change made to
    # a sync client org, recorded in the same transaction as the change.
    db.execute("""
        CREATE TABLE _transactions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            entity TEXT NOT NULL,
            record_id TEXT NOT NULL,
            operation TEXT NOT NULL,
            changes TEXT NOT NULL,
            client_version INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX idx_transactions_status ON _transactions (status, id)")
    db.execute("CREATE INDEX idx_transactions_record ON _transactions (entity, record_id, id)")
    # Where each entity's download stands (the server's next or delta link),
    # committed with the page it follows.
    db.execute("""
        CREATE TABLE _sync_state (
            entity TEXT PRIMARY KEY,
            checkpoint TEXT,
            complete INTEGER NOT NULL DEFAULT 0,
            filter TEXT,
            updated TEXT NOT NULL
        )""")
    # The server's version (ETag) of each record as last seen, for conflict
    # detection on upload and to recognise our own uploads coming back.
    db.execute("""
        CREATE TABLE _server_versions (
            entity TEXT NOT NULL,
            id TEXT NOT NULL,
            version TEXT NOT NULL,
            PRIMARY KEY (entity, id)
        ) WITHOUT ROWID""")
    db.table("_org").insert({"key": "sync_client", "value": 0})


@org_migrations()
def m003_server_keys(db: Database) -> None:
    # The server's own key of a record where the server's keys are not GUIDs
    # (integers, strings, composite keys as JSON, Salesforce ids): the client
    # keeps its GUID, and this maps one to the other (sync_state.ids_for_keys).
    db.execute("ALTER TABLE _server_versions ADD COLUMN server_key TEXT")
    db.execute("CREATE UNIQUE INDEX idx_server_versions_key ON _server_versions "
               "(entity, server_key) WHERE server_key IS NOT NULL")


@org_migrations()
def m004_relationship_names(db: Database) -> None:
    # The schema names clients gave the relationships they created through
    # RelationshipDefinitions (portal.orgs.relationships); a relationship's
    # structure is its lookup (entity, attribute, target) or its intersect
    # entity (attribute and target ''), as ever.
    db.table("_relationships").create(
        {"schemaname": str, "entity": str, "attribute": str, "target": str},
        pk="schemaname", not_null={"entity", "attribute", "target"})
    db.execute("CREATE UNIQUE INDEX idx_relationships_key ON _relationships "
               "(entity, attribute, target)")


@org_migrations()
def m005_alternate_keys(db: Database) -> None:
    # Alternate keys (portal.orgs.keys): named sets of an entity's attributes whose
    # values identify a record, each kept unique by an index on the entity's table.
    db.table("_keys").create(
        {"schemaname": str, "entity": str, "attributes": str, "displayname": str},
        pk="schemaname", not_null={"entity", "attributes"})


class OrgDb:
    """An open org file: its connection plus its metadata, cached until it changes."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._metadata_version = -1
        self._entities: dict[str, Entity] = {}
        # Things derived from the metadata (codecs, CSDL...), dropped when it changes.
        self.derived: dict[Any, Any] = {}

    def close(self) -> None:
        """Close the org's connection."""
        self.db.close()

    def __enter__(self) -> "OrgDb":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entities(self) -> dict[str, Entity]:
        """All entity definitions by logical name, in creation order."""
        version = metadata_version(self.db)
        if version != self._metadata_version:
            self._entities = load_entities(self.db)
            self._metadata_version = version
            self.derived = {}
        return self._entities

    def entity(self, name: str) -> Entity:
        """One entity definition; NotFound when the org has no such entity."""
        entity = self.entities().get(name)
        if entity is None:
            raise NotFound(f"entity {name!r} does not exist in org {self.name}")
        return entity

    def entity_by_set(self, set_name: str) -> Entity:
        """The entity whose OData entity set is `set_name`."""
        for entity in self.entities().values():
            if entity.entitysetname == set_name:
                return entity
        raise NotFound(f"entity set {set_name!r} does not exist in org {self.name}")


def orgs_path(app: "Flask") -> Path:
    """Folder of this app's hosted org files (PORTAL_ORGS_DIR, relative to the instance folder)."""
    return Path(app.instance_path) / app.config["ORGS_DIR"]


def org_file(orgs_dir: str | Path, name: str) -> Path:
    """Path of an org's SQLite file."""
    return Path(orgs_dir) / f"{name}.db"


def create_org_file(orgs_dir: str | Path, name: str) -> OrgDb:
    """Create a new, empty org file (replacing a stale one left by a failed create)."""
    path = org_file(orgs_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_org_file(orgs_dir, name)
    return open_org(orgs_dir, name, create=True)


def open_org(orgs_dir: str | Path, name: str, *, create: bool = False) -> OrgDb:
    """Open an org's file and bring its system tables up to date."""
    path = org_file(orgs_dir, name)
    if not create and not path.exists():
        raise NotFound(f"org {name!r} does not exist")
    db = connect(path)
    # Text comparisons of queries and filters (portal.orgs.types.fold_text).
    db.conn.create_function(FOLD_SQL, 1, fold_text, deterministic=True)
    if org_migrations.pending(db):
        with immediate(db):
            org_migrations.apply(db)
    return OrgDb(db, name)


def remove_org_file(orgs_dir: str | Path, name: str) -> None:
    """Delete an org's file with its WAL and shared-memory files."""
    path = org_file(orgs_dir, name)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def metadata_version(db: Database) -> int:
    """Counter bumped by every metadata change; caches compare against it."""
    row = db.execute("SELECT value FROM _org WHERE key = 'metadata_version'").fetchone()
    return int(row[0])


def current_version(db: Database) -> int:
    """The highest versionnumber given out so far in this org."""
    row = db.execute("SELECT value FROM _org WHERE key = 'version'").fetchone()
    return int(row[0])


def next_versions(db: Database, count: int = 1) -> int:
    """Reserve `count` versionnumbers; returns the first. Call inside immediate()."""
    # The write lock is held from BEGIN IMMEDIATE to COMMIT, so versions are
    # given out in commit order: a reader that sees version V sees every
    # version below V too. The change feed relies on that.
    row = db.execute(
        "UPDATE _org SET value = value + ? WHERE key = 'version' RETURNING value", [count]
    ).fetchone()
    return int(row[0]) - count + 1


def feed_start(db: Database, entity_name: str) -> int:
    """The version after which an entity's change feed is complete (0: from the start).

    It moves up when history is given up: tombstones forgotten, or the entity removed
    (a new entity of the same name has a new history). A delta token from before it
    cannot be continued; its holder must read everything again.
    """
    row = db.execute("SELECT value FROM _org WHERE key = ?",
                     ["feed_start:" + entity_name]).fetchone()
    return int(row[0]) if row else 0


def set_feed_start(db: Database, entity_name: str, version: int) -> None:
    """Raise an entity's feed start to `version` (never lowers it). Call inside immediate()."""
    db.execute("INSERT INTO _org (key, value) VALUES (?, ?) ON CONFLICT (key) "
               "DO UPDATE SET value = max(value, excluded.value)",
               ["feed_start:" + entity_name, version])


def bump_metadata_version(db: Database) -> None:
    """Mark the metadata as changed, so every open OrgDb reloads it."""
    db.execute("UPDATE _org SET value = value + 1 WHERE key = 'metadata_version'")


def load_entities(db: Database) -> dict[str, Entity]:
    """Read every entity definition of the org from its metadata tables."""
    entities: dict[str, Entity] = {}
    for row in db.query("SELECT * FROM _entities ORDER BY position, logicalname"):
        entities[row["logicalname"]] = Entity(
            logicalname=row["logicalname"],
            displayname=row["displayname"],
            labels=json.loads(row["labels"] or "{}"),
            primaryidattribute=row["primaryidattribute"],
            primarynameattribute=row["primarynameattribute"],
            entitysetname=row["entitysetname"],
            isintersect=bool(row["isintersect"]),
        )
    for row in db.query("SELECT * FROM _attributes ORDER BY entity, position"):
        entity = entities.get(row["entity"])
        if entity is not None:
            entity.attributes.append(_attribute_from_row(row))
    return entities


def _attribute_from_row(row: dict[str, Any]) -> Attribute:
    return Attribute(
        logicalname=row["logicalname"],
        type=row["type"],
        displayname=row["displayname"],
        labels=json.loads(row["labels"] or "{}"),
        maxlength=row["maxlength"],
        precision=row["precision"],
        required=bool(row["required"]),
        options=[Option(**o) for o in json.loads(row["options"] or "[]")],
        targets=json.loads(row["targets"] or "[]"),
        issystem=bool(row["issystem"]),
    )


def entity_row(entity: Entity, position: int) -> dict[str, Any]:
    """The `_entities` row of an entity definition."""
    return {
        "logicalname": entity.logicalname,
        "displayname": entity.displayname,
        "labels": json.dumps(entity.labels, sort_keys=True),
        "primaryidattribute": entity.primaryidattribute,
        "primarynameattribute": entity.primarynameattribute,
        "entitysetname": entity.entitysetname,
        "isintersect": int(entity.isintersect),
        "position": position,
    }


def attribute_row(entity: str, attr: Attribute, position: int) -> dict[str, Any]:
    """The `_attributes` row of an attribute definition."""
    return {
        "entity": entity,
        "logicalname": attr.logicalname,
        "type": attr.type,
        "displayname": attr.displayname,
        "labels": json.dumps(attr.labels, sort_keys=True),
        "maxlength": attr.maxlength,
        "precision": attr.precision,
        "required": int(attr.required),
        "options": json.dumps(
            [{"value": o.value, "label": o.label, "labels": o.labels} for o in attr.options]
        ),
        "targets": json.dumps(attr.targets),
        "issystem": int(attr.issystem),
        "position": position,
    }

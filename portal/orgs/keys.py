"""Alternate keys of an org's entities: attributes whose values identify a record.

A key (Dataverse's EntityKeyMetadata) names one to 16 attributes of an entity;
a unique index `_key_{schemaname}` on the entity's table keeps their values
unique (rows with a null in a key attribute are not identified by it). Keys are
added and removed through portal.orgs.schema, as every metadata change; records
are found by them here.
"""

import json
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from portal.orgs.store import OrgDb

MAX_ATTRIBUTES = 16
# Dataverse's key attribute types (Microsoft Learn, "Define alternate keys").
KEY_TYPES = {"string", "integer", "bigint", "decimal", "datetime", "lookup", "picklist",
             "uniqueidentifier"}


@dataclass(frozen=True)
class Key:
    """One alternate key of an entity."""

    schemaname: str
    entity: str
    attributes: tuple[str, ...]
    displayname: str


def load_keys(db: Database) -> dict[str, list[Key]]:
    """Every alternate key of the org by entity, in creation order."""
    found: dict[str, list[Key]] = {}
    for row in db.query("SELECT * FROM _keys ORDER BY rowid"):
        found.setdefault(row["entity"], []).append(Key(
            row["schemaname"], row["entity"], tuple(json.loads(row["attributes"])),
            row["displayname"] or row["schemaname"]))
    return found


def keys(org: OrgDb, entity: str) -> list[Key]:
    """An entity's alternate keys, cached until the org's metadata changes."""
    org.entities()  # first: a metadata change clears org.derived
    cached = org.derived.get("keys")
    if cached is None:
        cached = org.derived["keys"] = load_keys(org.db)
    return list(cached.get(entity, []))


def index_name(key: Key) -> str:
    """The unique index that keeps a key's values unique."""
    return f"_key_{key.schemaname.lower()}"


def find_record(org: OrgDb, entity: str, pk: str, values: dict[str, Any]) -> str | None:
    """The id of the record whose key attributes have these values, or None."""
    condition = " AND ".join(f"[{name}] = ?" for name in values)
    row = org.db.execute(f"SELECT [{pk}] FROM [{entity}] WHERE {condition}",
                         list(values.values())).fetchone()
    return str(row[0]) if row else None

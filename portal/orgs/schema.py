"""Metadata changes of an org: add, alter and remove entities and attributes.

Each change runs in one write transaction: the definition, the entity table
(created and altered with sqlite-utils from the definition) and a line in
`_metadata_log` commit together. A change that would lose data silently is
refused with the reason (MetadataChangeRefused); removing an attribute or an
entity is explicit and therefore allowed.
"""

import json
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import AlreadyExists, InvalidInput, MetadataChangeRefused, NotFound
from portal.orgs import keys, relationships, transactions
from portal.orgs.metadata import (
    Attribute,
    Entity,
    check_attribute,
    check_entity,
)
from portal.orgs.store import (
    OrgDb,
    attribute_row,
    bump_metadata_version,
    current_version,
    entity_row,
    load_entities,
    set_feed_start,
)
from portal.orgs.types import TYPES

PYTHON_TYPES = {"TEXT": str, "INTEGER": int, "REAL": float}

# Type changes that keep every value exactly.
WIDENINGS = {
    ("string", "memo"),
    ("memo", "string"),  # still checked against maxlength
    ("integer", "bigint"),
    ("integer", "decimal"),
    ("integer", "double"),
    ("integer", "money"),
    ("decimal", "double"),
    ("decimal", "money"),
    ("money", "decimal"),
    ("money", "double"),
    ("picklist", "integer"),
    ("picklist", "bigint"),
    ("boolean", "integer"),
    ("boolean", "bigint"),
}


def check_customizable(org: OrgDb) -> None:
    """Refuse customization of a sync client org: its metadata comes from its server only.

    The sync engine migrates a client with the functions below directly; people
    and programs customizing an org (the admin's Customization screen, the API's
    $customization) call this first.
    """
    if transactions.is_client(org.db):
        raise MetadataChangeRefused(
            f"organization {org.name} is the client of a connection: its metadata comes from "
            "the server org (Update Client Metadata), so it cannot be customized here; "
            "customize the server org instead")


def add_entity(org: OrgDb, entity: Entity, *, relationship: str | None = None) -> Entity:
    """Create one entity with its table; an intersect entity may name its relationship."""
    return add_entities(org, [entity], relationship=relationship)[0]


def add_entities(org: OrgDb, entities: list[Entity], *,
                 relationship: str | None = None) -> list[Entity]:
    """Create several entities at once, so lookups between them are valid."""
    db = org.db
    with immediate(db):
        existing = load_entities(db)
        if relationship is not None:  # the many-to-many relationship of one intersect entity
            relationships.name_relationship(db, existing, relationship,
                                            (entities[0].logicalname, "", ""))
        new_names = {e.logicalname for e in entities}
        names = set(existing) | new_names
        set_names = {e.entitysetname for e in existing.values()}
        position = len(existing)
        for entity in entities:
            if entity.logicalname in existing:
                raise AlreadyExists(f"entity {entity.logicalname!r} exists already",
                                    field="logicalname")
            check_entity(entity, names)
            if entity.entitysetname in set_names:
                raise AlreadyExists(f"entity set name {entity.entitysetname!r} is taken",
                                    field="entitysetname")
            set_names.add(entity.entitysetname)
        if len(new_names) != len(entities):
            raise InvalidInput("an entity appears twice", field="logicalname")
        for entity in entities:
            _create_table(db, entity)
            db.table("_entities").insert(entity_row(entity, position))
            position += 1
            db.table("_attributes").insert_all(
                attribute_row(entity.logicalname, a, i) for i, a in enumerate(entity.attributes)
            )
            _log(db, "add entity", entity.logicalname, None,
                 {"attributes": [a.logicalname for a in entity.attributes]})
        bump_metadata_version(db)
    return entities


def update_entity(org: OrgDb, name: str, *, displayname: str | None = None,
                  labels: dict[str, str] | None = None,
                  primarynameattribute: str | None = None) -> Entity:
    """Change an entity's display name, labels or primary name attribute."""
    db = org.db
    with immediate(db):
        entity = _entity(db, name)
        before = {"displayname": entity.displayname, "labels": entity.labels,
                  "primarynameattribute": entity.primarynameattribute}
        if displayname is not None:
            entity.displayname = displayname
        if labels is not None:
            _check_labels(labels)
            entity.labels = labels
        if primarynameattribute is not None:
            attr = entity.attribute(primarynameattribute)
            if attr is None or not TYPES[attr.type].text:
                raise InvalidInput("the primary name attribute must be a string attribute",
                                   field="primarynameattribute")
            entity.primarynameattribute = primarynameattribute
        position = db.execute("SELECT position FROM _entities WHERE logicalname = ?",
                              [name]).fetchone()[0]
        db.table("_entities").upsert(entity_row(entity, position), pk="logicalname")
        _log(db, "update entity", name, None, {"before": before})
        bump_metadata_version(db)
    return entity


def remove_entity(org: OrgDb, name: str) -> None:
    """Drop an entity, its records and tombstones, and the lookups that only pointed to it."""
    db = org.db
    with immediate(db):
        entities = load_entities(db)
        if name not in entities:
            raise NotFound(f"entity {name!r} does not exist")
        for other in entities.values():
            if other.logicalname == name:
                continue
            for attr in other.attributes:
                if attr.type != "lookup" or name not in attr.targets:
                    continue
                if attr.targets == [name]:
                    _drop_attribute(db, other, attr)
                else:
                    attr.targets = [t for t in attr.targets if t != name]
                    _save_attribute(db, other.logicalname, attr)
                    _log(db, "alter attribute", other.logicalname, attr.logicalname,
                         {"targets": attr.targets, "reason": f"entity {name} removed"})
        db.table(name).drop()
        relationships.forget(db, name)
        relationships.forget_target(db, name)
        db.execute("DELETE FROM _keys WHERE entity = ?", [name])
        db.execute("DELETE FROM _attributes WHERE entity = ?", [name])
        db.execute("DELETE FROM _entities WHERE logicalname = ?", [name])
        db.execute("DELETE FROM _tombstones WHERE entity = ?", [name])
        # Its deletions are forgotten: no delta token of it may be continued.
        set_feed_start(db, name, current_version(db))
        _log(db, "remove entity", name, None, {})
        bump_metadata_version(db)


def add_attribute(org: OrgDb, entity_name: str, attr: Attribute, *,
                  relationship: str | None = None) -> Attribute:
    """Add an attribute (a column) to an entity; existing records get null.

    A lookup may name the one-to-many relationship it makes (its first target's).
    """
    db = org.db
    with immediate(db):
        entities = load_entities(db)
        entity = entities.get(entity_name)
        if entity is None:
            raise NotFound(f"entity {entity_name!r} does not exist")
        if entity.attribute(attr.logicalname) is not None:
            raise AlreadyExists(f"attribute {attr.logicalname!r} exists already in {entity_name}",
                                field="logicalname")
        check_attribute(attr, set(entities))
        if relationship is not None and attr.targets:
            relationships.name_relationship(db, entities, relationship,
                                            (entity_name, attr.logicalname, attr.targets[0]))
        db.table(entity_name).add_column(attr.logicalname, PYTHON_TYPES[TYPES[attr.type].column])
        _save_attribute(db, entity_name, attr)
        _log(db, "add attribute", entity_name, attr.logicalname, {"type": attr.type})
        bump_metadata_version(db)
    return attr


def alter_attribute(org: OrgDb, entity_name: str, attr: Attribute) -> Attribute:
    """Change an attribute's definition; refused when records would lose data."""
    db = org.db
    with immediate(db):
        entities = load_entities(db)
        entity = entities.get(entity_name)
        if entity is None:
            raise NotFound(f"entity {entity_name!r} does not exist")
        old = entity.attribute(attr.logicalname)
        if old is None:
            raise NotFound(f"attribute {attr.logicalname!r} does not exist in {entity_name}")
        if old.issystem:
            raise MetadataChangeRefused(f"{entity_name}.{old.logicalname} is a system attribute",
                                        field="logicalname")
        check_attribute(attr, set(entities))
        if attr.type != old.type:
            _check_not_in_key(db, entity_name, attr.logicalname)
        _check_lossless(db, entity_name, old, attr)
        if TYPES[old.type].column != TYPES[attr.type].column:
            db.table(entity_name).transform(types={attr.logicalname:
                                             PYTHON_TYPES[TYPES[attr.type].column]})
        _save_attribute(db, entity_name, attr)
        for target in set(old.targets) - set(attr.targets):
            relationships.forget(db, entity_name, attr.logicalname, target)
        _log(db, "alter attribute", entity_name, attr.logicalname,
             {"before": _describe(old), "after": _describe(attr)})
        bump_metadata_version(db)
    return attr


def remove_attribute(org: OrgDb, entity_name: str, name: str) -> None:
    """Drop an attribute and its column."""
    db = org.db
    with immediate(db):
        entity = _entity(db, entity_name)
        attr = entity.attribute(name)
        if attr is None:
            raise NotFound(f"attribute {name!r} does not exist in {entity_name}")
        if attr.issystem:
            raise MetadataChangeRefused(f"{entity_name}.{name} is a system attribute",
                                        field="logicalname")
        if entity.primarynameattribute == name:
            raise MetadataChangeRefused(
                f"{entity_name}.{name} is the primary name attribute; choose another first",
                field="logicalname")
        _check_not_in_key(db, entity_name, name)
        _drop_attribute(db, entity, attr)
        bump_metadata_version(db)


def add_key(org: OrgDb, entity_name: str, schemaname: str, attributes: list[str],
            displayname: str = "") -> keys.Key:
    """Add an alternate key; refused while records share values of its attributes."""
    db = org.db
    with immediate(db):
        entity = _entity(db, entity_name)
        if not isinstance(schemaname, str) or not schemaname.replace("_", "").isalnum():
            raise InvalidInput("a key needs a SchemaName of letters, digits and _",
                               field="SchemaName")
        if db.execute("SELECT 1 FROM _keys WHERE lower(schemaname) = ?",
                      [schemaname.lower()]).fetchone():
            raise AlreadyExists(f"a key named {schemaname!r} exists already", field="SchemaName")
        if not attributes or len(attributes) > keys.MAX_ATTRIBUTES or (
                len(set(attributes)) != len(attributes)):
            raise InvalidInput(f"a key names 1 to {keys.MAX_ATTRIBUTES} distinct attributes",
                               field="KeyAttributes")
        for name in attributes:
            attr = entity.attribute(name)
            if attr is None or attr.type not in keys.KEY_TYPES or attr.issystem or \
                    name == entity.primaryidattribute:
                raise InvalidInput(f"{entity_name}.{name} cannot be part of a key (one of "
                                   f"{', '.join(sorted(keys.KEY_TYPES))} attributes)",
                                   field="KeyAttributes")
        columns = ", ".join(f"[{n}]" for n in attributes)
        nulls = " AND ".join(f"[{n}] IS NOT NULL" for n in attributes)
        shared = db.execute(f"SELECT count(*) FROM (SELECT 1 FROM [{entity_name}] WHERE "
                            f"{nulls} GROUP BY {columns} HAVING count(*) > 1)").fetchone()[0]
        if shared:
            raise MetadataChangeRefused(
                f"{shared} value(s) of {', '.join(attributes)} are shared by several "
                f"{entity_name} records: the key would not identify them", field="KeyAttributes")
        key = keys.Key(schemaname, entity_name, tuple(attributes), displayname or schemaname)
        db.table("_keys").insert({"schemaname": schemaname, "entity": entity_name,
                                  "attributes": json.dumps(attributes),
                                  "displayname": key.displayname})
        db.execute(f"CREATE UNIQUE INDEX [{keys.index_name(key)}] ON [{entity_name}] "
                   f"({columns})")
        _log(db, "add key", entity_name, None, {"key": schemaname, "attributes": attributes})
        bump_metadata_version(db)
    return key


def remove_key(org: OrgDb, entity_name: str, schemaname: str) -> None:
    """Remove an alternate key and its index."""
    db = org.db
    with immediate(db):
        found = [k for k in keys.load_keys(db).get(entity_name, []) if k.schemaname == schemaname]
        if not found:
            raise NotFound(f"{entity_name} has no key {schemaname!r}")
        db.execute(f"DROP INDEX IF EXISTS [{keys.index_name(found[0])}]")
        db.execute("DELETE FROM _keys WHERE schemaname = ?", [schemaname])
        _log(db, "remove key", entity_name, None, {"key": schemaname})
        bump_metadata_version(db)


def _check_not_in_key(db: Database, entity_name: str, name: str) -> None:
    for key in keys.load_keys(db).get(entity_name, []):
        if name in key.attributes:
            raise MetadataChangeRefused(f"{entity_name}.{name} is part of the key "
                                        f"{key.schemaname}; remove the key first",
                                        field="logicalname")


def metadata_log(org: OrgDb, limit: int = 200) -> list[dict[str, Any]]:
    """The newest metadata changes of the org, newest first."""
    rows = org.db.query("SELECT * FROM _metadata_log ORDER BY id DESC LIMIT ?", [limit])
    return [dict(r, detail=json.loads(r["detail"] or "{}")) for r in rows]


def _create_table(db: Database, entity: Entity) -> None:
    columns = {a.logicalname: PYTHON_TYPES[TYPES[a.type].column] for a in entity.attributes}
    db.table(entity.logicalname).create(columns, pk=entity.primaryidattribute,
                                  not_null={"versionnumber", "createdon", "modifiedon"})
    db.table(entity.logicalname).create_index(["versionnumber"], unique=True)


def _entity(db: Database, name: str) -> Entity:
    entity = load_entities(db).get(name)
    if entity is None:
        raise NotFound(f"entity {name!r} does not exist")
    return entity


def _drop_attribute(db: Database, entity: Entity, attr: Attribute) -> None:
    db.table(entity.logicalname).transform(drop={attr.logicalname})
    db.execute("DELETE FROM _attributes WHERE entity = ? AND logicalname = ?",
               [entity.logicalname, attr.logicalname])
    relationships.forget(db, entity.logicalname, attr.logicalname)
    _log(db, "remove attribute", entity.logicalname, attr.logicalname, {"type": attr.type})


def _save_attribute(db: Database, entity_name: str, attr: Attribute) -> None:
    row = db.execute("SELECT position FROM _attributes WHERE entity = ? AND logicalname = ?",
                     [entity_name, attr.logicalname]).fetchone()
    if row is not None:
        position = row[0]
    else:
        # New attributes go before the system columns, which stay last.
        position = db.execute(
            "SELECT coalesce(max(position), 0) FROM _attributes WHERE entity = ? AND issystem = 0",
            [entity_name]).fetchone()[0] + 1
        db.execute("UPDATE _attributes SET position = position + 1 "
                   "WHERE entity = ? AND position >= ?", [entity_name, position])
    db.table("_attributes").upsert(attribute_row(entity_name, attr, position),
                                   pk=("entity", "logicalname"))


def _check_lossless(db: Database, table: str, old: Attribute, new: Attribute) -> None:
    """Refuse a change that would silently lose or alter stored values."""
    column = old.logicalname
    where = f"{table}.{column}"

    def count(sql: str, params: list[Any] | None = None) -> int:
        return int(db.execute(f"SELECT count(*) FROM [{table}] WHERE {sql}", params or []
                              ).fetchone()[0])

    if old.type != new.type and (old.type, new.type) not in WIDENINGS:
        used = count(f"[{column}] IS NOT NULL")
        if used:
            raise MetadataChangeRefused(
                f"changing {where} from {old.type} to {new.type} would lose data: "
                f"{used} record(s) have a value", field="type")
    old_kind, new_kind = TYPES[old.type], TYPES[new.type]
    if new_kind.maxlength is not None and new.maxlength is not None:
        longer = count(f"length([{column}]) > ?", [new.maxlength])
        if longer:
            raise MetadataChangeRefused(
                f"narrowing {where} to {new.maxlength} characters would cut {longer} record(s)",
                field="maxlength")
    if old_kind.options and new_kind.options:
        removed = {o.value for o in old.options} - {o.value for o in new.options}
        if removed:
            marks = ",".join("?" * len(removed))
            used = count(f"[{column}] IN ({marks})", sorted(removed))
            if used:
                raise MetadataChangeRefused(
                    f"removing option(s) {sorted(removed)} of {where} would orphan "
                    f"{used} record(s)", field="options")
    dropped = [t for t in old.targets if t not in new.targets]
    if dropped and new_kind.targets:
        entities = load_entities(db)
        pointing = " OR ".join(
            f"[{column}] IN (SELECT [{entities[t].primaryidattribute}] FROM [{t}])"
            for t in dropped if t in entities)
        used = count(pointing) if pointing else 0
        if used:
            raise MetadataChangeRefused(
                f"removing target(s) {', '.join(dropped)} of {where} would orphan "
                f"{used} record(s)", field="targets")
    if (old_kind.precision is not None and new_kind.precision is not None
            and (new.precision or 0) < (old.precision or 0)):
        raise MetadataChangeRefused(
            f"lowering the precision of {where} from {old.precision} to {new.precision} "
            "would round stored values", field="precision")


def _check_labels(labels: Any) -> None:
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidInput("labels must map language codes to text", field="labels")


def _describe(attr: Attribute) -> dict[str, Any]:
    return {"type": attr.type, "maxlength": attr.maxlength, "precision": attr.precision,
            "required": attr.required, "options": [o.value for o in attr.options],
            "targets": attr.targets, "labels": attr.labels}


def _log(db: Database, change: str, entity: str, attribute: str | None,
         detail: dict[str, Any]) -> None:
    db.table("_metadata_log").insert({"at": utcnow(), "change": change, "entity": entity,
                                "attribute": attribute, "detail": json.dumps(detail)})

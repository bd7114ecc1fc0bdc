"""Relationship names of an org: the ones clients gave, else derived from the lookups.

An org's metadata has no relationship table of its own: a lookup of entity E
to target T *is* the one-to-many relationship T → E, and an intersect entity
*is* a many-to-many relationship. What a relationship adds is its schema name;
one created through RelationshipDefinitions keeps the name its client gave
(the `_relationships` table, written in the metadata change that made it),
every other one has the name derived here. portal.web.odata.relationships
shapes them as Dataverse's relationship metadata.
"""

from sqlite_utils import Database

from portal.errors import AlreadyExists
from portal.orgs.metadata import Entity
from portal.orgs.store import OrgDb

# (entity, attribute, target) of a one-to-many's lookup; (intersect entity, "", "")
# of a many-to-many.
Key = tuple[str, str, str]


def load_names(db: Database) -> dict[Key, str]:
    """The schema names stored for relationships created through RelationshipDefinitions."""
    return {(r["entity"], r["attribute"], r["target"]): r["schemaname"]
            for r in db.query("SELECT * FROM _relationships")}


def names(org: OrgDb) -> dict[Key, str]:
    """load_names of an open org, cached until its metadata changes."""
    org.entities()  # first: a metadata change clears org.derived
    cached = org.derived.get("relationship_names")
    if cached is None:
        cached = org.derived["relationship_names"] = load_names(org.db)
    return dict(cached)


def one_to_many_name(stored: dict[Key, str], entity: str, attribute: str, target: str) -> str:
    """The schema name of the one-to-many relationship of a lookup's target."""
    return stored.get((entity, attribute, target)) or f"{target}_{entity}_{attribute}"


def many_to_many_name(stored: dict[Key, str], intersect: str) -> str:
    """The schema name of the many-to-many relationship of an intersect entity."""
    return stored.get((intersect, "", "")) or intersect


def names_in_use(entities: dict[str, Entity], stored: dict[Key, str]) -> set[str]:
    """Every relationship schema name of the org, in lower case (Dataverse's are unique so)."""
    found = {n.lower() for n in stored.values()}
    for entity in entities.values():
        if entity.isintersect:
            found.add(many_to_many_name(stored, entity.logicalname).lower())
            continue
        for attr in entity.attributes:
            for target in attr.targets if attr.type == "lookup" else []:
                found.add(one_to_many_name(stored, entity.logicalname, attr.logicalname,
                                           target).lower())
    return found


def name_relationship(db: Database, entities: dict[str, Entity], schemaname: str,
                      key: Key) -> None:
    """Store the schema name a client gave; AlreadyExists if another relationship has it.

    Call inside the metadata change's transaction, before the change itself
    (the new relationship's derived name is not in use yet).
    """
    if schemaname.lower() in names_in_use(entities, load_names(db)):
        raise AlreadyExists(f"a relationship named {schemaname!r} exists already",
                            field="SchemaName")
    db.table("_relationships").insert({"schemaname": schemaname, "entity": key[0],
                                       "attribute": key[1], "target": key[2]})


def forget(db: Database, entity: str, attribute: str | None = None,
           target: str | None = None) -> None:
    """Drop the stored names of an entity's relationships (of one attribute, one target)."""
    sql, params = "DELETE FROM _relationships WHERE entity = ?", [entity]
    if attribute is not None:
        sql, params = sql + " AND attribute = ?", [*params, attribute]
    if target is not None:
        sql, params = sql + " AND target = ?", [*params, target]
    db.execute(sql, params)


def forget_target(db: Database, target: str) -> None:
    """Drop the stored names of one-to-many relationships whose target entity is removed."""
    db.execute("DELETE FROM _relationships WHERE target = ?", [target])

"""Relationship metadata as Dataverse serves it, derived from an org's lookups.

Our metadata has no separate relationship table: a lookup of entity E to
target T *is* Dataverse's one-to-many relationship T → E (E's many-to-one), and
an intersect entity with two lookups *is* a many-to-many relationship of their
targets; their schema names come from portal.orgs.relationships. These shapes
follow OneToManyRelationshipMetadata and ManyToManyRelationshipMetadata
(RelationshipDefinitions, and an entity's OneToManyRelationships /
ManyToOneRelationships / ManyToManyRelationships).
"""

import uuid
from typing import Any

from portal.orgs.metadata import Entity
from portal.orgs.relationships import Key, many_to_many_name, one_to_many_name
from portal.web.odata.csdl import navigations

ONE_TO_MANY = "OneToManyRelationshipMetadata"
MANY_TO_MANY = "ManyToManyRelationshipMetadata"


def relationship_id(schema_name: str) -> str:
    """A stable MetadataId for a relationship."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crm-sync:relationship/" + schema_name))


def _common(schema_name: str, kind: str) -> dict[str, Any]:
    return {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{kind}",
        "MetadataId": relationship_id(schema_name),
        "SchemaName": schema_name,
        "RelationshipType": kind.removesuffix("Metadata"),
        "IsCustomRelationship": False,
        "IsValidForAdvancedFind": True,
        "IsManaged": False,
        "IntroducedVersion": "1.0.0.0",
        "IsCustomizable": {"Value": True, "CanBeChanged": True,
                           "ManagedPropertyLogicalName": "iscustomizable"},
    }


def one_to_many(entities: dict[str, Entity], names: dict[Key, str]) -> list[dict[str, Any]]:
    """Every lookup of a (non-intersect) entity, as a one-to-many of its target."""
    out = []
    for entity in entities.values():
        if entity.isintersect:
            continue  # its lookups are the two sides of a many-to-many
        for navigation, attr, target in navigations(entity, entities):
            schema_name = one_to_many_name(names, entity.logicalname, attr.logicalname, target)
            out.append({
                **_common(schema_name, ONE_TO_MANY),
                "ReferencedAttribute": entities[target].primaryidattribute,
                "ReferencedEntity": target,
                "ReferencingAttribute": attr.logicalname,
                "ReferencingEntity": entity.logicalname,
                "IsHierarchical": target == entity.logicalname,
                "ReferencedEntityNavigationPropertyName": schema_name,
                "ReferencingEntityNavigationPropertyName": navigation,
                "RelationshipBehavior": 0,
                "SecurityTypes": "Append",
                "RelationshipAttributes": [],
            })
    return out


def many_to_many(entities: dict[str, Entity], names: dict[Key, str]) -> list[dict[str, Any]]:
    """Every intersect entity with two single-target lookups, as a many-to-many."""
    out = []
    for entity in entities.values():
        if not entity.isintersect:
            continue
        sides = [a for a in entity.attributes
                 if a.type == "lookup" and len(a.targets) == 1 and a.targets[0] in entities]
        if len(sides) != 2:
            continue
        first, second = sides
        schema_name = many_to_many_name(names, entity.logicalname)
        out.append({
            **_common(schema_name, MANY_TO_MANY),
            "Entity1LogicalName": first.targets[0],
            "Entity2LogicalName": second.targets[0],
            "IntersectEntityName": entity.logicalname,
            "Entity1IntersectAttribute": first.logicalname,
            "Entity2IntersectAttribute": second.logicalname,
            "Entity1NavigationPropertyName": schema_name,
            "Entity2NavigationPropertyName": schema_name,
            "SecurityTypes": "None",
        })
    return out


def relationship_definitions(entities: dict[str, Entity], names: dict[Key, str]
                             ) -> list[dict[str, Any]]:
    """Every relationship of the org: one-to-many first, then many-to-many."""
    return one_to_many(entities, names) + many_to_many(entities, names)


def of_entity(entities: dict[str, Entity], names: dict[Key, str], name: str, collection: str
              ) -> list[dict[str, Any]]:
    """An entity's OneToManyRelationships, ManyToOneRelationships or ManyToManyRelationships."""
    if collection == "OneToManyRelationships":
        return [r for r in one_to_many(entities, names) if r["ReferencedEntity"] == name]
    if collection == "ManyToOneRelationships":
        return [r for r in one_to_many(entities, names) if r["ReferencingEntity"] == name]
    return [r for r in many_to_many(entities, names)
            if name in (r["Entity1LogicalName"], r["Entity2LogicalName"])]

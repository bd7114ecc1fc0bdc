"""Update Client Metadata: make a client org's copy of the server's entities match the server.

Migrations keep every value that still has a place: new entities and
attributes are added, changed attributes altered (a change that would lose
data is refused by the org store and logged, and the client keeps its
definition), labels updated; attributes and entities the server no longer
has are removed. The client's own entities — those that never came from the
server — are left alone.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from portal.errors import MetadataChangeRefused, PortalError
from portal.orgs import queries, schema
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.store import OrgDb

# What makes two definitions of an attribute differ, by the name the preview shows.
_ASPECTS = {
    "type": lambda a: a.type,
    "length": lambda a: a.maxlength,
    "precision": lambda a: a.precision,
    "required": lambda a: a.required,
    "options": lambda a: [(o.value, o.label, o.labels) for o in a.options],
    "lookup targets": lambda a: sorted(a.targets),
    "labels": lambda a: (a.labels, a.displayname),
}


def _comparable(attr: Attribute) -> tuple[object, ...]:
    return tuple(aspect(attr) for aspect in _ASPECTS.values())


def _differences(ours: Attribute, theirs: Attribute) -> list[str]:
    return [name for name, aspect in _ASPECTS.items() if aspect(ours) != aspect(theirs)]


@dataclass
class AttributeChange:
    """One attribute the update adds, changes or removes (`what`: the aspects that differ)."""

    entity: str
    attribute: str
    what: list[str] = field(default_factory=list)
    values: int = 0  # removed attributes: how many records hold a value of it


@dataclass
class MetadataPreview:
    """What Update Client Metadata would change, before it does."""

    new_entities: list[str] = field(default_factory=list)
    relabelled_entities: list[str] = field(default_factory=list)
    removed_entities: dict[str, int] = field(default_factory=dict)  # name -> records dropped
    skipped_entities: list[str] = field(default_factory=list)  # primary id differs
    new_attributes: list[AttributeChange] = field(default_factory=list)
    changed_attributes: list[AttributeChange] = field(default_factory=list)
    removed_attributes: list[AttributeChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.new_entities, self.relabelled_entities, self.removed_entities,
                    self.skipped_entities, self.new_attributes, self.changed_attributes,
                    self.removed_attributes))


def preview_update(client: Mapping[str, Entity], server: list[Entity],
                   known_server_entities: set[str]) -> MetadataPreview:
    """What update_client_metadata would do to a client with these entities (pure).

    Data counts of removals are zero here; `count_dropped_data` fills them in
    from the client org.
    """
    preview = MetadataPreview()
    server_names = {e.logicalname for e in server}
    keep = server_names | (set(client) - known_server_entities)
    for entity in (_without_foreign_targets(e, keep) for e in server):
        mine = client.get(entity.logicalname)
        if mine is None:
            preview.new_entities.append(entity.logicalname)
            continue
        if mine.primaryidattribute != entity.primaryidattribute:
            preview.skipped_entities.append(entity.logicalname)
            continue
        if (mine.displayname, mine.labels) != (entity.displayname, entity.labels):
            preview.relabelled_entities.append(entity.logicalname)
        theirs = {a.logicalname: a for a in entity.attributes if not a.issystem}
        ours = {a.logicalname: a for a in mine.attributes if not a.issystem}
        for name, attr in theirs.items():
            if name not in ours:
                preview.new_attributes.append(AttributeChange(entity.logicalname, name))
            elif _comparable(ours[name]) != _comparable(attr):
                preview.changed_attributes.append(AttributeChange(
                    entity.logicalname, name, _differences(ours[name], attr)))
        for name in sorted(ours.keys() - theirs.keys()):
            preview.removed_attributes.append(AttributeChange(entity.logicalname, name))
    for name in sorted(known_server_entities - server_names):
        if name in client:
            preview.removed_entities[name] = 0
    return preview


def count_dropped_data(org: OrgDb, preview: MetadataPreview) -> MetadataPreview:
    """Fill in how many records each removal drops (entities) or empties (attributes)."""
    entities = org.entities()
    for name in preview.removed_entities:
        preview.removed_entities[name] = queries.count(org, entities[name])
    for change in preview.removed_attributes:
        change.values = queries.count(org, entities[change.entity],
                                      where=f"[{change.attribute}] IS NOT NULL")
    return preview


def update_client_metadata(org: OrgDb, server: list[Entity],
                           known_server_entities: set[str]) -> list[str]:
    """Migrate the client org to the server's metadata; returns one line per change made.

    `known_server_entities` are the entities that came from the server before,
    so an entity that disappeared from the server is removed from the client
    while the client's own entities stay.
    """
    changes: list[str] = []
    client = org.entities()
    server_names = {e.logicalname for e in server}
    # Lookups may only point to entities the client will have.
    keep = server_names | (set(client) - known_server_entities)
    server = [_without_foreign_targets(e, keep) for e in server]

    new = [e for e in server if e.logicalname not in client]
    new_names = {e.logicalname for e in new}
    if new:
        schema.add_entities(org, [_fresh(e) for e in new])
        changes += [f"added entity {e.logicalname}" for e in new]

    for entity in server:
        mine = org.entities().get(entity.logicalname)
        if mine is None or entity.logicalname in new_names:
            continue
        if mine.primaryidattribute != entity.primaryidattribute:
            changes.append(f"skipped entity {entity.logicalname}: primary id differs "
                           f"({mine.primaryidattribute} here, {entity.primaryidattribute} there)")
            continue
        if (mine.displayname, mine.labels) != (entity.displayname, entity.labels):
            schema.update_entity(org, entity.logicalname, displayname=entity.displayname,
                                 labels=entity.labels)
            changes.append(f"updated labels of entity {entity.logicalname}")
        theirs = {a.logicalname: a for a in entity.attributes if not a.issystem}
        ours = {a.logicalname: a for a in mine.attributes if not a.issystem}
        for name, attr in theirs.items():
            try:
                if name not in ours:
                    schema.add_attribute(org, entity.logicalname, replace(attr))
                    changes.append(f"added attribute {entity.logicalname}.{name}")
                elif _comparable(ours[name]) != _comparable(attr):
                    schema.alter_attribute(org, entity.logicalname, replace(attr))
                    changes.append(f"changed attribute {entity.logicalname}.{name}")
            except MetadataChangeRefused as refused:
                changes.append(f"kept attribute {entity.logicalname}.{name}: {refused.message}")
        for name in ours.keys() - theirs.keys():
            try:
                schema.remove_attribute(org, entity.logicalname, name)
                changes.append(f"removed attribute {entity.logicalname}.{name}")
            except PortalError as refused:
                changes.append(f"kept attribute {entity.logicalname}.{name}: {refused.message}")

    for name in sorted(known_server_entities - server_names):
        if name in org.entities():
            schema.remove_entity(org, name)
            changes.append(f"removed entity {name}")
    return changes


def _without_foreign_targets(entity: Entity, keep: set[str]) -> Entity:
    attributes = []
    for attr in entity.attributes:
        if attr.type == "lookup":
            targets = [t for t in attr.targets if t in keep]
            if not targets:
                continue  # a lookup to entities we do not sync has nothing to point to
            attr = replace(attr, targets=targets)
        attributes.append(attr)
    return replace(entity, attributes=attributes)


def _fresh(entity: Entity) -> Entity:
    """A copy to hand to the org store (which completes and validates it in place)."""
    return replace(entity, attributes=[replace(a) for a in entity.attributes])

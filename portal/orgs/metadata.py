"""Entity and attribute definitions of an org, as Dataverse and Resco describe them.

Definitions are plain dataclasses that travel as JSON (API, sync) and are
stored in the org's `_entities` and `_attributes` tables (portal.orgs.store).
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from portal.errors import InvalidInput
from portal.orgs.types import ATTRIBUTE_TYPES, TYPES

# Columns every entity table has besides its attributes; the store sets them.
SYSTEM_ATTRIBUTES = ("createdon", "modifiedon", "versionnumber")

MAX_STRING_LENGTH = 1_048_576

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass
class Option:
    """One value of a picklist (option set)."""

    value: int
    label: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Attribute:
    """An attribute (column) of an entity."""

    logicalname: str
    type: str
    displayname: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # LCID -> label
    maxlength: int | None = None  # string, memo
    precision: int | None = None  # decimal, money
    required: bool = False
    options: list[Option] = field(default_factory=list)  # picklist
    targets: list[str] = field(default_factory=list)  # lookup: entity names
    issystem: bool = False  # set by the store, not writable by clients


@dataclass
class Entity:
    """An entity (table) of an org with its attributes."""

    logicalname: str
    displayname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    primaryidattribute: str = ""
    primarynameattribute: str | None = None
    entitysetname: str = ""
    isintersect: bool = False
    attributes: list[Attribute] = field(default_factory=list)

    def attribute(self, name: str) -> Attribute | None:
        """The attribute with this logical name, or None."""
        for attr in self.attributes:
            if attr.logicalname == name:
                return attr
        return None

    def writable_attributes(self) -> list[Attribute]:
        """Attributes a client may set (not the primary id, not system columns)."""
        pk = self.primaryidattribute
        return [a for a in self.attributes if not a.issystem and a.logicalname != pk]


def entity_set_name(logicalname: str) -> str:
    """Default OData entity set name: the plural of the logical name, as Dataverse makes it."""
    if re.search(r"[^aeiou]y$", logicalname):
        return logicalname[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", logicalname):
        return logicalname + "es"
    return logicalname + "s"


def system_attributes() -> list[Attribute]:
    """The system columns every entity has, described as attributes."""
    return [
        Attribute("createdon", "datetime", "Created On", {"1033": "Created On"}, issystem=True),
        Attribute("modifiedon", "datetime", "Modified On", {"1033": "Modified On"}, issystem=True),
        Attribute("versionnumber", "bigint", "Version Number", {"1033": "Version Number"},
                  issystem=True),
    ]


def attribute_from_dict(data: dict[str, Any]) -> Attribute:
    """Build an Attribute from its JSON form, checking shapes (not semantics)."""
    if not isinstance(data, dict):
        raise InvalidInput("an attribute must be an object", field="attributes")
    known = {f for f in Attribute.__dataclass_fields__}
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(f"unknown attribute property: {sorted(unknown)[0]}", field="attributes")
    values = dict(data)
    if "logicalname" not in values or "type" not in values:
        raise InvalidInput("an attribute needs logicalname and type", field="attributes")
    options = values.pop("options", None) or []
    try:
        attr = Attribute(**values)
        attr.options = [o if isinstance(o, Option) else Option(**o) for o in options]
    except TypeError as exc:
        raise InvalidInput(f"invalid attribute: {exc}", field="attributes") from None
    return attr


def entity_from_dict(data: dict[str, Any]) -> Entity:
    """Build an Entity from its JSON form, checking shapes (not semantics)."""
    if not isinstance(data, dict):
        raise InvalidInput("an entity must be an object", field="entity")
    known = {f for f in Entity.__dataclass_fields__}
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(f"unknown entity property: {sorted(unknown)[0]}", field="entity")
    values = dict(data)
    attributes = values.pop("attributes", None) or []
    if "logicalname" not in values:
        raise InvalidInput("an entity needs a logicalname", field="logicalname")
    try:
        entity = Entity(**values)
    except TypeError as exc:
        raise InvalidInput(f"invalid entity: {exc}", field="entity") from None
    entity.attributes = [attribute_from_dict(a) for a in attributes]
    return entity


def to_dict(item: Entity | Attribute) -> dict[str, Any]:
    """JSON form of an entity or attribute."""
    return asdict(item)


def check_name(name: Any, what: str) -> str:
    """Refuse a logical name that is not lower-case letters, digits and underscores."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"{what} name {name!r} must be 1-64 lower-case letters, digits or '_', "
            "starting with a letter",
            field=what,
        )
    return name


def check_attribute(attr: Attribute, entity_names: set[str] | None = None) -> Attribute:
    """Validate an attribute definition and fill its defaults; returns it."""
    check_name(attr.logicalname, "attribute")
    where = f"attribute {attr.logicalname}"
    if attr.logicalname in SYSTEM_ATTRIBUTES and not attr.issystem:
        raise InvalidInput(f"{where}: the name is reserved for a system column", field="attribute")
    kind = TYPES.get(attr.type)
    if kind is None:
        raise InvalidInput(
            f"{where}: unknown type {attr.type!r} (one of {', '.join(ATTRIBUTE_TYPES)})",
            field="type",
        )
    if not attr.displayname:
        attr.displayname = attr.labels.get("1033") or attr.logicalname
    if kind.maxlength is not None:
        attr.maxlength = kind.maxlength if attr.maxlength is None else attr.maxlength
        if not isinstance(attr.maxlength, int) or not 1 <= attr.maxlength <= MAX_STRING_LENGTH:
            raise InvalidInput(f"{where}: maxlength must be 1..{MAX_STRING_LENGTH}",
                               field="maxlength")
    else:
        attr.maxlength = None
    if kind.precision is not None:
        attr.precision = kind.precision if attr.precision is None else attr.precision
        if not isinstance(attr.precision, int) or not 0 <= attr.precision <= 10:
            raise InvalidInput(f"{where}: precision must be 0..10", field="precision")
    else:
        attr.precision = None
    if kind.options:
        if not attr.options:
            raise InvalidInput(f"{where}: a picklist needs options", field="options")
        values = [o.value for o in attr.options]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise InvalidInput(f"{where}: option values must be integers", field="options")
        if len(set(values)) != len(values):
            raise InvalidInput(f"{where}: option values must be unique", field="options")
    elif attr.options:
        raise InvalidInput(f"{where}: only a picklist has options", field="options")
    if kind.targets:
        if not attr.targets:
            raise InvalidInput(f"{where}: a lookup needs target entities", field="targets")
        for target in attr.targets:
            check_name(target, "target")
            if entity_names is not None and target not in entity_names:
                raise InvalidInput(f"{where}: target entity {target!r} does not exist",
                                   field="targets")
    elif attr.targets:
        raise InvalidInput(f"{where}: only a lookup has targets", field="targets")
    if not isinstance(attr.required, bool):
        raise InvalidInput(f"{where}: required must be true or false", field="required")
    return attr


def check_entity(entity: Entity, entity_names: set[str] | None = None) -> Entity:
    """Validate a new entity definition and complete it (primary id, system columns)."""
    check_name(entity.logicalname, "entity")
    if not entity.displayname:
        entity.displayname = entity.labels.get("1033") or entity.logicalname
    if not entity.primaryidattribute:
        entity.primaryidattribute = entity.logicalname + "id"
    check_name(entity.primaryidattribute, "primaryidattribute")
    if not entity.entitysetname:
        entity.entitysetname = entity_set_name(entity.logicalname)
    check_name(entity.entitysetname, "entitysetname")
    names = (entity_names or set()) | {entity.logicalname}
    seen: set[str] = set()
    attributes = [a for a in entity.attributes if a.logicalname not in SYSTEM_ATTRIBUTES]
    if not any(a.logicalname == entity.primaryidattribute for a in attributes):
        attributes.insert(0, Attribute(entity.primaryidattribute, "uniqueidentifier",
                                       entity.displayname, dict(entity.labels)))
    for attr in attributes:
        if attr.logicalname in seen:
            raise InvalidInput(f"attribute {attr.logicalname} appears twice", field="attributes")
        seen.add(attr.logicalname)
        check_attribute(attr, names)
    primary = next(a for a in attributes if a.logicalname == entity.primaryidattribute)
    if primary.type != "uniqueidentifier":
        raise InvalidInput("the primary id attribute must be a uniqueidentifier",
                           field="primaryidattribute")
    primary.issystem = True
    if entity.primarynameattribute:
        name_attr = next((a for a in attributes if a.logicalname == entity.primarynameattribute),
                         None)
        if name_attr is None or not TYPES[name_attr.type].text:
            raise InvalidInput("the primary name attribute must be a string attribute",
                               field="primarynameattribute")
    entity.attributes = attributes + system_attributes()
    return entity

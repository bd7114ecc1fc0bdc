"""Read an OData v4 service's `$metadata` in its JSON form (OData CSDL JSON, v4.01).

The same model as `csdl_metadata` reads from CSDL XML, so either document gives
the same entity types, keys, facets, enums, lookups, annotations and entity
sets. The rules that differ from XML, from the OASIS "OData Common Schema
Definition Language (CSDL) JSON Representation Version 4.01": a property's
`$Type` defaults to `Edm.String` and `$Nullable` to false; members whose names
start with `$` are the element's own, with `@` its annotations (`@Term#Qualifier`);
a key may be `{"alias": "path"}`. The document comes from a server we do not
trust: its size, nesting depth and number of values are limited as for XML.
"""

from typing import Any

import orjson

from portal.backends.csdl_metadata import (
    CAPABILITIES,
    CORE,
    CsdlCapabilities,
    CsdlEntityType,
    CsdlEnum,
    CsdlLookup,
    CsdlProperty,
    CsdlService,
    check_shape,
    check_size,
    check_version,
    completed,
)
from portal.errors import BackendError
from portal.orgs.types import from_edm

# Capabilities record terms -> (the record's property, our CsdlCapabilities field).
_CAPABILITY_TERMS = {"ChangeTracking": ("Supported", "change_tracking"),
                     "InsertRestrictions": ("Insertable", "insertable"),
                     "UpdateRestrictions": ("Updatable", "updatable"),
                     "DeleteRestrictions": ("Deletable", "deletable"),
                     "FilterRestrictions": ("Filterable", "filterable")}


def read_csdl_json(content: bytes) -> CsdlService:
    """Parse a CSDL JSON document; BackendError naming what is wrong with it."""
    check_size(len(content))
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"the $metadata document is not valid JSON: {exc}") from None
    _check_size(document)
    if not isinstance(document, dict) or "$Version" not in document:
        raise BackendError("the $metadata document is not OData CSDL JSON (no $Version)")
    version = str(document["$Version"])
    check_version(version)
    return _Reader(document).service(version)


def _check_size(document: Any) -> None:
    """Refuse a document nested too deep or holding too many values (`check_shape`)."""
    count = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        check_shape(depth, count, "values")
        children = value.values() if isinstance(value, dict) else (
            value if isinstance(value, list) else ())
        stack.extend((child, depth + 1) for child in children)


def _objects(holder: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The members of a schema or container that are elements of this `$Kind`."""
    return [(name, value) for name, value in holder.items()
            if not name.startswith(("$", "@")) and isinstance(value, dict)
            and value.get("$Kind") == kind]


def _int(value: Any) -> int | None:
    """A facet's number; "max", "variable", "floating" or nothing read as None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Reader:
    """The schemas, then their `$Annotations`, then base types (as the XML reader)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas = {name: value for name, value in document.items()
                        if not name.startswith("$") and isinstance(value, dict)}
        self.aliases: dict[str, str] = {}  # alias -> namespace, of schemas and references
        for reference in (document.get("$Reference") or {}).values():
            for include in (reference or {}).get("$Include") or []:
                if isinstance(include, dict) and include.get("$Alias"):
                    self.aliases[include["$Alias"]] = include.get("$Namespace", "")
        for namespace, schema in self.schemas.items():
            if schema.get("$Alias"):
                self.aliases[schema["$Alias"]] = namespace

    def qualified(self, name: str) -> str:
        """A qualified name with its alias (if any) replaced by the namespace."""
        prefix, _, local = name.rpartition(".")
        return f"{self.aliases.get(prefix, prefix)}.{local}" if prefix else name

    def terms(self, holder: dict[str, Any]) -> dict[str, Any]:
        """A holder's unqualified annotations by qualified term (`@Core.Computed` -> ...)."""
        found = {}
        for name, value in holder.items():
            if name.startswith("@") and "#" not in name:
                found[self.qualified(name[1:])] = value
        return found

    def service(self, version: str) -> CsdlService:
        entity_types: dict[str, CsdlEntityType] = {}
        enums: dict[str, CsdlEnum] = {}
        entity_sets: dict[str, str] = {}
        capabilities: dict[str, CsdlCapabilities] = {}
        for namespace, schema in self.schemas.items():
            for name, element in _objects(schema, "EnumType"):
                enums[f"{namespace}.{name}"] = self.enum(f"{namespace}.{name}", element)
        for namespace, schema in self.schemas.items():
            for name, element in _objects(schema, "EntityType"):
                entity_types[f"{namespace}.{name}"] = self.entity_type(
                    f"{namespace}.{name}", element, enums)
            for _, container in _objects(schema, "EntityContainer"):
                for name, member in container.items():
                    if isinstance(member, dict) and member.get("$Collection") is True:
                        entity_sets[name] = self.qualified(str(member.get("$Type", "")))
                        self.read_capabilities(member, capabilities.setdefault(
                            name, CsdlCapabilities()))
        for schema in self.schemas.values():
            for target, annotations in (schema.get("$Annotations") or {}).items():
                self.external_annotations(target, annotations, entity_types, capabilities)
        return completed(CsdlService(version, entity_types, enums, entity_sets, capabilities))

    def enum(self, name: str, element: dict[str, Any]) -> CsdlEnum:
        members: dict[str, int] = {}
        for member, value in element.items():
            if member.startswith("$") or "@" in member:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise BackendError(f"enum {name}: member {member} has value {value!r}, "
                                   "not an integer")
            members[member] = value
        return CsdlEnum(name, members, element.get("$IsFlags") is True)

    def entity_type(self, name: str, element: dict[str, Any],
                    enums: dict[str, CsdlEnum]) -> CsdlEntityType:
        keys = []
        for key in element.get("$Key") or []:
            # {"alias": "path"}: a key property of a complex property; we sync flat keys.
            keys.append(key if isinstance(key, str) else next(iter(key.values()), ""))
        base = element.get("$BaseType")
        entity_type = CsdlEntityType(name, keys, base=self.qualified(base) if base else None)
        for member, value in element.items():
            if member.startswith(("$", "@")) or not isinstance(value, dict):
                continue
            kind = value.get("$Kind", "Property")
            if kind == "Property":
                entity_type.properties.append(self.property(member, value, enums))
            elif kind == "NavigationProperty":
                constraints = {own: str(theirs) for own, theirs in
                               (value.get("$ReferentialConstraint") or {}).items()
                               if "@" not in own}
                # As in XML: a collection, or a reference held by no property of ours, is no lookup.
                if constraints and value.get("$Collection") is not True:
                    entity_type.lookups.append(CsdlLookup(
                        member, self.qualified(str(value.get("$Type", ""))), constraints))
        return entity_type

    def property(self, name: str, element: dict[str, Any],
                 enums: dict[str, CsdlEnum]) -> CsdlProperty:
        declared = str(element.get("$Type", "Edm.String"))
        qualified = self.qualified(declared)
        enum = enums.get(qualified)
        kind = from_edm(declared) if element.get("$Collection") is not True else None
        prop = CsdlProperty(
            name=name, edm=qualified if enum else declared,
            type="picklist" if enum is not None and not enum.flags else (
                kind.name if kind is not None else None),
            maxlength=_int(element.get("$MaxLength")), precision=_int(element.get("$Precision")),
            scale=_int(element.get("$Scale")), nullable=element.get("$Nullable") is True,
            enum=qualified if enum else None)
        self.annotate(prop, element)
        return prop

    def annotate(self, prop: CsdlProperty, holder: dict[str, Any]) -> None:
        """Apply `@Core.Computed` / `@Core.Immutable` (unqualified) to a property."""
        terms = self.terms(holder)
        for term, attribute in ((f"{CORE}.Computed", "computed"),
                                (f"{CORE}.Immutable", "immutable")):
            if term in terms:
                setattr(prop, attribute, terms[term] is True)

    def read_capabilities(self, holder: dict[str, Any], found: CsdlCapabilities) -> None:
        """Read the Capabilities record terms of an entity set (inline or targeted)."""
        for term, record in self.terms(holder).items():
            prefix, _, local = term.rpartition(".")
            if prefix != CAPABILITIES or local not in _CAPABILITY_TERMS \
                    or not isinstance(record, dict):
                continue
            wanted, attribute = _CAPABILITY_TERMS[local]
            if isinstance(record.get(wanted), bool):
                setattr(found, attribute, record[wanted])

    def external_annotations(self, target: str, annotations: Any,
                             entity_types: dict[str, CsdlEntityType],
                             capabilities: dict[str, CsdlCapabilities]) -> None:
        """`"$Annotations": {"Ns.Type/Property": ...}` and `{"Ns.Container/Set": ...}`."""
        if not isinstance(annotations, dict):
            return
        holder, _, member = target.partition("/")
        entity_type = entity_types.get(self.qualified(holder))
        prop = entity_type.property(member) if entity_type and member else None
        if prop is not None:
            self.annotate(prop, annotations)
        elif member in capabilities and "." in holder:
            self.read_capabilities(annotations, capabilities[member])

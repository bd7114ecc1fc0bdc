"""How records look in a dialect: lookup names, Dataverse's annotations, $expand.

The Org API writes a lookup's GUID under its logical name; Dataverse writes
it as `_{lookup}_value` and, when `Prefer: odata.include-annotations` asks,
adds `@Microsoft.Dynamics.CRM.lookuplogicalname`,
`@Microsoft.Dynamics.CRM.associatednavigationproperty` and
`@OData.Community.Display.V1.FormattedValue` (lookups' primary names, option
labels, Yes/No, money, numbers and dates as a US-English user sees them, in
UTC). Microsoft Learn: "Query data using the Web API" / "Select columns"
(formatted values and lookup properties) and "Join tables using OData" ($expand
of single-valued and collection-valued navigation properties, nested). An
expanded collection holds every related record (up to 5,000, as Dataverse's
single-level $expand) and no `<nav>@odata.nextLink`: the related set's own
filtered-collection URL is not served here.
"""

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from portal.orgs import queries
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.queries import Order
from portal.orgs.relationships import names as relationship_names
from portal.orgs.store import OrgDb
from portal.web.odata import relationships
from portal.web.odata.dialect import Dialect
from portal.web.odata.filters import parse_filter
from portal.web.odata.messages import ProtocolError, bad_request
from portal.web.odata.options import parse_orderby, parse_select, split_top

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_TARGET = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
# Dataverse's limits: 15 $expand options in a query, 5,000 related records per
# expanded collection; nesting here goes three levels deep.
MAX_EXPANDS = 15
MAX_RELATED = 5000
MAX_DEPTH = 3
SINGLE_OPTIONS = ("$select", "$expand")
COLLECTION_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$expand")
EXPAND_ITEM_RE = re.compile(r"^(\w+)(?:\((.*)\))?$", re.S)


def json_keys(entity: Entity, dialect: Dialect) -> dict[str, str]:
    """The JSON name of every attribute whose name differs from its logical name."""
    return {a.logicalname: dialect.lookup_key(a.logicalname) for a in entity.attributes
            if a.type == "lookup" and dialect.lookup_key(a.logicalname) != a.logicalname}


def navigation_names(entity: Entity, entities: dict[str, Entity]
                     ) -> dict[str, tuple[Attribute, list[str]]]:
    """Single-valued navigation properties: name -> (lookup, its targets).

    Dataverse names a one-target lookup's navigation property after the lookup
    (`primarycontactid`) and a polymorphic one's per target
    (`parentcustomerid_account`); `{lookup}_{target}` (our $metadata's name) is
    accepted for every lookup.
    """
    found: dict[str, tuple[Attribute, list[str]]] = {}
    for attr in entity.attributes:
        if attr.type != "lookup":
            continue
        targets = [t for t in attr.targets if t in entities]
        if len(targets) == 1:
            found[attr.logicalname] = (attr, targets)
        for target in targets:
            found[f"{attr.logicalname}_{target}"] = (attr, [target])
    return found


def associated_navigation(attr: Attribute, target: str) -> str:
    """The navigation property Dataverse names in a lookup's annotation."""
    return attr.logicalname if len(attr.targets) == 1 else f"{attr.logicalname}_{target}"


@dataclass
class Expansion:
    """One `$expand=nav(...)` item.

    Single-valued: `lookup` is the record's lookup, `targets` the entities it may
    name. Collection-valued: `lookup` is the related entity's lookup to the
    record, `targets` that one related entity, with its $filter, $orderby, $top.
    """

    name: str
    lookup: Attribute
    targets: list[str]
    select: str | None = None
    collection: bool = False
    where: str = ""
    params: list[Any] = field(default_factory=list)
    order: Order = field(default_factory=list)
    top: int | None = None
    nested: list["Expansion"] = field(default_factory=list)


@dataclass
class Shape:
    """What a read adds to its records beyond the SQL-made JSON."""

    annotations: list[str] = field(default_factory=list)  # include-annotations patterns
    expand: list[Expansion] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)  # read for an expansion, not $selected

    def columns(self, names: list[str], keys: dict[str, str]) -> list[str]:
        """The attributes to read: the selected ones and the lookups being expanded."""
        extra = [e.lookup.logicalname for e in self.expand
                 if not e.collection and e.lookup.logicalname not in names]
        self.hidden = {keys.get(n, n) for n in extra}
        return names + list(dict.fromkeys(extra))

    @property
    def needed(self) -> bool:
        """True when records must be decoded and shaped in Python."""
        return bool(self.annotations or self.expand)

    def wants(self, term: str) -> bool:
        """Does odata.include-annotations ask for this annotation term?"""
        included = False
        for pattern in self.annotations:
            excluded = pattern.startswith("-")
            name = pattern.lstrip("-")
            if name == "*" or name == term or (name.endswith(".*") and
                                               term.startswith(name[:-1])):
                if excluded:
                    return False
                included = True
        return included


def collection_navigations(entity: Entity, org: OrgDb) -> dict[str, tuple[Entity, Attribute]]:
    """Collection-valued navigation properties: name -> (related entity, its lookup to us).

    One per one-to-many relationship of the entity, named as Dataverse names it:
    the relationship's ReferencedEntityNavigationPropertyName (its schema name).
    """
    entities = org.entities()
    found: dict[str, tuple[Entity, Attribute]] = {}
    for relationship in relationships.one_to_many(entities, relationship_names(org)):
        if relationship["ReferencedEntity"] != entity.logicalname:
            continue
        related = entities[relationship["ReferencingEntity"]]
        lookup = related.attribute(relationship["ReferencingAttribute"])
        assert lookup is not None  # the relationship was derived from it
        found[relationship["ReferencedEntityNavigationPropertyName"]] = (related, lookup)
    return found


def parse_expand(text: str | None, entity: Entity, org: OrgDb, dialect: Dialect, *,
                 depth: int = 0, budget: list[int] | None = None) -> list[Expansion]:
    """$expand of navigation properties with their options, nested as Dataverse allows.

    Single-valued: $select and a nested $expand. Collection-valued (one-to-many):
    $select, $filter, $orderby, $top and a nested $expand. At most MAX_EXPANDS in all.
    """
    if text is None:
        return []
    if not dialect.expand:
        raise ProtocolError(501, "NotImplemented", "$expand is not supported")
    budget = budget if budget is not None else [MAX_EXPANDS]
    entities = org.entities()
    singles = navigation_names(entity, entities)
    collections = collection_navigations(entity, org)
    found = []
    for item in split_top(text, ","):
        match = EXPAND_ITEM_RE.match(item)
        name = match.group(1) if match else item
        if match is None or (name not in singles and name not in collections):
            raise bad_request(f"$expand: {entity.logicalname} has no navigation property "
                              f"{name!r}", "$expand")
        budget[0] -= 1
        if budget[0] < 0:
            raise bad_request(f"$expand: at most {MAX_EXPANDS} navigation properties may be "
                              "expanded in one query", "$expand")
        options = _expand_options(match.group(2) or "", name, name in collections)
        if name in singles:
            lookup, targets = singles[name]
            expansion = Expansion(name, lookup, targets, options.get("$select"))
            inner = [entities[t] for t in targets]
        else:
            related, lookup = collections[name]
            expansion = Expansion(name, lookup, [related.logicalname], options.get("$select"),
                                  collection=True)
            if "$filter" in options:
                expansion.where, expansion.params = parse_filter(
                    options["$filter"], related, dataverse_functions=dialect.functions)
            expansion.order = parse_orderby(options.get("$orderby"), related)
            if "$top" in options:
                top = options["$top"]
                if not top.isdigit() or int(top) > MAX_RELATED:
                    raise bad_request(f"$expand={name}($top=...): a whole number up to "
                                      f"{MAX_RELATED}", "$expand")
                expansion.top = int(top)
            inner = [related]
        if "$expand" in options:
            if depth + 1 >= MAX_DEPTH or len(inner) != 1:
                raise bad_request(f"$expand={name}($expand=...): nested $expand goes "
                                  f"{MAX_DEPTH} levels deep, through one target", "$expand")
            expansion.nested = parse_expand(options["$expand"], inner[0], org, dialect,
                                            depth=depth + 1, budget=budget)
        found.append(expansion)
    return found


def _expand_options(text: str, name: str, collection: bool) -> dict[str, str]:
    allowed = COLLECTION_OPTIONS if collection else SINGLE_OPTIONS
    options: dict[str, str] = {}
    for option in split_top(text, ";"):
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise bad_request(f"$expand={name}(...): only {', '.join(allowed)} can be given "
                              f"inside, not {key!r}", "$expand")
        options[key] = value.strip()
    return options


def parse_annotations(value: str | None, dialect: Dialect) -> list[str]:
    """The include-annotations patterns a dialect honours ("*", "ns.*", terms, "-excluded")."""
    if not value or not dialect.annotations:
        return []
    return [p.strip() for p in value.split(",") if p.strip()]


def shape_records(org: OrgDb, entity: Entity, records: list[dict[str, Any]], shape: Shape,
                  dialect: Dialect) -> list[dict[str, Any]]:
    """Records with the annotations and expansions a read asked for (keys as the dialect's)."""
    if not shape.needed:
        return records
    entities = org.entities()
    keys = json_keys(entity, dialect)
    attributes = {keys.get(a.logicalname, a.logicalname): a for a in entity.attributes}
    targets = _lookup_targets(org, entity, records, keys, entities) if shape.annotations \
        else {}
    pk = entity.primaryidattribute
    expanded = [(e, pk if e.collection else keys.get(e.lookup.logicalname,
                                                     e.lookup.logicalname),
                 _related(org, e, records, pk, shape, dialect) if e.collection else
                 _expanded(org, e, records, keys, shape, dialect)) for e in shape.expand]
    out = []
    for record in records:
        shaped: dict[str, Any] = {}
        for key, value in record.items():
            if key in shape.hidden:
                continue
            attr = attributes.get(key)
            if attr is not None and shape.annotations and value is not None:
                shaped.update(_annotations(attr, key, value, shape, targets))
            shaped[key] = value
        for expansion, key, values in expanded:
            if expansion.collection:
                shaped[expansion.name] = values.get(record[key], [])
            else:
                shaped[expansion.name] = values.get(record[key]) if record.get(key) else None
        out.append(shaped)
    return out


def _annotations(attr: Attribute, key: str, value: Any, shape: Shape,
                 targets: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """The annotations of one value, in the order Dataverse writes them (before the value)."""
    out: dict[str, Any] = {}
    if attr.type == "lookup":
        target, name = targets.get(value, (None, None))
        if name is not None and shape.wants(FORMATTED):
            out[f"{key}@{FORMATTED}"] = name
        if target is not None:
            if shape.wants(NAVIGATION):
                out[f"{key}@{NAVIGATION}"] = associated_navigation(attr, target)
            if shape.wants(LOOKUP_TARGET):
                out[f"{key}@{LOOKUP_TARGET}"] = target
        return out
    formatted = formatted_value(attr, value)
    if formatted is not None and shape.wants(FORMATTED):
        out[f"{key}@{FORMATTED}"] = formatted
    return out


def formatted_value(attr: Attribute, value: Any) -> str | None:
    """A value as Dataverse formats it for a US-English user (dates in UTC), or None."""
    kind = attr.type
    if kind == "picklist":
        return next((o.label for o in attr.options if o.value == value), None)
    if kind == "boolean":
        return "Yes" if value else "No"
    if kind == "money":
        return f"${float(value):,.{attr.precision if attr.precision is not None else 2}f}"
    if kind in ("integer", "bigint"):
        return f"{int(value):,}"
    if kind in ("decimal", "double"):
        places = attr.precision if attr.precision is not None else 2
        return f"{float(value):,.{places}f}"
    if kind == "datetime":
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        hour = moment.hour % 12 or 12
        return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d} "
                f"{'AM' if moment.hour < 12 else 'PM'}")
    return None


def _ids_by_lookup(entity: Entity, records: list[dict[str, Any]], keys: dict[str, str]
                   ) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for attr in entity.attributes:
        if attr.type != "lookup":
            continue
        key = keys.get(attr.logicalname, attr.logicalname)
        for record in records:
            if record.get(key):
                found[attr.logicalname].add(record[key])
    return found


def _lookup_targets(org: OrgDb, entity: Entity, records: list[dict[str, Any]],
                    keys: dict[str, str], entities: dict[str, Entity]
                    ) -> dict[str, tuple[str, str | None]]:
    """GUID -> (target entity, its primary name) for every lookup value of these records."""
    found: dict[str, tuple[str, str | None]] = {}
    for lookup, ids in _ids_by_lookup(entity, records, keys).items():
        attr = entity.attribute(lookup)
        assert attr is not None
        for target in attr.targets:
            target_entity = entities.get(target)
            if target_entity is None:
                continue
            name = target_entity.primarynameattribute
            wanted = sorted(i for i in ids if i not in found)
            for i in range(0, len(wanted), queries.IDS_PER_QUERY):
                chunk = wanted[i:i + queries.IDS_PER_QUERY]
                columns = f"[{target_entity.primaryidattribute}]" + (f", [{name}]" if name
                                                                      else ", NULL")
                rows = org.db.conn.execute(
                    f"SELECT {columns} FROM [{target}] WHERE [{target_entity.primaryidattribute}]"
                    f" IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
                for row in rows:
                    found[row[0]] = (target, row[1])
    return found


def _expanded(org: OrgDb, expansion: Expansion, records: list[dict[str, Any]],
              keys: dict[str, str], shape: Shape, dialect: Dialect
              ) -> dict[str, dict[str, Any]]:
    """GUID -> the expanded target record (its $select, pk and @odata.etag)."""
    key = keys.get(expansion.lookup.logicalname, expansion.lookup.logicalname)
    ids = sorted({r[key] for r in records if r.get(key)})
    entities = org.entities()
    out: dict[str, dict[str, Any]] = {}
    for target in expansion.targets:
        target_entity = entities[target]
        inner = Shape(shape.annotations, expansion.nested)
        target_keys = json_keys(target_entity, dialect)
        names = inner.columns(parse_select(expansion.select, target_entity), target_keys)
        found = queries.records_by_ids(org, target_entity, names, ids, keys=target_keys)
        shaped = shape_records(org, target_entity, list(found.values()), inner, dialect)
        out.update(zip(found, shaped, strict=True))
    return out


def _related(org: OrgDb, expansion: Expansion, records: list[dict[str, Any]], pk: str,
             shape: Shape, dialect: Dialect) -> dict[str, list[dict[str, Any]]]:
    """Record id -> its related records of a collection-valued navigation property."""
    related = org.entities()[expansion.targets[0]]
    inner = Shape(shape.annotations, expansion.nested)
    keys = json_keys(related, dialect)
    names = parse_select(expansion.select, related)
    if expansion.lookup.logicalname not in names:  # Dataverse answers it in each row
        names.append(expansion.lookup.logicalname)
    limit = expansion.top if expansion.top is not None else MAX_RELATED + 1
    found = queries.related_records(
        org, related, inner.columns(names, keys), expansion.lookup.logicalname,
        sorted({r[pk] for r in records}), where=expansion.where, params=expansion.params,
        order=expansion.order, limit=limit, keys=keys)
    for parent, rows in found.items():
        if len(rows) > MAX_RELATED:
            raise bad_request(f"$expand={expansion.name}: record {parent} has more than "
                              f"{MAX_RELATED} related records; read them from "
                              f"{related.entitysetname} with $filter on "
                              f"{dialect.lookup_key(expansion.lookup.logicalname)}", "$expand")
        found[parent] = shape_records(org, related, rows, inner, dialect)
    return found

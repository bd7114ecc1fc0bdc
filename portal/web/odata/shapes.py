"""How records look in a dialect: lookup names, Dataverse's annotations, single-valued $expand.

The Org API writes a lookup's GUID under its logical name; Dataverse writes
it as `_{lookup}_value` and, when `Prefer: odata.include-annotations` asks,
adds `@Microsoft.Dynamics.CRM.lookuplogicalname`,
`@Microsoft.Dynamics.CRM.associatednavigationproperty` and
`@OData.Community.Display.V1.FormattedValue` (lookups' primary names, option
labels, Yes/No, money, numbers and dates as a US-English user sees them, in
UTC). Microsoft Learn: "Query data using the Web API" / "Select columns"
(formatted values and lookup properties) and "Join tables" ($expand).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from portal.orgs import queries
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.store import OrgDb
from portal.web.odata.dialect import Dialect
from portal.web.odata.messages import ProtocolError, bad_request
from portal.web.odata.options import parse_select

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_TARGET = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"


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
    """One `$expand=nav($select=...)` item."""

    name: str
    lookup: Attribute
    targets: list[str]
    select: str | None = None


@dataclass
class Shape:
    """What a read adds to its records beyond the SQL-made JSON."""

    annotations: list[str] = field(default_factory=list)  # include-annotations patterns
    expand: list[Expansion] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)  # read for an expansion, not $selected

    def columns(self, names: list[str], keys: dict[str, str]) -> list[str]:
        """The attributes to read: the selected ones and the lookups being expanded."""
        extra = [e.lookup.logicalname for e in self.expand if e.lookup.logicalname not in names]
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


def split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_expand(text: str | None, entity: Entity, entities: dict[str, Entity],
                 dialect: Dialect) -> list[Expansion]:
    """$expand of single-valued navigation properties, each with an optional $select."""
    if text is None:
        return []
    if not dialect.expand:
        raise ProtocolError(501, "NotImplemented", "$expand is not supported")
    navigations = navigation_names(entity, entities)
    found = []
    for item in split_top_level(text):
        name, _, inner = item.partition("(")
        name = name.strip()
        if name not in navigations:
            raise bad_request(f"$expand: {entity.logicalname} has no single-valued navigation "
                              f"property {name!r}", "$expand")
        select = None
        if inner:
            if not inner.endswith(")"):
                raise bad_request(f"$expand: {item!r} is not nav($select=...)", "$expand")
            for option in inner[:-1].split(";"):
                key, _, value = option.strip().partition("=")
                if key != "$select":
                    raise ProtocolError(501, "NotImplemented",
                                        f"$expand: only $select is supported inside, not {key}")
                select = value
        lookup, targets = navigations[name]
        found.append(Expansion(name, lookup, targets, select))
    return found


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
    expanded = [(e, keys.get(e.lookup.logicalname, e.lookup.logicalname),
                 _expanded(org, e, records, keys, entities, dialect)) for e in shape.expand]
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
              keys: dict[str, str], entities: dict[str, Entity], dialect: Dialect
              ) -> dict[str, dict[str, Any]]:
    """GUID -> the expanded target record (its $select, pk and @odata.etag)."""
    key = keys.get(expansion.lookup.logicalname, expansion.lookup.logicalname)
    ids = sorted({r[key] for r in records if r.get(key)})
    out: dict[str, dict[str, Any]] = {}
    for target in expansion.targets:
        target_entity = entities[target]
        names = parse_select(expansion.select, target_entity)
        found = queries.records_by_ids(org, target_entity, names, ids,
                                       keys=json_keys(target_entity, dialect))
        out.update(found)
    return out

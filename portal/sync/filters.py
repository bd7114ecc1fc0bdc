"""Sync filters: FetchXML `<filter>` trees, their OData form, and their evaluation on records.

A connection restricts the records it syncs per entity with a FetchXML filter
(and/or groups of conditions), as Dataverse and Resco write them. This module
parses such filters safely (defusedxml, no DTD, size limits), stores them in
one canonical XML form, checks them against an entity's metadata (which also
types their values), turns them into an OData v4 `$filter` for servers, and
evaluates them on record dicts so the client can find records that stopped
matching. Every refusal is an `InvalidInput` with field "filter".
"""

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from portal.errors import InvalidInput
from portal.orgs.metadata import NAME_RE, SYSTEM_ATTRIBUTES, Attribute, Entity, system_attributes
from portal.orgs.types import NO_VALUE, TYPES, fold_text

# Limits against hostile or runaway input. Dataverse allows 500 conditions per
# <filter> element; we count them over the whole tree, which is stricter.
MAX_XML_LENGTH = 1_000_000
MAX_CONDITIONS = 500
MAX_DEPTH = 20
MAX_VALUES = 5_000

GROUP_TYPES = ("and", "or")
NO_VALUE_OPERATORS = frozenset({"null", "not-null"})
LIST_OPERATORS = frozenset({"in", "not-in"})
SINGLE_VALUE_OPERATORS = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "like", "not-like"})
OPERATORS = NO_VALUE_OPERATORS | LIST_OPERATORS | SINGLE_VALUE_OPERATORS
# Dataverse accepts `neq` for `ne`; the canonical form writes `ne`.
OPERATOR_SYNONYMS = {"neq": "ne"}
ORDERING_OPERATORS = frozenset({"lt", "le", "gt", "ge"})
LIKE_OPERATORS = frozenset({"like", "not-like"})

# XML attributes a condition may carry. The ui* ones are labels Dataverse's
# view designer adds to lookup conditions: harmless, dropped from the canonical
# form. entityname and valueof change the meaning (link-entity, column
# comparison) and are refused, as is anything unknown.
CONDITION_XML_ATTRIBUTES = frozenset({"attribute", "operator", "value"})
IGNORED_XML_ATTRIBUTES = frozenset({"uiname", "uitype", "uihidden"})
# Query hints on <filter> do not change which rows match.
FILTER_XML_ATTRIBUTES = frozenset({"type", "hint", "isquickfindfields",
                                   "overridequickfindrecordlimitenabled",
                                   "overridequickfindrecordlimitdisabled"})
# Children of <entity> that do not restrict rows; anything else (link-entity) is refused.
ENTITY_IGNORED_CHILDREN = frozenset({"attribute", "all-attributes", "order"})

# Edm literals written without quotes in OData 4.
UNQUOTED_EDM = frozenset({"Edm.Guid", "Edm.DateTimeOffset"})


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"filter: {message}", field="filter")


class Filter:
    """A sync filter: a Group of conditions and groups, or a single Condition."""

    def to_xml(self) -> str:
        """The canonical FetchXML text, as stored in the database."""
        return tostring(_element(self), encoding="unicode")

    def to_odata(self) -> str:
        """The filter as an OData `$filter` expression (module `to_odata`); a backend
        holding a filter asks it, so that it imports nothing of the sync engine."""
        return to_odata(self)

    def attributes(self) -> set[str]:
        """Names of the attributes the filter uses."""
        return {c.attribute for c in self.conditions()}

    def conditions(self) -> Iterator["Condition"]:
        """Every condition of the filter, depth first."""
        if isinstance(self, Condition):
            yield self
        elif isinstance(self, Group):
            for child in self.children:
                yield from child.conditions()

    def check(self, entity: Entity) -> "Filter":
        """Validate names and values against the entity; returns the filter with typed values."""
        if isinstance(self, Group):
            return replace(self, children=tuple(c.check(entity) for c in self.children))
        assert isinstance(self, Condition)
        return _check_condition(self, entity)


@dataclass(frozen=True)
class Group(Filter):
    """An and/or group (FetchXML `<filter type=...>`); an empty group matches every record."""

    type: str = "and"
    children: tuple[Filter, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in GROUP_TYPES:
            raise _refuse(f'<filter type="{self.type}">: the type must be "and" or "or"')


@dataclass(frozen=True)
class Condition(Filter):
    """One FetchXML `<condition>`; `attribute_type` is set by check() and types the values."""

    attribute: str
    operator: str
    values: tuple[Any, ...] = ()
    attribute_type: str | None = None

    def __post_init__(self) -> None:
        # Validated here so that a condition built in code is as sound as a parsed one.
        where = f'<condition attribute="{self.attribute}" operator="{self.operator}">'
        if not isinstance(self.attribute, str) or not NAME_RE.match(self.attribute):
            raise _refuse(f"{where}: {self.attribute!r} is not an attribute name "
                          "(lower-case letters, digits and '_')")
        if self.operator not in OPERATORS:
            raise _refuse(f"{where}: unknown operator {self.operator!r} "
                          f"(supported: {', '.join(sorted(OPERATORS | set(OPERATOR_SYNONYMS)))})")
        if self.operator in NO_VALUE_OPERATORS and self.values:
            raise _refuse(f"{where}: operator {self.operator} takes no value")
        if self.operator in SINGLE_VALUE_OPERATORS and len(self.values) != 1:
            raise _refuse(f"{where}: operator {self.operator} needs exactly one value")
        if self.operator in LIST_OPERATORS and not self.values:
            raise _refuse(f"{where}: operator {self.operator} needs at least one <value>")


# ---------------------------------------------------------------- parsing


def _parse_xml(xml: str) -> Element:
    if not isinstance(xml, str):
        raise _refuse(f"expected XML text, got {type(xml).__name__}")
    if len(xml) > MAX_XML_LENGTH:
        raise _refuse(f"the XML is longer than {MAX_XML_LENGTH} characters")
    try:
        # No DTD at all: that rules out entity expansion (billion laughs) and
        # external entities (XXE) before expat sees them.
        return fromstring(xml, forbid_dtd=True)
    except ParseError as exc:
        raise _refuse(f"malformed XML: {exc}") from None
    except DefusedXmlException as exc:
        raise _refuse(f"forbidden XML construct ({type(exc).__name__}): "
                      "DTDs and entities are not allowed") from None


class _Budget:
    """Counts conditions and values over one filter tree, to refuse oversized filters."""

    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def spend(self, values: int) -> None:
        self.conditions += 1
        self.values += values
        if self.conditions > MAX_CONDITIONS:
            raise _refuse(f"more than {MAX_CONDITIONS} conditions")
        if self.values > MAX_VALUES:
            raise _refuse(f"more than {MAX_VALUES} values")


def _parse_group(elem: Element, depth: int, budget: _Budget) -> Group:
    if depth > MAX_DEPTH:
        raise _refuse(f"<filter> groups are nested deeper than {MAX_DEPTH}")
    unknown = set(elem.attrib) - FILTER_XML_ATTRIBUTES
    if unknown:
        raise _refuse(f"<filter> has an unknown attribute {sorted(unknown)[0]!r}")
    kind = elem.get("type", "and")  # FetchXML's default is and
    children: list[Filter] = []
    for child in elem:
        if child.tag == "condition":
            children.append(_parse_condition(child, budget))
        elif child.tag == "filter":
            group = _parse_group(child, depth + 1, budget)
            # Dataverse ignores an empty nested filter; so does the canonical form.
            if group.children:
                children.append(group)
        else:
            raise _refuse(f"<{child.tag}> is not allowed in <filter> "
                          "(only <condition> and <filter>)")
    return Group(kind, tuple(children))


def _parse_condition(elem: Element, budget: _Budget) -> Condition:
    name = elem.get("attribute")
    operator = elem.get("operator")
    shown = " ".join(f'{k}="{elem.get(k)}"' for k in ("attribute", "operator") if elem.get(k))
    where = f"<condition {shown}>" if shown else "<condition>"
    if not name:
        raise _refuse(f"{where} has no attribute name")
    if not operator:
        raise _refuse(f"{where} has no operator")
    for key in elem.attrib:
        if key not in CONDITION_XML_ATTRIBUTES and key not in IGNORED_XML_ATTRIBUTES:
            raise _refuse(f"{where}: the XML attribute {key!r} is not supported")
    operator = OPERATOR_SYNONYMS.get(operator, operator)
    children = list(elem)
    for child in children:
        if child.tag != "value":
            raise _refuse(f"{where}: <{child.tag}> is not allowed (only <value>)")
        unknown = set(child.attrib) - IGNORED_XML_ATTRIBUTES
        if unknown:
            raise _refuse(f"{where}: <value> has an unknown attribute {sorted(unknown)[0]!r}")
    attribute_value = elem.get("value")
    if operator in LIST_OPERATORS:
        if attribute_value is not None:
            raise _refuse(f"{where}: operator {operator} takes <value> elements, "
                          "not a value attribute")
        values = tuple(child.text or "" for child in children)
    else:
        if children:
            raise _refuse(f"{where}: operator {operator} takes no <value> elements")
        values = () if attribute_value is None else (attribute_value,)
    budget.spend(len(values))
    return Condition(name, operator, values)


def parse_filter(xml: str) -> Filter:
    """Parse a FetchXML `<filter>` element into a Filter (values still text)."""
    root = _parse_xml(xml)
    if root.tag == "fetch":
        raise _refuse("expected a <filter>, got a <fetch> document (use parse_fetch_filters)")
    if root.tag != "filter":
        raise _refuse(f"expected a <filter>, got <{root.tag}>")
    return _parse_group(root, 1, _Budget())


def parse_fetch_filters(xml: str) -> dict[str, Filter]:
    """Parse a `<fetch>` with one `<entity>` per filtered entity into entity name -> Filter."""
    root = _parse_xml(xml)
    if root.tag != "fetch":
        raise _refuse(f"expected a <fetch> document, got <{root.tag}>")
    filters: dict[str, Filter] = {}
    seen: set[str] = set()
    for entity in root:
        if entity.tag != "entity":
            raise _refuse(f"<{entity.tag}> is not allowed in <fetch> (only <entity>)")
        name = entity.get("name")
        if not name or not NAME_RE.match(name):
            raise _refuse(f'<entity name="{name}">: missing or invalid entity name')
        if name in seen:
            raise _refuse(f'<entity name="{name}"> appears twice')
        seen.add(name)
        groups: list[Filter] = []
        budget = _Budget()  # the limits hold per entity, as each is a query of its own
        for child in entity:
            if child.tag == "filter":
                group = _parse_group(child, 1, budget)
                if group.children:
                    groups.append(group)
            elif child.tag not in ENTITY_IGNORED_CHILDREN:
                # A link-entity would restrict rows by a join we do not sync.
                raise _refuse(f'<{child.tag}> in <entity name="{name}"> is not supported')
        if len(groups) == 1:
            filters[name] = groups[0]
        elif groups:  # several <filter> children of an entity all apply
            filters[name] = Group("and", tuple(groups))
    return filters


# ------------------------------------------------------------ canonical XML


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _element(node: Filter, parent: Element | None = None) -> Element:
    if isinstance(node, Group):
        elem = Element("filter") if parent is None else SubElement(parent, "filter")
        elem.set("type", node.type)
        for child in node.children:
            _element(child, elem)
        return elem
    assert isinstance(node, Condition)
    # A lone condition is stored inside an and-group, so the stored text is always a <filter>.
    if parent is None:
        parent = Element("filter", {"type": "and"})
        _element(node, parent)
        return parent
    elem = SubElement(parent, "condition", {"attribute": node.attribute,
                                            "operator": node.operator})
    if node.operator in LIST_OPERATORS:
        for value in node.values:
            SubElement(elem, "value").text = _text(value)
    elif node.values:
        elem.set("value", _text(node.values[0]))
    return elem


# -------------------------------------------------------- metadata checks


def _attribute_of(entity: Entity, name: str) -> Attribute | None:
    found = entity.attribute(name)
    if found is not None:
        return found
    # Template and server definitions may leave out the columns the store adds.
    if name == entity.primaryidattribute:
        return Attribute(name, "uniqueidentifier")
    if name in SYSTEM_ATTRIBUTES:
        return next(a for a in system_attributes() if a.logicalname == name)
    return None


def _typed(value: Any, kind: str, where: str) -> Any:
    """One condition value in the typed form of the attribute; idempotent on typed values."""
    found = TYPES.get(kind)
    if found is None:
        raise _refuse(f"{where}: the attribute type {kind!r} cannot be filtered")
    try:
        return found.filter_value(value)
    except ValueError as exc:
        raise _refuse(f"{where}: {exc}") from None


def _check_condition(cond: Condition, entity: Entity) -> Condition:
    attr = _attribute_of(entity, cond.attribute)
    if attr is None:
        raise _refuse(f"attribute {cond.attribute!r} does not exist in entity "
                      f"{entity.logicalname}")
    kind = attr.type
    where = f"attribute {cond.attribute} ({kind}), operator {cond.operator}"
    found = TYPES.get(kind)
    if cond.operator in LIKE_OPERATORS and not (found and found.text):
        raise _refuse(f"{where}: like and not-like apply to text attributes only")
    if cond.operator in ORDERING_OPERATORS and found and not found.ordered:
        raise _refuse(f"{where}: a {kind} attribute cannot be ordered")
    values = tuple(_typed(v, kind, where) for v in cond.values)
    return replace(cond, values=values, attribute_type=kind)


# --------------------------------------------------------------- like patterns

# A LIKE pattern as tokens: ("any",) for %, ("one",) for _, ("lit", c), and
# ("set", negated, members) for [...] / [^...], the T-SQL wildcards Dataverse
# documents. "[%]", "[_]" and "[[]" are how a pattern writes those characters
# literally.
Token = tuple[Any, ...]


@functools.lru_cache(maxsize=256)
def _like_tokens(pattern: str) -> tuple[Token, ...]:
    tokens: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "%":
            tokens.append(("any",))
        elif c == "_":
            tokens.append(("one",))
        elif end != -1:
            members = pattern[i + 1:end]
            if len(members) == 1:
                tokens.append(("lit", members))
            elif members.startswith("^"):
                tokens.append(("set", True, members[1:]))
            else:
                tokens.append(("set", False, members))
            i = end
        else:  # an unmatched "[" is an ordinary character
            tokens.append(("lit", c))
        i += 1
    return tuple(tokens)


def _regex_class(members: str) -> str:
    out = []
    for i, c in enumerate(members):
        # A "-" between two characters is a range, as in T-SQL; elsewhere it is literal.
        out.append("-" if c == "-" and 0 < i < len(members) - 1 else re.escape(c))
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in _like_tokens(pattern):
        if token[0] == "any":
            parts.append(".*")
        elif token[0] == "one":
            parts.append(".")
        elif token[0] == "lit":
            parts.append(re.escape(token[1]))
        else:
            parts.append(f"[{'^' if token[1] else ''}{_regex_class(token[2])}]")
    # Matched against folded text (types.fold_text): case-insensitive as Dataverse is.
    return re.compile("".join(parts), re.DOTALL)


# --------------------------------------------------------------------- OData


def _literal(value: Any, kind: str) -> str:
    if TYPES[kind].edm in UNQUOTED_EDM:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _text(value)
    return "'" + str(value).replace("'", "''") + "'"


def _like_odata(name: str, pattern: str) -> str:
    tokens = list(_like_tokens(pattern))
    lead = trail = False
    while tokens and tokens[0] == ("any",):
        lead = True
        tokens.pop(0)
    while tokens and tokens[-1] == ("any",):
        trail = True
        tokens.pop()
    if any(t[0] != "lit" for t in tokens):
        raise _refuse(f"like pattern {pattern!r} on {name} cannot be expressed in OData "
                      "(use 'abc%', '%abc', '%abc%' or no wildcard)")
    text = _literal("".join(t[1] for t in tokens), "string")
    if not tokens:  # "%" matches every non-null text
        return f"{name} ne null"
    if lead and trail:
        return f"contains({name},{text})"
    if lead:
        return f"endswith({name},{text})"
    if trail:
        return f"startswith({name},{text})"
    return f"{name} eq {text}"


def _condition_odata(cond: Condition) -> str:
    kind = cond.attribute_type
    if kind is None:
        raise ValueError("to_odata needs a checked filter (Filter.check(entity)) to type literals")
    # Dataverse names a lookup's GUID property _{name}_value; the Org API accepts it too.
    name = f"_{cond.attribute}_value" if kind == "lookup" else cond.attribute
    op = cond.operator
    if op == "null":
        return f"{name} eq null"
    if op == "not-null":
        return f"{name} ne null"
    values = [_literal(v, kind) for v in cond.values]
    # FetchXML (SQL) never matches null with ne, not-in or not-like, while OData
    # says null ne 'x' is true: the explicit guard gives the same rows on both.
    guard = f"{name} ne null and "
    if op in ("eq", "lt", "le", "gt", "ge"):
        return f"{name} {op} {values[0]}"
    if op == "ne":
        return f"({guard}{name} ne {values[0]})"
    if op in LIST_OPERATORS:
        # `in (...)` is OData 4.01; an or-chain is understood by every 4.0 server.
        either = " or ".join(f"{name} eq {v}" for v in values)
        if op == "in":
            return f"({either})" if len(values) > 1 else either
        # `not` binds tighter than `eq`, so its operand is always parenthesized.
        return f"({guard}not ({either}))"
    like = _like_odata(name, cond.values[0])
    if op == "like":
        return like
    if like == f"{name} ne null":
        raise _refuse(f"not-like '%' on {cond.attribute} matches no record")
    return f"({guard}not ({like}))"


def to_odata(filter: Filter) -> str:
    """The OData v4 $filter of a checked filter for a server query; '' for an empty filter."""
    if isinstance(filter, Condition):
        return _condition_odata(filter)
    assert isinstance(filter, Group)
    parts = [p for p in (to_odata(c) for c in filter.children) if p]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return "(" + f" {filter.type} ".join(parts) + ")"


# ---------------------------------------------------------------- evaluation

def _kind_of(value: Any) -> str:
    """The attribute type an unchecked filter compares a record's value as."""
    if isinstance(value, bool):
        return "boolean"
    return "double" if isinstance(value, int | float) else "string"


def _condition_matches(cond: Condition, raw: Any) -> bool:
    op = cond.operator
    if op == "null":
        return raw is None
    if op == "not-null":
        return raw is not None
    if raw is None:  # SQL: any other comparison with null is unknown, so no match
        return False
    if op in LIKE_OPERATORS:
        if not isinstance(raw, str):
            return False
        found = _like_regex(fold_text(str(cond.values[0]))).fullmatch(fold_text(raw)) \
            is not None
        return found if op == "like" else not found
    # An unchecked filter is typed after the record's value.
    kind = cond.attribute_type or _kind_of(raw)
    comparable = TYPES[kind].comparable
    left = comparable(raw)
    rights = [comparable(v) for v in cond.values]
    if left is NO_VALUE or NO_VALUE in rights:
        return False
    if op == "in":
        return left in rights
    if op == "not-in":
        return left not in rights
    right = rights[0]
    try:
        if op == "eq":
            return bool(left == right)
        if op == "ne":
            return bool(left != right)
        if op == "lt":
            return bool(left < right)
        if op == "le":
            return bool(left <= right)
        if op == "gt":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:  # a record value of an unexpected type matches nothing
        return False


def matches(filter: Filter, record: dict[str, Any]) -> bool:
    """Whether a record satisfies the filter, with Dataverse's SQL semantics.

    A missing attribute is null; comparisons with null are false except null and
    not-null; text compares case-insensitively for every operator (eq, ne,
    ordering, like), as Dataverse's default collation does. Pass a checked filter
    so that values compare by the attribute's type; an unchecked one compares by
    the type of the record's value.
    """
    if isinstance(filter, Condition):
        return _condition_matches(filter, record.get(filter.attribute))
    assert isinstance(filter, Group)
    results = (matches(child, record) for child in filter.children)
    return all(results) if filter.type == "and" else any(results) or not filter.children

"""System query options of an entity set read: checked against the metadata, never trusted.

$select, $orderby and $filter may only name the entity's attributes; $top and
$skip are bounded whole numbers; options we do not implement answer 501
rather than being silently ignored.
"""

from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict

from portal.orgs.metadata import Entity
from portal.orgs.types import INT32
from portal.web.odata.dialect import ORG_API, Dialect
from portal.web.odata.filters import parse_filter
from portal.web.odata.messages import ProtocolError, bad_request

MAX_INT = INT32[1]  # $top and $skip fit an Int32
SUPPORTED = {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$skiptoken",
             "$deltatoken", "$format"}
NOT_IMPLEMENTED = {"$expand", "$search", "$apply", "$compute", "$levels", "$index",
                   "$schemaversion"}


@dataclass
class QueryOptions:
    """The parsed query options of one request."""

    select: list[str] = field(default_factory=list)  # attribute names, pk first
    where: str = ""
    params: list[Any] = field(default_factory=list)
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    top: int | None = None
    skip: int = 0
    count: bool = False
    skiptoken: str | None = None
    deltatoken: str | None = None
    has_filter: bool = False


def whole_number(args: MultiDict[str, str], name: str) -> int | None:
    """A non-negative $top/$skip no larger than 2^31-1; 400 otherwise."""
    text = args.get(name)
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 10 or int(text) > MAX_INT:
        raise bad_request(f"{name} must be a whole number from 0 to {MAX_INT}, not {text!r}",
                          name)
    return int(text)


def split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside parentheses and quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for char in text:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == sep and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def check_options(args: MultiDict[str, str], allowed: set[str]) -> None:
    """Refuse unknown, unimplemented or repeated system query options."""
    for name in args:
        if not name.startswith("$"):
            continue  # custom query options are allowed and ignored (OData 4.0, 5.2)
        if name in NOT_IMPLEMENTED and name not in allowed:
            raise ProtocolError(501, "NotImplemented", f"{name} is not supported")
        if name not in allowed:
            raise bad_request(f"unknown or misplaced query option {name}", name)
        if len(args.getlist(name)) > 1:
            raise bad_request(f"{name} is given more than once", name)
    fmt = args.get("$format")
    if fmt is not None and fmt.split(";")[0].strip().lower() not in ("json", "application/json"):
        raise ProtocolError(406, "NotAcceptable", "only $format=json is served")


def logical_name(entity: Entity, name: str) -> str:
    """The attribute a query names: its logical name, or a lookup's `_{lookup}_value`."""
    if name.startswith("_") and name.endswith("_value"):
        attr = entity.attribute(name[1:-len("_value")])
        if attr is not None and attr.type == "lookup":
            return attr.logicalname
    return name


def parse_select(text: str | None, entity: Entity) -> list[str]:
    """The attributes named by $select (all when absent), the primary id always first."""
    names = [a.logicalname for a in entity.attributes]
    pk = entity.primaryidattribute
    if text is None or text.strip() in ("", "*"):
        return [pk] + [n for n in names if n != pk]
    known = set(names)
    chosen = [pk]
    for part in text.split(","):
        name = logical_name(entity, part.strip())
        if name not in known:
            raise bad_request(f"$select: {entity.logicalname} has no property {name!r}", "$select")
        if name not in chosen:
            chosen.append(name)
    return chosen


def parse_orderby(text: str | None, entity: Entity) -> list[tuple[str, bool]]:
    """$orderby as (attribute, descending) pairs."""
    if text is None:
        return []
    known = {a.logicalname for a in entity.attributes}
    order = []
    for part in text.split(","):
        words = part.split()
        if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1].lower() not in
                                          ("asc", "desc")):
            raise bad_request(f"$orderby: {part.strip()!r} is not '<property> [asc|desc]'",
                              "$orderby")
        name = logical_name(entity, words[0])
        if name not in known:
            raise bad_request(f"$orderby: {entity.logicalname} has no property {words[0]!r}",
                              "$orderby")
        order.append((name, len(words) == 2 and words[1].lower() == "desc"))
    return order


def parse_options(args: MultiDict[str, str], entity: Entity, dialect: Dialect = ORG_API
                  ) -> QueryOptions:
    """Every query option of an entity set read, checked ($expand where the dialect serves it)."""
    check_options(args, SUPPORTED | ({"$expand"} if dialect.expand else set()))
    opts = QueryOptions(select=parse_select(args.get("$select"), entity),
                        orderby=parse_orderby(args.get("$orderby"), entity))
    if args.get("$filter") is not None:
        opts.where, opts.params = parse_filter(
            args["$filter"], entity, dataverse_functions=dialect.functions,
            aliases={k: v for k, v in args.items() if k.startswith("@")})
        opts.has_filter = True
    opts.top = whole_number(args, "$top")
    opts.skip = whole_number(args, "$skip") or 0
    count = args.get("$count")
    if count is not None:
        if count.lower() not in ("true", "false"):
            raise bad_request("$count must be true or false", "$count")
        opts.count = count.lower() == "true"
    opts.skiptoken = args.get("$skiptoken")
    opts.deltatoken = args.get("$deltatoken")
    return opts

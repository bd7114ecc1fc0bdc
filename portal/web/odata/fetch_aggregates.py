"""FetchXML aggregates on the Dataverse root: <fetch aggregate="true">.

As Microsoft Learn's "Aggregate data using FetchXml" has them: every
<attribute> has an alias and either aggregate="count|countcolumn|sum|avg|min|max"
(countcolumn with distinct="true" counts distinct values) or groupby="true"
(with dategrouping="day|week|month|quarter|year", in UTC); <order alias=...>
orders the groups. Nulls are left out of aggregates; a sum of nothing is 0
and the average of a whole-number column is a whole number, as Dataverse
answers them. At most 50,000 records (or the fetch's aggregatelimit) are
aggregated, else Dataverse's AggregateQueryRecordLimit error. Fiscal date
groupings (no fiscal year settings here) and link-entities are not served.
"""

from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from portal.orgs import queries
from portal.orgs.metadata import Attribute, Entity
from portal.web.odata import shapes
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ErrorKind,
    ProtocolError,
    bad_request,
    json_response,
)
from portal.web.odata.prefer import parse_prefer

AGGREGATES = ("count", "countcolumn", "sum", "avg", "min", "max")
NUMBERS = {"integer", "bigint", "decimal", "double", "money"}
WHOLE_NUMBERS = {"integer", "bigint"}
MAX_AGGREGATED = 50_000
# SQLite's part of a stored UTC date-time (text, TIMESTAMP_FORMAT) for each dategrouping.
DATE_PARTS = {
    "day": "CAST(strftime('%d', {c}) AS INTEGER)",
    "month": "CAST(strftime('%m', {c}) AS INTEGER)",
    "year": "CAST(strftime('%Y', {c}) AS INTEGER)",
    "quarter": "((CAST(strftime('%m', {c}) AS INTEGER) + 2) / 3)",
    # SQL Server's DATEPART(week): weeks start on Sunday, week 1 holds January 1.
    "week": "((CAST(strftime('%j', {c}) AS INTEGER) - 1 + CAST(strftime('%w', "
            "strftime('%Y', {c}) || '-01-01') AS INTEGER)) / 7 + 1)",
}


@dataclass
class Column:
    """One <attribute> of an aggregate fetch: its SQL and how its value is answered."""

    alias: str
    sql: str
    attr: Attribute
    function: str | None  # an aggregate, or None for a groupby
    whole: bool = False  # an average answered as a whole number
    date_part: bool = False  # a groupby of a dategrouping: a whole number


def _column(child: Element, entity: Entity) -> Column:
    name = child.get("name", "")
    attr = entity.attribute(name)
    if attr is None:
        raise bad_request(f"fetchXml: <attribute name={name!r}> is not an attribute of "
                          f"{entity.logicalname}", "fetchXml")
    alias = child.get("alias")
    if not alias or not alias.replace("_", "").isalnum():
        raise bad_request(f"fetchXml: <attribute name={name!r}> of an aggregate query needs "
                          "an alias (letters, digits, _)", "fetchXml")
    column = f"[{name}]"
    function = child.get("aggregate")
    grouped = child.get("groupby", "false").lower() == "true"
    if grouped == (function is not None):
        raise bad_request(f"fetchXml: <attribute alias={alias!r}> needs either aggregate or "
                          'groupby="true"', "fetchXml")
    if function is None:
        grouping = child.get("dategrouping")
        if grouping is None:
            return Column(alias, column, attr, None)
        if attr.type != "datetime":
            raise bad_request(f"fetchXml: dategrouping applies to date and time attributes, "
                              f"not to {name}", "fetchXml")
        if grouping not in DATE_PARTS:
            raise ProtocolError(501, "NotImplemented", f"fetchXml: dategrouping={grouping!r} "
                                f"is not served (served: {', '.join(DATE_PARTS)})")
        return Column(alias, DATE_PARTS[grouping].format(c=column), attr, None, date_part=True)
    if function not in AGGREGATES:
        raise bad_request(f"fetchXml: aggregate={function!r} is not one of "
                          f"{', '.join(AGGREGATES)}", "fetchXml")
    if function in ("sum", "avg") and attr.type not in NUMBERS or function in (
            "min", "max") and attr.type not in NUMBERS | {"datetime"}:
        raise bad_request(f"fetchXml: {function} does not apply to {name} ({attr.type})",
                          "fetchXml")
    distinct = "DISTINCT " if child.get("distinct", "false").lower() == "true" else ""
    sql = {"count": "count(*)", "countcolumn": f"count({distinct}{column})",
           "sum": f"coalesce(sum({column}), 0)", "avg": f"avg({column})",
           "min": f"min({column})", "max": f"max({column})"}[function]
    return Column(alias, sql, attr, function, whole=function == "avg" and
                  attr.type in WHOLE_NUMBERS)


def _value(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.whole:
        return int(value)
    if column.function is None and column.attr.type == "boolean" and not column.date_part:
        return bool(value)
    return value


def _formatted(column: Column, value: Any) -> str | None:
    if value is None:
        return None
    if column.function in ("count", "countcolumn") or column.date_part:
        return f"{int(value):,}"
    return shapes.formatted_value(column.attr, value)


def read_aggregate(req: ApiRequest, entity: Entity, root: Element, element: Element,
                   where: str, params: list[Any]) -> ApiResponse:
    """One <fetch aggregate="true"> answered: a row per group (one row without groupby)."""
    columns: list[Column] = []
    order: list[tuple[str, bool]] = []
    for child in element:
        if child.tag == "attribute":
            columns.append(_column(child, entity))
        elif child.tag == "order":
            alias = child.get("alias")
            if alias is None:
                raise bad_request("fetchXml: in an aggregate query <order> names a groupby "
                                  "alias (<order alias=...>)", "fetchXml")
            order.append((alias, child.get("descending", "false").lower() == "true"))
        elif child.tag == "link-entity":
            raise ProtocolError(501, "NotImplemented", "fetchXml: link-entity is not served "
                                                       "in aggregate queries")
        elif child.tag == "all-attributes":
            raise bad_request("fetchXml: <all-attributes/> cannot be aggregated", "fetchXml")
    aliases = [c.alias for c in columns]
    if not columns or len(set(aliases)) != len(aliases):
        raise bad_request("fetchXml: an aggregate query needs attributes with distinct "
                          "aliases", "fetchXml")
    groups = [c for c in columns if c.function is None]
    for alias, _ in order:
        if alias not in {c.alias for c in groups}:
            raise bad_request(f"fetchXml: <order alias={alias!r}> is not a groupby alias",
                              "fetchXml")
    limit_text = root.get("aggregatelimit")
    limit = MAX_AGGREGATED
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AGGREGATED:
            raise bad_request(f"fetchXml: aggregatelimit must be 1 to {MAX_AGGREGATED}",
                              "fetchXml")
        limit = int(limit_text)
    if queries.count(req.org, entity, where=where, params=params) > limit:
        raise ProtocolError(400, "AggregateQueryRecordLimit", f"more than {limit} records "
                            "to aggregate", kind=ErrorKind.AGGREGATE_LIMIT)
    sql = (f"SELECT {', '.join(f'{c.sql} AS [{c.alias}]' for c in columns)} "
           f"FROM [{entity.logicalname}]" + (f" WHERE {where}" if where else ""))
    if groups:
        sql += " GROUP BY " + ", ".join(c.sql for c in groups)
    if order:
        sql += " ORDER BY " + ", ".join(f"[{a}]{' DESC' if d else ''}" for a, d in order)
    rows = req.org.db.conn.execute(sql, params).fetchall()
    prefs = parse_prefer(req.headers.getlist("Prefer"))
    shape = shapes.Shape(shapes.parse_annotations(prefs.include_annotations, req.dialect))
    values = []
    for row in rows:
        item: dict[str, Any] = {}
        for column, raw in zip(columns, row, strict=True):
            value = _value(column, raw)
            formatted = _formatted(column, value)
            if formatted is not None and shape.wants(shapes.FORMATTED):
                item[f"{column.alias}@{shapes.FORMATTED}"] = formatted
            item[column.alias] = value
        values.append(item)
    headers = {"Preference-Applied": f'odata.include-annotations="{prefs.include_annotations}"'} \
        if shape.annotations else {}
    return json_response({"@odata.context": f"{req.service_root}$metadata#"
                                            f"{entity.entitysetname}", "value": values},
                         headers=headers)


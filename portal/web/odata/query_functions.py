"""Dataverse's query functions in $filter: Microsoft.Dynamics.CRM.In(...) and the like.

`In(PropertyName='x',PropertyValues=["a","b"])` and its kin, as Microsoft Learn's
"Web API Query Function Reference" and "Filter rows" (query functions) define
them; Microsoft's SDK sends In and NotIn (`col.in_`, `col.not_in`). Served: the
value functions In, NotIn, Between, NotBetween and the date functions below,
evaluated in UTC (a hosted org has no user time zones). The others (fiscal
periods, hierarchies, the caller's user or teams) answer 501 naming the
function. They are the Dataverse dialect's: the Org API refuses them with a 400
that says where they are served.
"""

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from odata_query import ast

from portal.db import TIMESTAMP_FORMAT
from portal.orgs.metadata import Attribute
from portal.web.odata.messages import ProtocolError, bad_request

NAMESPACE = ("Microsoft", "Dynamics", "CRM")
VALUE_FUNCTIONS = {"In", "NotIn", "Between", "NotBetween"}
# Date functions of a property and nothing else: the range [start, end) they match.
DAY = timedelta(days=1)
RANGES: dict[str, Callable[[datetime, datetime], tuple[datetime | None, datetime | None]]] = {
    "Today": lambda now, today: (today, today + DAY),
    "Yesterday": lambda now, today: (today - DAY, today),
    "Tomorrow": lambda now, today: (today + DAY, today + 2 * DAY),
    "Last7Days": lambda now, today: (today - 7 * DAY, now + timedelta(seconds=1)),
    "Next7Days": lambda now, today: (now, today + 8 * DAY),
    "ThisMonth": lambda now, today: (today.replace(day=1), _add_months(today.replace(day=1), 1)),
    "LastMonth": lambda now, today: (_add_months(today.replace(day=1), -1), today.replace(day=1)),
    "NextMonth": lambda now, today: (_add_months(today.replace(day=1), 1),
                                     _add_months(today.replace(day=1), 2)),
    "ThisYear": lambda now, today: (today.replace(month=1, day=1),
                                    today.replace(year=today.year + 1, month=1, day=1)),
    "LastYear": lambda now, today: (today.replace(year=today.year - 1, month=1, day=1),
                                    today.replace(month=1, day=1)),
    "NextYear": lambda now, today: (today.replace(year=today.year + 1, month=1, day=1),
                                    today.replace(year=today.year + 2, month=1, day=1)),
}
# Date functions with a number X (PropertyValue): the range they match.
X_RANGES: dict[str, Callable[[datetime, datetime, int], tuple[datetime | None,
                                                               datetime | None]]] = {
    "LastXDays": lambda now, today, x: (today - x * DAY, now + timedelta(seconds=1)),
    "NextXDays": lambda now, today, x: (now, today + (x + 1) * DAY),
    "LastXHours": lambda now, today, x: (now - timedelta(hours=x), now + timedelta(seconds=1)),
    "NextXHours": lambda now, today, x: (now, now + timedelta(hours=x)),
    "LastXMonths": lambda now, today, x: (_add_months(today, -x), now + timedelta(seconds=1)),
    "NextXMonths": lambda now, today, x: (now, _add_months(today, x) + DAY),
    "OlderThanXMinutes": lambda now, today, x: (None, now - timedelta(minutes=x)),
    "OlderThanXHours": lambda now, today, x: (None, now - timedelta(hours=x)),
    "OlderThanXDays": lambda now, today, x: (None, today - x * DAY),
    "OlderThanXMonths": lambda now, today, x: (None, _add_months(today, -x)),
}
# Date functions with a date (PropertyValue).
ON_FUNCTIONS = {"On", "OnOrAfter", "OnOrBefore"}
SERVED = VALUE_FUNCTIONS | set(RANGES) | set(X_RANGES) | ON_FUNCTIONS
MAX_VALUES = 5000
ALIAS_RE = re.compile(r"@[A-Za-z_]\w*")

# A value converted to the stored form of an attribute (400 if it has none).
Convert = Callable[[str, Attribute], Any]


def _add_months(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, 28))


def prepare(text: str, aliases: Mapping[str, str] | None = None) -> str:
    """$filter text with Dataverse's JSON collections in OData's form, for the parser.

    PropertyValues=["a","b"] becomes PropertyValues=('a','b'): outside quoted
    strings, double-quoted (JSON) strings become single-quoted ones and square
    brackets parentheses. Neither occurs in an OData 4.0 $filter otherwise.
    Parameter aliases (`PropertyName=@p1` with `&@p1='lastname'`, as Learn's
    "Filter rows" writes In) are replaced by their values from `aliases`.
    """
    out, i = [], 0
    while i < len(text):
        char = text[i]
        alias = ALIAS_RE.match(text, i) if char == "@" else None
        if alias is not None:
            value = (aliases or {}).get(alias.group(0))
            if value is None:
                name = alias.group(0)
                raise bad_request(f"$filter: the parameter alias {name} has no value "
                                  f"(add &{name}=... to the query)", name)
            out.append(prepare(value))
            i = alias.end()
            continue
        if char == "'":  # an OData string, '' inside it an escaped quote
            end = i + 1
            while end < len(text):
                if text[end] == "'" and text[end + 1:end + 2] != "'":
                    break
                end += 2 if text[end] == "'" else 1
            out.append(text[i:end + 1])
            i = end + 1
        elif char == '"':
            match = re.match(r'"(?:[^"\\]|\\.)*"', text[i:])
            if match is None:
                raise bad_request("$filter: a double-quoted string is not closed", "$filter")
            value = json.loads(match.group(0))
            out.append("'" + value.replace("'", "''") + "'")
            i += match.end()
        else:
            out.append({"[": "(", "]": ")"}.get(char, char))
            i += 1
    return "".join(out)


def is_query_function(node: ast.Call) -> bool:
    """Whether a call is one of Dataverse's (Microsoft.Dynamics.CRM.*)."""
    return tuple(node.func.namespace) == NAMESPACE


def _params(node: ast.Call, name: str) -> dict[str, ast._Node]:
    params: dict[str, ast._Node] = {}
    for arg in node.args:
        if not isinstance(arg, ast.NamedParam):
            raise bad_request(f"$filter: {name}() takes named parameters "
                              "(PropertyName='...', ...)", "$filter")
        params[arg.name.name] = arg.param
    return params


def _text(node: ast._Node | None, what: str, name: str) -> str:
    if isinstance(node, ast.String | ast.Integer | ast.Float | ast.Boolean | ast.GUID |
                  ast.Date | ast.DateTime):
        return str(node.val)
    raise bad_request(f"$filter: {name}() needs {what}", "$filter")


def call_sql(node: ast.Call, attribute: Callable[[str], Attribute], convert: Convert,
             now: datetime | None = None) -> tuple[str, list[Any]]:
    """(SQL condition, parameters) of one query function call; 4xx when it is not served."""
    name = node.func.name
    full = ".".join(NAMESPACE) + "." + name
    if name not in SERVED:
        raise ProtocolError(501, "NotImplemented", f"$filter: the query function {full} is "
                            f"not served (served: {', '.join(sorted(SERVED))})")
    params = _params(node, full)
    expected = {"PropertyName", "PropertyValues" if name in VALUE_FUNCTIONS else
                "PropertyValue" if name in X_RANGES or name in ON_FUNCTIONS else ""} - {""}
    if set(params) != expected:
        raise bad_request(f"$filter: {full} takes {', '.join(sorted(expected))}", "$filter")
    attr = attribute(_text(params["PropertyName"], "PropertyName='<property>'", full))
    column = f"[{attr.logicalname}]"
    if name in VALUE_FUNCTIONS:
        raw = params["PropertyValues"]
        items = raw.val if isinstance(raw, ast.List) else [raw]
        values = [convert(_text(i, "PropertyValues=[\"...\", ...]", full), attr) for i in items]
        if not values or len(values) > MAX_VALUES:
            raise bad_request(f"$filter: {full} needs 1 to {MAX_VALUES} PropertyValues",
                              "$filter")
        if name in ("Between", "NotBetween"):
            if len(values) != 2:
                raise bad_request(f"$filter: {full} needs two PropertyValues", "$filter")
            sql = f"({column} BETWEEN ? AND ?)"
            return (sql if name == "Between" else f"(NOT {sql})"), values
        marks = ",".join("?" * len(values))
        return f"({column} {'NOT ' if name == 'NotIn' else ''}IN ({marks}))", values
    if attr.type != "datetime":
        raise bad_request(f"$filter: {full} applies to date and time properties, not to "
                          f"{attr.logicalname}", "$filter")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    today = now.replace(hour=0, minute=0, second=0)
    if name in ON_FUNCTIONS:
        text = _text(params["PropertyValue"], "PropertyValue='<date>'", full)
        day = datetime.fromisoformat(convert(text, attr)).replace(hour=0, minute=0, second=0)
        start, end = {"On": (day, day + DAY), "OnOrAfter": (day, None),
                      "OnOrBefore": (None, day + DAY)}[name]
    elif name in X_RANGES:
        text = _text(params["PropertyValue"], "PropertyValue=<number>", full)
        if not text.isdigit() or not 0 < int(text) <= 100_000:
            raise bad_request(f"$filter: {full} needs a whole number PropertyValue",
                              "$filter")
        start, end = X_RANGES[name](now, today, int(text))
    else:
        start, end = RANGES[name](now, today)
    parts, values = [], []
    if start is not None:
        parts.append(f"{column} >= ?")
        values.append(start.strftime(TIMESTAMP_FORMAT))
    if end is not None:
        parts.append(f"{column} < ?")
        values.append(end.strftime(TIMESTAMP_FORMAT))
    return "(" + " AND ".join(parts) + ")", values

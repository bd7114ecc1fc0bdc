"""The fast read path of an org's records: pages of JSON made by SQLite itself.

Each row comes back as one JSON text built by SQLite's json_object(), so a
page of 1,000 records costs no Python dict per row; the caller joins the
texts into the page. Paging is keyset-based: a page starts after the sort
key of the previous page's last row, so deep pages cost what the first does.
"""

from dataclasses import dataclass, field
from typing import Any

import orjson

from portal.orgs.metadata import Entity
from portal.orgs.store import OrgDb

# SQLite allows 127 arguments per function call: json_object() takes the
# attributes in chunks of this many name/value pairs, spliced into one object.
PAIRS_PER_CALL = 60
IDS_PER_QUERY = 500  # bound values per statement stay under SQLite's 999

Order = list[tuple[str, bool]]  # (attribute, descending)


def row_json_sql(entity: Entity, names: list[str], keys: dict[str, str] | None = None) -> str:
    """SQL expression making one record's JSON: @odata.etag first, then the attributes.

    `keys` renames attributes in the JSON (the Dataverse root's `_{lookup}_value`).
    """
    keys = keys or {}
    booleans = {a.logicalname for a in entity.attributes if a.type == "boolean"}
    pairs = ["'@odata.etag', 'W/\"' || [versionnumber] || '\"'"]
    for name in names:
        if name in booleans:
            value = (f"CASE WHEN [{name}] IS NULL THEN NULL WHEN [{name}] THEN json('true') "
                     "ELSE json('false') END")
        else:
            value = f"[{name}]"
        pairs.append(f"'{keys.get(name, name)}', {value}")
    chunks = [pairs[i:i + PAIRS_PER_CALL] for i in range(0, len(pairs), PAIRS_PER_CALL)]
    calls = [f"json_object({', '.join(chunk)})" for chunk in chunks]
    if len(calls) == 1:
        return calls[0]
    # Splice the objects: drop the closing brace of each and the opening one of the next.
    # Every value is a scalar, so each object ends in exactly one '}'.
    parts = [f"rtrim({calls[0]}, '}}')"]
    parts += [f"trim({call}, '{{}}')" for call in calls[1:-1]]
    parts.append(f"ltrim({calls[-1]}, '{{')")
    return " || ',' || ".join(parts)


def full_order(entity: Entity, order: Order) -> Order:
    """The requested order with the primary id appended, so every row has a unique key."""
    pk = entity.primaryidattribute
    return [*order, (pk, False)] if all(name != pk for name, _ in order) else list(order)


def after_condition(order: Order, values: list[Any]) -> tuple[str, list[Any]]:
    """Condition selecting the rows sorted after the row with these key values.

    SQLite sorts NULL first ascending and last descending; the condition
    follows that, so rows with null sort keys are neither skipped nor repeated.
    """
    alternatives, params = [], []
    for i, (name, descending) in enumerate(order):
        value = values[i]
        if descending:
            if value is None:
                continue  # nothing sorts after a null in descending order
            later, later_params = f"([{name}] < ? OR [{name}] IS NULL)", [value]
        elif value is None:
            later, later_params = f"[{name}] IS NOT NULL", []
        else:
            later, later_params = f"[{name}] > ?", [value]
        equal = [f"[{n}] IS ?" for n, _ in order[:i]]
        alternatives.append("(" + " AND ".join([*equal, later]) + ")")
        params += [*values[:i], *later_params]
    if not alternatives:
        return "0", []
    return "(" + " OR ".join(alternatives) + ")", params


def read_page(org: OrgDb, entity: Entity, names: list[str], *, where: str = "",
              params: list[Any] | None = None, order: Order | None = None,
              after: list[Any] | None = None, offset: int = 0, limit: int = 1000,
              keys: dict[str, str] | None = None) -> tuple[bytes, int, list[Any] | None]:
    """Up to `limit` records as one JSON array body (without brackets, UTF-8), how many
    there are, and the sort key of the last one when more records follow (else None).

    Call inside portal.db.snapshot(): the page and the look-ahead are two queries.
    """
    order = full_order(entity, order or [])
    conditions, values = [], list(params or [])
    if where:
        conditions.append(where)
    if after is not None:
        sql, extra = after_condition(order, after)
        conditions.append(sql)
        values += extra
    source = (f" FROM [{entity.logicalname}]"
              + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
              + " ORDER BY " + ", ".join(f"[{n}]{' DESC' if d else ''}" for n, d in order))
    sort_columns = ", ".join(f"[{name}]" for name, _ in order)
    # The last record of this page and whether one follows: keys only, no JSON made.
    ahead = org.db.conn.execute(f"SELECT {sort_columns}{source} LIMIT 2 OFFSET ?",
                                [*values, offset + limit - 1]).fetchall()
    # One string for the whole page: no Python object per record. SQLite feeds
    # the ordered subquery to group_concat row by row, in its order. As a BLOB it
    # comes back as the UTF-8 bytes the answer sends, neither decoded nor re-encoded.
    row_json = row_json_sql(entity, names, keys)
    text, count = org.db.conn.execute(
        f"SELECT CAST(group_concat(j, ',') AS BLOB), count(*) FROM (SELECT {row_json} AS j"
        f"{source} LIMIT ? OFFSET ?)", [*values, limit, offset]).fetchone()
    last = list(ahead[0]) if len(ahead) == 2 else None
    return text or b"", count, last


def count(org: OrgDb, entity: Entity, *, where: str = "", params: list[Any] | None = None
          ) -> int:
    """How many records match a condition."""
    sql = f"SELECT count(*) FROM [{entity.logicalname}]" + (f" WHERE {where}" if where else "")
    return int(org.db.conn.execute(sql, params or []).fetchone()[0])


def record_json(org: OrgDb, entity: Entity, names: list[str], record_id: str,
                keys: dict[str, str] | None = None) -> tuple[str, int] | None:
    """One record as (JSON text with @odata.etag, versionnumber), or None."""
    pk = entity.primaryidattribute
    row = org.db.conn.execute(
        f"SELECT {row_json_sql(entity, names, keys)}, versionnumber FROM [{entity.logicalname}] "
        f"WHERE [{pk}] = ?", [record_id]).fetchone()
    return (row[0], row[1]) if row else None


def records_by_ids(org: OrgDb, entity: Entity, names: list[str], ids: list[str],
                   keys: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Records by id (those that exist), decoded: id -> record with @odata.etag."""
    pk = entity.primaryidattribute
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[i:i + IDS_PER_QUERY]
        rows = org.db.conn.execute(
            f"SELECT [{pk}], {row_json_sql(entity, names, keys)} FROM [{entity.logicalname}] "
            f"WHERE [{pk}] IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
        found.update((row[0], orjson.loads(row[1])) for row in rows)
    return found


def related_records(org: OrgDb, entity: Entity, names: list[str], lookup: str,
                    parent_ids: list[str], *, where: str = "", params: list[Any] | None = None,
                    order: Order | None = None, limit: int = 5000,
                    keys: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each parent's records whose `lookup` names it (at most `limit` each), decoded, in order.

    One statement per chunk of parents; the window function keeps the first
    `limit` of each parent in the requested order (the primary id breaking ties).
    """
    order_sql = ", ".join(f"[{n}]{' DESC' if d else ''}" for n, d in full_order(entity,
                                                                              order or []))
    found: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(parent_ids), IDS_PER_QUERY):
        chunk = parent_ids[i:i + IDS_PER_QUERY]
        condition = f"[{lookup}] IN ({', '.join('?' * len(chunk))})" + (
            f" AND ({where})" if where else "")
        row_json = row_json_sql(entity, names, keys)
        rows = org.db.conn.execute(
            f"SELECT parent, j FROM (SELECT [{lookup}] AS parent, {row_json} AS j,"
            f" row_number() OVER (PARTITION BY [{lookup}] ORDER BY {order_sql}) AS n"
            f" FROM [{entity.logicalname}] WHERE {condition}) WHERE n <= ? ORDER BY parent, n",
            [*chunk, *(params or []), limit]).fetchall()
        for parent, text in rows:
            found.setdefault(parent, []).append(orjson.loads(text))
    return found


@dataclass
class Join:
    """A table joined to a read (FetchXML's link-entity): `on` of it equals `to` of the base."""

    entity: Entity
    on: str  # its attribute
    to: str  # the base entity's attribute
    outer: bool
    names: list[str]  # its attributes in each row
    keys: dict[str, str]  # their JSON names
    where: str = ""  # a condition on its rows (they join only if it holds)
    params: list[Any] = field(default_factory=list)


def read_joined(org: OrgDb, entity: Entity, names: list[str], joins: list[Join], *,
                where: str = "", params: list[Any] | None = None, order: Order | None = None,
                offset: int = 0, limit: int = 1000, keys: dict[str, str] | None = None
                ) -> list[tuple[dict[str, Any], list[dict[str, Any] | None]]]:
    """Up to `limit` joined rows: (base record with @odata.etag, each join's columns or None).

    Each side is a subquery of its own table, so its conditions and column names
    stay its own; rows come in the base order, then each joined table's primary id.
    """
    base_order = full_order(entity, order or [])
    columns = [f"{row_json_sql(entity, names, keys)} AS j"]
    columns += [f"[{n}] AS s{i}" for i, (n, _) in enumerate(base_order)]
    columns += [f"[{j.to}] AS k{i}" for i, j in enumerate(joins)]
    sql = (f"SELECT p.j{''.join(f', l{i}.j' for i in range(len(joins)))} FROM (SELECT "
           f"{', '.join(columns)} FROM [{entity.logicalname}]"
           + (f" WHERE {where}" if where else "") + ") AS p")
    values = list(params or [])
    for i, join in enumerate(joins):
        pk = join.entity.primaryidattribute
        sql += (f" {'LEFT' if join.outer else 'INNER'} JOIN (SELECT "
                f"{row_json_sql(join.entity, join.names, join.keys)} AS j, [{join.on}] AS k, "
                f"[{pk}] AS s FROM [{join.entity.logicalname}]"
                + (f" WHERE {join.where}" if join.where else "") + f") AS l{i} ON l{i}.k = p.k{i}")
        values += join.params
    sql += " ORDER BY " + ", ".join(
        [f"p.s{i}{' DESC' if d else ''}" for i, (_, d) in enumerate(base_order)]
        + [f"l{i}.s" for i in range(len(joins))]) + " LIMIT ? OFFSET ?"
    rows = org.db.conn.execute(sql, [*values, limit, offset]).fetchall()
    return [(orjson.loads(row[0]), [orjson.loads(t) if t else None for t in row[1:]])
            for row in rows]

"""The attribute-type table, tested as a table: every type x good, bad and edge values, through
every path that checks a value (Org API POST and PATCH, save_records, a FetchXML sync filter,
an OData $filter), which must agree: the same value is stored and compared the same way
everywhere, or refused everywhere with the attribute named.

Filters take text (FetchXML values) or OData literals rather than JSON values, so a case
names how each filter writes its value. A value a write refuses for an attribute's own
limit (longer than maxlength, not one of the picklist's options) is still a valid filter
value: it matches no record, as in Dataverse.
"""

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pytest
from flask.testing import FlaskClient

from portal.backends.dataverse_metadata import entity_from_definition
from portal.errors import InvalidInput
from portal.orgs import records, schema, types
from portal.orgs.metadata import Attribute, Entity, Option, check_entity
from portal.orgs.store import OrgDb, current_version
from portal.sync.filters import Group, matches, parse_filter, to_odata
from portal.web.odata.entity_definitions import attribute_definition, entity_definition
from tests.odata_helpers import AUTH, ROOT


def probe() -> Entity:
    """An entity with one attribute of every type."""
    return Entity("probe", "Probe", primarynameattribute="text", attributes=[
        Attribute("text", "string", maxlength=10),
        Attribute("note", "memo", maxlength=20),
        Attribute("whole", "integer"),
        Attribute("big", "bigint"),
        Attribute("choice", "picklist", options=[Option(1, "One"), Option(2, "Two"),
                                                 Option(-3, "Minus three")]),
        Attribute("dec", "decimal", precision=2),
        Attribute("dbl", "double"),
        Attribute("amount", "money", precision=2),
        Attribute("flag", "boolean"),
        Attribute("moment", "datetime"),
        Attribute("uid", "uniqueidentifier"),
        Attribute("ref", "lookup", targets=["probe"]),
    ])


ATTRIBUTE_OF = {a.type: a.logicalname for a in probe().attributes}
TARGET = "6a9f3c1e-0000-4000-8000-0000000000aa"  # the probe every lookup points to
G = "0b4a6a4e-5c1d-4d59-8f0e-5a8f8f6b7c02"

REFUSED = "refused"
NO_MATCH = "no match"  # a valid filter value no stored record can have
SKIP = "skip"  # the path has no way to write this value


@dataclass
class Case:
    """One value of one type: what writes store and what filters compare it as."""

    kind: str
    value: Any  # the JSON value written
    stored: Any  # the stored value, or REFUSED
    fetch: Any  # the FetchXML condition's value text, or SKIP
    odata: Any  # the OData literal, or SKIP
    compared: Any  # what both filters compare as: a value, NO_MATCH or REFUSED
    fetch_compared: Any = None  # when FetchXML's untyped text reads otherwise than OData's literal

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.value!r}"[:60]


def fetch_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def odata_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def same(kind: str, value: Any, stored: Any) -> Case:
    """A value every path accepts: stored, and compared, as `stored`."""
    return Case(kind, value, stored, fetch_text(value), odata_literal(value), stored)


def bad(kind: str, value: Any) -> Case:
    """A value every path refuses."""
    return Case(kind, value, REFUSED, fetch_text(value), odata_literal(value), REFUSED)


def beyond_limit(kind: str, value: Any) -> Case:
    """A value of the right type beyond the attribute's own limit: writes refuse, filters match
    nothing."""
    return Case(kind, value, REFUSED, fetch_text(value), odata_literal(value), NO_MATCH)


def wrong_json(kind: str, value: Any, *, fetch: Any = REFUSED, odata: bool = True) -> Case:
    """A JSON value of the wrong JSON type: writes and the typed OData literal refuse it;
    FetchXML values are untyped text, so its text reads as `fetch` (or is refused)."""
    text = fetch_text(value) if fetch is not SKIP else SKIP
    literal = odata_literal(value) if odata else SKIP
    return Case(kind, value, REFUSED, text, literal, REFUSED, fetch_compared=fetch)


D = "2026-01-02T02:04:05Z"

CASES = [
    # string (maxlength 10), memo (maxlength 20)
    same("string", "hello", "hello"),
    same("string", "", ""),
    same("string", "x" * 10, "x" * 10),
    same("string", "O'Brien ü", "O'Brien ü"),
    beyond_limit("string", "x" * 11),
    wrong_json("string", 5, fetch=SKIP, odata=True),
    wrong_json("string", True, fetch=SKIP),
    wrong_json("string", ["a list"], fetch=SKIP, odata=False),
    same("memo", "line 1\nline 2", "line 1\nline 2"),
    same("memo", "y" * 20, "y" * 20),
    beyond_limit("memo", "y" * 21),
    wrong_json("memo", {"an": "object"}, fetch=SKIP, odata=False),
    # integer: Dataverse's Int32
    same("integer", 0, 0),
    same("integer", 2**31 - 1, 2**31 - 1),
    same("integer", -(2**31), -(2**31)),
    bad("integer", 2**31),
    bad("integer", -(2**31) - 1),
    bad("integer", 1.5),
    bad("integer", True),
    wrong_json("integer", "12", fetch=12),
    wrong_json("integer", "twelve"),
    # bigint: Int64
    same("bigint", 2**63 - 1, 2**63 - 1),
    same("bigint", -(2**63), -(2**63)),
    bad("bigint", 2**63),
    wrong_json("bigint", "7", fetch=7),
    # picklist: Int32 and one of the options
    same("picklist", 2, 2),
    same("picklist", -3, -3),
    beyond_limit("picklist", 4),
    bad("picklist", 2**31),
    bad("picklist", True),
    bad("picklist", 1.0),
    wrong_json("picklist", "1", fetch=1),
    # decimal, double, money: finite numbers, stored as REAL
    same("decimal", 12.5, 12.5),
    same("decimal", 7, 7.0),
    same("double", -1e300, -1e300),
    same("double", 0.1, 0.1),
    same("money", 1234.56, 1234.56),
    # IEEE754Compatible clients write decimals as text; the typed OData literal is a number.
    Case("decimal", "12.25", 12.25, "12.25", "12.25", 12.25),
    Case("money", " 3 ", 3.0, " 3 ", "3", 3.0),
    bad("decimal", "NaN"),
    bad("double", "inf"),
    Case("double", "1e400", REFUSED, "1e400", "1e400", REFUSED),  # infinity
    Case("money", "-1e400", REFUSED, "-1e400", "-1e400", REFUSED),
    Case("double", float("nan"), REFUSED, "nan", SKIP, REFUSED),  # not JSON: see below
    Case("double", math.inf, REFUSED, "inf", SKIP, REFUSED),
    bad("money", "lots"),
    bad("money", "1_000"),
    bad("decimal", True),
    wrong_json("double", [1.5], fetch=SKIP, odata=False),
    # boolean: stored as 1/0; FetchXML also writes 1 and 0
    same("boolean", True, True),
    same("boolean", False, False),
    wrong_json("boolean", 1, fetch=True),
    wrong_json("boolean", "false", fetch=False),
    wrong_json("boolean", "yes"),
    # datetime: UTC to the second with a Z; an offset is converted, no offset is UTC
    same("datetime", D, D),
    same("datetime", "2026-01-02T03:04:05+01:00", D),
    same("datetime", "2026-01-02T02:04:05.999", D),
    same("datetime", "2026-01-02T02:04:05.1234567Z", D),
    same("datetime", "2026-01-02", "2026-01-02T00:00:00Z"),
    Case("datetime", "2026-01-02T03:04:05+01:00", D, "2026-01-02T03:04:05+01:00",
         "2026-01-02T03:04:05+01:00", D),  # an unquoted OData DateTimeOffset literal
    Case("datetime", "2026-01-02", "2026-01-02T00:00:00Z", "2026-01-02", "2026-01-02",
         "2026-01-02T00:00:00Z"),  # an OData Date literal
    same("datetime", "1753-01-01T00:00:00Z", "1753-01-01T00:00:00Z"),
    same("datetime", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
    bad("datetime", "1752-12-31T23:59:59Z"),  # before Dataverse's first date-time
    bad("datetime", "0999-01-01T00:00:00Z"),
    bad("datetime", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
    bad("datetime", "9999-12-31T23:00:00-05:00"),  # after 9999 in UTC
    bad("datetime", "2026-02-30T00:00:00Z"),
    bad("datetime", "2026-01-01T24:00:00Z"),
    bad("datetime", "yesterday"),
    wrong_json("datetime", 20260101, fetch=SKIP),
    wrong_json("datetime", ["2026-01-01"], fetch=SKIP, odata=False),
    # uniqueidentifier, lookup: lower case with hyphens; braces and upper case are read
    same("uniqueidentifier", G, G),
    same("uniqueidentifier", G.upper(), G),
    same("uniqueidentifier", "{" + G.upper() + "}", G),
    same("uniqueidentifier", G.replace("-", ""), G),
    Case("uniqueidentifier", G.upper(), G, G.upper(), G.upper(), G),  # an unquoted Edm.Guid
    bad("uniqueidentifier", "not-a-guid"),
    bad("uniqueidentifier", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"),
    bad("uniqueidentifier", G[:-1]),
    wrong_json("uniqueidentifier", 12, fetch=SKIP),
    same("lookup", TARGET, TARGET),
    same("lookup", "{" + TARGET.upper() + "}", TARGET),
    Case("lookup", TARGET.upper(), TARGET, TARGET.upper(), TARGET.upper(), TARGET),
    bad("lookup", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"),
    wrong_json("lookup", {"id": TARGET}, fetch=SKIP, odata=False),
]


@pytest.fixture
def probe_org(sales_org: OrgDb) -> OrgDb:
    """The sales org with the probe entity and the probe every lookup points to."""
    schema.add_entity(sales_org, probe())
    records.create_record(sales_org, "probe", {"text": "target"}, record_id=TARGET)
    return sales_org


def stored_rows(org: OrgDb, name: str, ids: list[str]) -> list[tuple[Any, str]]:
    """The value of attribute `name` of each record as SQLite holds it, with its SQLite type."""
    return [org.db.execute(f"SELECT [{name}], typeof([{name}]) FROM probe WHERE probeid = ?",
                           [i]).fetchone() for i in ids]


def write_everywhere(client: FlaskClient, org: OrgDb, name: str,
                     value: Any) -> list[tuple[str, Any]]:
    """Write {name: value} by API POST, API PATCH and save_records: (path, id or refusal)."""
    as_json = not (isinstance(value, float) and not math.isfinite(value))
    body = json.dumps({name: value})  # NaN and Infinity are not JSON: the API must refuse them
    outcomes: list[tuple[str, Any]] = []
    answer = client.post(ROOT + "probes", data=body,
                         headers={**AUTH, "Content-Type": "application/json"})
    outcomes.append(("POST", answer.json["probeid"] if answer.status_code == 201 else answer))
    patched = records.create_record(org, "probe", {})["probeid"]
    answer = client.patch(ROOT + f"probes({patched})", data=body,
                          headers={**AUTH, "Content-Type": "application/json"})
    outcomes.append(("PATCH", patched if answer.status_code < 300 else answer))
    bulk = str(uuid.uuid4())
    try:
        records.save_records(org, "probe", [{"probeid": bulk, name: value}])
        outcomes.append(("save_records", bulk))
    except InvalidInput as refused:
        outcomes.append(("save_records", refused))
    assert as_json or outcomes[0][1].status_code == 400
    return outcomes


def fetch_filter(name: str, text: str) -> Any:
    return parse_filter(f"<filter><condition attribute={quoteattr(name)} operator=\"eq\" "
                        f"value={quoteattr(text)}/></filter>").check(probe_entity())


def probe_entity() -> Entity:
    """The probe as the store completes it (primary id, system columns)."""
    return check_entity(probe())


def odata_ids(client: FlaskClient, expression: str) -> Any:
    """The ids an OData $filter finds, or the refusing answer."""
    answer = client.get(ROOT + "probes?$select=probeid&$filter=" + quote(expression),
                        headers=AUTH)
    if answer.status_code != 200:
        return answer
    return {r["probeid"] for r in answer.json["value"]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_path_agrees_on_a_value(client: FlaskClient, probe_org: OrgDb, case: Case) -> None:
    name = ATTRIBUTE_OF[case.kind]
    before = current_version(probe_org.db)
    outcomes = write_everywhere(client, probe_org, name, case.value)
    # PATCH writes to a record made for it; the other writes make the version move too.
    made = 1
    if case.stored is REFUSED:
        for path, outcome in outcomes:
            if path == "save_records":
                assert isinstance(outcome, InvalidInput), path
                assert outcome.field == name and name in outcome.message
            else:
                assert outcome.status_code == 400, (path, outcome.data)
                if not (isinstance(case.value, float) and not math.isfinite(case.value)):
                    assert outcome.json["error"]["target"] == name, path
                    assert name in outcome.json["error"]["message"]
        assert current_version(probe_org.db) == before + made
        ids: list[str] = []
    else:
        ids = [outcome for _, outcome in outcomes]
        assert all(isinstance(i, str) for i in ids), outcomes
        rows = stored_rows(probe_org, name, ids)
        assert rows[0] == rows[1] == rows[2]  # stored alike, SQLite type included
        json_values = [records.get_record(probe_org, "probe", i)[name] for i in ids]
        assert json_values == [case.stored] * 3
        assert type(json_values[0]) is type(case.stored)
    others = {TARGET} | {i for _, i in outcomes if isinstance(i, str) and i not in ids}

    fetch_compared = case.compared if case.fetch_compared is None else case.fetch_compared
    if case.fetch is not SKIP:
        if fetch_compared is REFUSED:
            with pytest.raises(InvalidInput) as refused:
                fetch_filter(name, case.fetch)
            assert refused.value.field == "filter" and f"attribute {name}" in refused.value.message
        else:
            checked = fetch_filter(name, case.fetch)
            assert isinstance(checked, Group)
            typed = checked.children[0].values[0]
            stored = [records.get_record(probe_org, "probe", i) for i in ids]
            assert all(matches(checked, r) for r in stored)
            assert not matches(checked, records.get_record(probe_org, "probe", TARGET))
            if fetch_compared is not NO_MATCH:
                assert typed == fetch_compared and type(typed) is type(fetch_compared)
            # What the sync sends a server for this filter finds the same records here.
            assert odata_ids(client, to_odata(checked)) == set(ids)
    if case.odata is not SKIP:
        found = odata_ids(client, f"{name} eq {case.odata}")
        if case.compared is REFUSED:
            assert found.status_code == 400, found.data
            assert found.json["error"]["target"] == "$filter"
            assert name in found.json["error"]["message"]
        else:
            assert found == set(ids)
            assert not found & others


def test_every_type_is_tested_with_good_and_bad_values() -> None:
    kinds = {c.kind for c in CASES}
    assert kinds == set(types.TYPES) == set(ATTRIBUTE_OF)
    for kind in types.TYPES:
        assert any(c.kind == kind and c.stored is not REFUSED for c in CASES), kind
        assert any(c.kind == kind and c.compared is REFUSED for c in CASES), kind


def test_type_names_read_back_as_written() -> None:
    for kind in types.TYPES.values():
        assert types.from_dataverse(kind.dataverse) is kind
        assert types.from_dataverse(None, kind.odata_type) is kind
        assert kind.odata_type == f"#Microsoft.Dynamics.CRM.{kind.dataverse_metadata}"
        assert types.from_edm(kind.edm) in {t for t in types.TYPES.values() if t.edm == kind.edm}
    # Dataverse's own names for kinds we keep as picklists and lookups.
    assert types.from_dataverse("Status").name == "picklist"
    assert types.from_dataverse("Owner").name == "lookup"
    assert types.from_dataverse("Virtual", "#Microsoft.Dynamics.CRM.ImageAttributeMetadata") \
        is None
    assert types.from_edm("Edm.String").name == "string"
    assert types.from_edm("Edm.Guid").name == "uniqueidentifier"


def test_entity_definitions_and_the_dataverse_reader_round_trip_every_type() -> None:
    entity = probe_entity()
    definition = {**entity_definition(entity),
                  "Attributes": [attribute_definition(entity, a) for a in entity.attributes]}
    written = {a["LogicalName"]: a for a in definition["Attributes"]}
    for attr in entity.attributes:
        kind = types.TYPES[attr.type]
        assert written[attr.logicalname]["AttributeType"] == kind.dataverse
        assert written[attr.logicalname]["AttributeTypeName"] == {
            "Value": kind.dataverse_type_name}
        assert written[attr.logicalname]["@odata.type"] == kind.odata_type
    read = entity_from_definition(definition)
    assert [(a.logicalname, a.type) for a in read.attributes] == \
        [(a.logicalname, a.type) for a in entity.attributes]
    # A $select without AttributeType still reads by @odata.type.
    definition["Attributes"] = [{k: v for k, v in a.items() if k != "AttributeType"}
                                for a in definition["Attributes"]]
    assert [a.type for a in entity_from_definition(definition).attributes] == \
        [a.type for a in entity.attributes]


def test_metadata_document_types_every_property_from_the_table(
        client: FlaskClient, probe_org: OrgDb) -> None:
    from defusedxml.ElementTree import fromstring

    answer = client.get(ROOT + "$metadata", headers=AUTH)
    assert answer.status_code == 200
    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    root = fromstring(answer.data)
    entity_type = next(e for e in root.iter(edm + "EntityType") if e.get("Name") == "probe")
    props = {p.get("Name"): p.attrib for p in entity_type.iter(edm + "Property")}
    for attr in probe_entity().attributes:
        assert props[attr.logicalname]["Type"] == types.TYPES[attr.type].edm
    assert props["text"]["MaxLength"] == "10" and props["note"]["MaxLength"] == "20"
    assert props["dec"]["Scale"] == "2" and props["amount"]["Scale"] == "2"
    assert props["moment"]["Precision"] == "0"
    assert "Scale" not in props["dbl"] and "MaxLength" not in props["whole"]


def test_the_org_store_imports_no_layer_above_it() -> None:
    """portal.orgs (the type table with it) is below web, jobs, the sync engine and backends."""
    import ast
    from pathlib import Path

    above = ("portal.web", "portal.sync", "portal.backends", "jobs")
    for path in Path(types.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(above), f"{path.name} imports {name}"

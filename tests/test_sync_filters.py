"""Sync filters: FetchXML parsing and canonical form, metadata checks, OData, evaluation."""

from typing import Any

import pytest

from portal.errors import InvalidInput
from portal.orgs.metadata import Entity
from portal.orgs.templates import sales
from portal.sync.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    Condition,
    Filter,
    Group,
    matches,
    parse_fetch_filters,
    parse_filter,
    to_odata,
)

GUID = "6f9619ff-8b86-d011-b42d-00c04fc964ff"

NESTED = """
<filter type="and">
  <condition attribute="address1_city" operator="eq" value="Redmond" />
  <filter type="or">
    <condition attribute="numberofemployees" operator="gt" value="10" />
    <condition attribute="industrycode" operator="in"><value>1</value><value>7</value></condition>
    <filter>
      <condition attribute="creditonhold" operator="null" />
    </filter>
  </filter>
</filter>
"""


def entity(name: str) -> Entity:
    return next(e for e in sales() if e.logicalname == name)


def account_filter(xml: str) -> Filter:
    return parse_filter(xml).check(entity("account"))


def cond(attribute: str, operator: str, *values: str) -> Filter:
    """One condition on account, checked (typed), as the sync engine uses it."""
    return Condition(attribute, operator, values).check(entity("account"))


# ------------------------------------------------------------- parse, round trip


def test_parse_filter_nested_groups() -> None:
    parsed = parse_filter(NESTED)
    assert parsed == Group("and", (
        Condition("address1_city", "eq", ("Redmond",)),
        Group("or", (
            Condition("numberofemployees", "gt", ("10",)),
            Condition("industrycode", "in", ("1", "7")),
            Group("and", (Condition("creditonhold", "null"),)),
        )),
    ))
    assert parsed.attributes() == {"address1_city", "numberofemployees", "industrycode",
                                   "creditonhold"}


def test_filter_to_xml_round_trips_in_canonical_form() -> None:
    parsed = parse_filter(NESTED)
    canonical = parsed.to_xml()
    assert parse_filter(canonical) == parsed
    assert parse_filter(canonical).to_xml() == canonical
    assert canonical.startswith('<filter type="and"><condition attribute="address1_city" '
                                'operator="eq" value="Redmond" />')
    assert "<value>1</value><value>7</value>" in canonical


def test_filter_to_xml_round_trips_typed_filter() -> None:
    typed = account_filter(NESTED)
    assert parse_filter(typed.to_xml()).check(entity("account")) == typed


def test_parse_filter_canonicalizes_neq_ui_labels_and_empty_groups() -> None:
    parsed = parse_filter(
        '<filter><condition attribute="ownerid" operator="neq" uiname="Ann" uitype="systemuser"'
        f' value="{{{GUID.upper()}}}" /><filter type="or" /></filter>')
    assert parsed.to_xml() == ('<filter type="and"><condition attribute="ownerid" operator="ne" '
                               f'value="{{{GUID.upper()}}}" /></filter>')


def test_parse_filter_escapes_values_in_xml() -> None:
    parsed = parse_filter('<filter><condition attribute="name" operator="eq" '
                          'value="A &amp; &quot;B&quot; &lt;C&gt;" /></filter>')
    assert parsed == Group("and", (Condition("name", "eq", ('A & "B" <C>',)),))
    assert parse_filter(parsed.to_xml()) == parsed


def test_condition_to_xml_wraps_a_lone_condition() -> None:
    assert Condition("name", "not-null").to_xml() == (
        '<filter type="and"><condition attribute="name" operator="not-null" /></filter>')


# ------------------------------------------------------------------- fetch form


def test_parse_fetch_filters_one_filter_per_entity() -> None:
    filters = parse_fetch_filters(
        '<?xml version="1.0" encoding="utf-8"?>'
        '<fetch version="1.0" mapping="logical">'
        '<entity name="account"><attribute name="name" />'
        '<filter type="and"><condition attribute="address1_city" operator="eq" value="Bonn" />'
        "</filter></entity>"
        '<entity name="contact"><filter type="or">'
        '<condition attribute="lastname" operator="like" value="A%" />'
        '<condition attribute="lastname" operator="like" value="B%" /></filter>'
        '<filter><condition attribute="donotemail" operator="eq" value="0" /></filter></entity>'
        '<entity name="lead"><all-attributes /></entity>'
        "</fetch>")
    assert set(filters) == {"account", "contact"}
    assert filters["account"] == Group("and", (Condition("address1_city", "eq", ("Bonn",)),))
    # Two <filter> children of one entity both apply.
    assert filters["contact"] == Group("and", (
        Group("or", (Condition("lastname", "like", ("A%",)),
                     Condition("lastname", "like", ("B%",)))),
        Group("and", (Condition("donotemail", "eq", ("0",)),)),
    ))


# ------------------------------------------------------------------------ check


def test_filter_check_types_values() -> None:
    typed = account_filter(
        '<filter>'
        '<condition attribute="numberofemployees" operator="ge" value="12" />'
        '<condition attribute="revenue" operator="lt" value="1.5e6" />'
        '<condition attribute="creditonhold" operator="eq" value="TRUE" />'
        '<condition attribute="lastusedincampaign" operator="gt" '
        'value="2024-05-01T12:00:00+02:00" />'
        f'<condition attribute="parentaccountid" operator="in"><value>{{{GUID.upper()}}}</value>'
        "</condition>"
        '<condition attribute="modifiedon" operator="ge" value="2024-01-01" />'
        f'<condition attribute="accountid" operator="ne" value="{GUID}" />'
        "</filter>")
    assert isinstance(typed, Group)
    assert [c.values for c in typed.conditions()] == [
        (12,), (1_500_000.0,), (True,), ("2024-05-01T10:00:00Z",), (GUID,),
        ("2024-01-01T00:00:00Z",), (GUID,)]
    assert [c.attribute_type for c in typed.conditions()] == [
        "integer", "money", "boolean", "datetime", "lookup", "datetime", "uniqueidentifier"]
    assert typed.check(entity("account")) == typed  # checking again changes nothing


@pytest.mark.parametrize(("attribute", "operator", "value", "message"), [
    ("nosuchfield", "eq", "1", "attribute 'nosuchfield' does not exist in entity account"),
    ("numberofemployees", "eq", "ten", "'ten' is not a whole number"),
    ("numberofemployees", "eq", "1.5", "'1.5' is not a whole number"),
    ("numberofemployees", "eq", "99999999999", "out of range"),
    ("revenue", "gt", "lots", "'lots' is not a number"),
    ("revenue", "gt", "nan", "'nan' is not a number"),
    ("creditonhold", "eq", "yes", "'yes' is not true, false, 1 or 0"),
    ("lastusedincampaign", "lt", "yesterday", "'yesterday' is not an ISO 8601 date-time"),
    ("parentaccountid", "eq", "not-a-guid", "'not-a-guid' is not a GUID"),
    ("numberofemployees", "like", "1%", "like and not-like apply to text attributes only"),
    ("creditonhold", "gt", "0", "a boolean attribute cannot be ordered"),
])
def test_filter_check_refuses_bad_attribute_or_value(attribute: str, operator: str, value: str,
                                                     message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        Condition(attribute, operator, (value,)).check(entity("account"))
    assert caught.value.field == "filter"
    assert attribute in caught.value.message


# ---------------------------------------------------------------- bad inputs

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<filter><condition attribute="name" operator="eq" value="&lol3;" /></filter>"""

XXE = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       '<filter><condition attribute="name" operator="eq" value="&e;" /></filter>')


def _deep(depth: int) -> str:
    return ("<filter>" * depth + '<condition attribute="name" operator="null" />'
            + "</filter>" * depth)


def _many(count: int) -> str:
    return ("<filter>" + '<condition attribute="name" operator="null" />' * count
            + "</filter>")


@pytest.mark.parametrize(("xml", "message"), [
    ("<filter><condition", "malformed XML"),
    ("", "malformed XML"),
    ("not xml at all", "malformed XML"),
    (XXE, "DTDs and entities are not allowed"),
    (BILLION_LAUGHS, "DTDs and entities are not allowed"),
    ('<filter><condition attribute="name" operator="between" value="1" /></filter>',
     "unknown operator 'between'"),
    ('<filter><condition operator="eq" value="1" /></filter>',
     '<condition operator="eq"> has no attribute name'),
    ('<filter><condition attribute="name" value="1" /></filter>', "has no operator"),
    ('<filter><condition attribute="Name;drop" operator="eq" value="1" /></filter>',
     "is not an attribute name"),
    ('<filter><condition attribute="name" operator="in" /></filter>',
     "operator in needs at least one <value>"),
    ('<filter><condition attribute="name" operator="not-in" value="a" /></filter>',
     "operator not-in takes <value> elements, not a value attribute"),
    ('<filter><condition attribute="name" operator="null" value="x" /></filter>',
     "operator null takes no value"),
    ('<filter><condition attribute="name" operator="eq" /></filter>',
     "operator eq needs exactly one value"),
    ('<filter><condition attribute="name" operator="eq"><value>a</value></condition></filter>',
     "operator eq takes no <value> elements"),
    ('<filter><condition attribute="name" operator="eq" value="a" valueof="x" /></filter>',
     "the XML attribute 'valueof' is not supported"),
    ('<filter type="xor"><condition attribute="name" operator="null" /></filter>',
     'filter type="xor"'),
    ('<filter><link-entity name="contact" /></filter>', "<link-entity> is not allowed"),
    ("<condition attribute='name' operator='null' />", "expected a <filter>, got <condition>"),
    ("<fetch><entity name='account' /></fetch>", "use parse_fetch_filters"),
    (_deep(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
    (_many(MAX_CONDITIONS + 1), f"more than {MAX_CONDITIONS} conditions"),
])
def test_parse_filter_refuses_bad_input(xml: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_filter(xml)
    assert caught.value.field == "filter"


def test_parse_filter_accepts_limits() -> None:
    assert parse_filter(_deep(MAX_DEPTH)).attributes() == {"name"}
    assert len(list(parse_filter(_many(MAX_CONDITIONS)).conditions())) == MAX_CONDITIONS


@pytest.mark.parametrize(("xml", "message"), [
    ("<filter />", "expected a <fetch> document, got <filter>"),
    ("<fetch><entity /></fetch>", "missing or invalid entity name"),
    ("<fetch><entity name='a' /><entity name='a' /></fetch>", 'entity name="a"> appears twice'),
    ("<fetch><entity name='account'><link-entity name='contact' /></entity></fetch>",
     "<link-entity> in <entity name=\"account\"> is not supported"),
    ("<fetch><filter /></fetch>", "<filter> is not allowed in <fetch>"),
    (XXE.replace("<filter>", "<fetch><entity name='a'><filter>").replace(
        "</filter>", "</filter></entity></fetch>"), "DTDs and entities are not allowed"),
])
def test_parse_fetch_filters_refuses_bad_input(xml: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_fetch_filters(xml)


# ---------------------------------------------------------------------- OData


@pytest.mark.parametrize(("attribute", "operator", "values", "expected"), [
    ("name", "eq", ["O'Neil"], "name eq 'O''Neil'"),
    ("name", "ne", ["x"], "(name ne null and name ne 'x')"),
    ("numberofemployees", "lt", ["5"], "numberofemployees lt 5"),
    ("numberofemployees", "le", ["5"], "numberofemployees le 5"),
    ("revenue", "gt", ["1000.5"], "revenue gt 1000.5"),
    ("revenue", "ge", ["10"], "revenue ge 10.0"),
    ("creditonhold", "eq", ["1"], "creditonhold eq true"),
    ("lastusedincampaign", "ge", ["2024-01-31T23:00:00-01:00"],
     "lastusedincampaign ge 2024-02-01T00:00:00Z"),
    ("accountid", "eq", [GUID.upper()], f"accountid eq {GUID}"),
    ("parentaccountid", "eq", [GUID], f"_parentaccountid_value eq {GUID}"),
    ("name", "null", [], "name eq null"),
    ("name", "not-null", [], "name ne null"),
    ("industrycode", "in", ["1", "7"], "(industrycode eq 1 or industrycode eq 7)"),
    ("industrycode", "in", ["1"], "industrycode eq 1"),
    ("industrycode", "not-in", ["1", "7"],
     "(industrycode ne null and not (industrycode eq 1 or industrycode eq 7))"),
    ("name", "like", ["Con%"], "startswith(name,'Con')"),
    ("name", "like", ["%Ltd"], "endswith(name,'Ltd')"),
    ("name", "like", ["%o'c%"], "contains(name,'o''c')"),
    ("name", "like", ["Contoso"], "name eq 'Contoso'"),
    ("name", "like", ["%"], "name ne null"),
    ("name", "like", ["%100[%]%"], "contains(name,'100%')"),
    ("name", "not-like", ["Con%"], "(name ne null and not (startswith(name,'Con')))"),
])
def test_to_odata_each_operator(attribute: str, operator: str, values: list[str],
                                expected: str) -> None:
    assert to_odata(cond(attribute, operator, *values)) == expected


def test_to_odata_groups_are_parenthesized() -> None:
    assert to_odata(account_filter(NESTED)) == (
        "(address1_city eq 'Redmond' and (numberofemployees gt 10 or "
        "(industrycode eq 1 or industrycode eq 7) or creditonhold eq null))")
    assert to_odata(account_filter("<filter />")) == ""


@pytest.mark.parametrize("pattern", ["Con%so", "C_ntoso", "[CK]ontoso%", "%a%b%", "[^C]%"])
def test_to_odata_refuses_like_pattern_odata_cannot_express(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="cannot be expressed in OData") as caught:
        to_odata(cond("name", "like", pattern))
    assert "name" in caught.value.message


def test_to_odata_refuses_not_like_everything() -> None:
    with pytest.raises(InvalidInput, match="matches no record"):
        to_odata(cond("name", "not-like", "%"))


def test_to_odata_needs_a_checked_filter() -> None:
    with pytest.raises(ValueError, match="checked filter"):
        to_odata(parse_filter(NESTED))


# ------------------------------------------------------------------ matches

RECORD: dict[str, Any] = {
    "name": "Contoso Ltd", "numberofemployees": 50, "revenue": 1000.0, "creditonhold": 0,
    "lastusedincampaign": "2024-03-01T08:00:00Z", "parentaccountid": GUID,
    "industrycode": 7, "telephone1": None,
}


@pytest.mark.parametrize(("attribute", "operator", "values", "expected"), [
    ("name", "eq", ["contoso ltd"], True),  # case-insensitive, as Dataverse
    ("name", "eq", ["Contoso"], False),
    ("name", "ne", ["CONTOSO LTD"], False),
    ("name", "ne", ["Fabrikam"], True),
    ("telephone1", "ne", ["123"], False),  # null is never ne: SQL semantics
    ("telephone1", "eq", ["123"], False),
    ("numberofemployees", "lt", ["51"], True),
    ("numberofemployees", "lt", ["50"], False),
    ("numberofemployees", "le", ["50"], True),
    ("numberofemployees", "gt", ["50"], False),
    ("numberofemployees", "ge", ["50"], True),
    ("revenue", "gt", ["999.99"], True),
    ("name", "gt", ["contoso"], True),
    ("creditonhold", "eq", ["false"], True),  # the store keeps booleans as 0/1
    ("creditonhold", "eq", ["1"], False),
    ("lastusedincampaign", "gt", ["2024-03-01T09:00:00+02:00"], True),
    ("lastusedincampaign", "lt", ["2024-03-01"], False),
    ("parentaccountid", "eq", [f"{{{GUID.upper()}}}"], True),
    ("telephone1", "null", [], True),
    ("name", "null", [], False),
    ("telephone1", "not-null", [], False),
    ("name", "not-null", [], True),
    ("websiteurl", "null", [], True),  # an attribute missing from the record is null
    ("industrycode", "in", ["1", "7"], True),
    ("industrycode", "in", ["1", "2"], False),
    ("industrycode", "not-in", ["1", "2"], True),
    ("industrycode", "not-in", ["7"], False),
    ("telephone1", "not-in", ["1"], False),
    ("name", "like", ["con%"], True),
    ("name", "like", ["%LTD"], True),
    ("name", "like", ["%oso%"], True),
    ("name", "like", ["C_ntoso Ltd"], True),
    ("name", "like", ["[A-D]ontoso%"], True),
    ("name", "like", ["[^C]%"], False),
    ("name", "like", ["Contoso"], False),
    ("name", "like", ["Con.*"], False),  # regex characters are literal
    ("telephone1", "like", ["%"], False),
    ("name", "not-like", ["%oso%"], False),
    ("name", "not-like", ["Fab%"], True),
    ("telephone1", "not-like", ["Fab%"], False),
])
def test_matches_each_operator(attribute: str, operator: str, values: list[str],
                               expected: bool) -> None:
    assert matches(cond(attribute, operator, *values), RECORD) is expected


def test_matches_groups() -> None:
    nested = account_filter(NESTED)
    assert matches(nested, {**RECORD, "address1_city": "redmond"})
    assert not matches(nested, {**RECORD, "address1_city": "Bonn"})
    assert matches(nested, {"address1_city": "Redmond", "numberofemployees": 1,
                            "industrycode": 7})
    assert not matches(nested, {"address1_city": "Redmond", "numberofemployees": 1,
                                "industrycode": 3, "creditonhold": True})
    assert matches(parse_filter("<filter />"), RECORD)
    assert matches(Group("or"), RECORD)


def test_matches_unchecked_filter_compares_by_record_type() -> None:
    unchecked = parse_filter('<filter><condition attribute="numberofemployees" operator="gt" '
                             'value="10" /><condition attribute="creditonhold" operator="eq" '
                             'value="false" /></filter>')
    assert matches(unchecked, {"numberofemployees": 50, "creditonhold": False})
    assert not matches(unchecked, {"numberofemployees": 5, "creditonhold": False})
    assert not matches(unchecked, {"numberofemployees": 50, "creditonhold": 1})

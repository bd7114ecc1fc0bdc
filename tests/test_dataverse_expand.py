"""$expand on the Dataverse root: collection-valued navigation properties and nested $expand.

Shapes compared with Microsoft Learn's "Join tables using OData"
(powerapps-docs developer/data-platform/webapi/query/join-tables.md), the response of
"Single $expand on collection-valued navigation properties", copied into
tests/fixtures/dataverse/query/accounts-expand-collections.response.json. Our
one-to-many navigation properties are named after the relationships' schema names
(account_contact_parentcustomerid where Dataverse's own org says
contact_customer_accounts).
"""

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, fixture, new_application_user

CONTACTS = "account_contact_parentcustomerid"
MEETINGS = "account_appointment_regardingobjectid"


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers; two accounts, three contacts of the first, two meetings."""
    litware = records.create_record(sales_org, "account", {"name": "Litware"})["accountid"]
    records.create_record(sales_org, "account", {"name": "Empty"})
    for n in range(3):
        records.create_record(sales_org, "contact", {
            "lastname": f"Contact {n}", "fullname": f"Contact {n}", "parentcustomerid": litware})
    for n in range(2):
        records.create_record(sales_org, "appointment", {"subject": f"Task {n + 1} for Litware",
                                                         "regardingobjectid": litware})
    return bearer(client_token(client, *new_application_user(app)))


def get(client: FlaskClient, url: str, headers: dict[str, str]) -> Any:
    answer = client.get(DV_ROOT + quote(url, safe="/?&=$(),'*;"), headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def test_learns_single_expand_of_collections(client: FlaskClient,
                                             token: dict[str, str]) -> None:
    body = get(client, f"accounts?$select=name,accountid&$orderby=name desc&$expand="
                       f"{MEETINGS}($select=subject),{CONTACTS}($select=fullname)", token)
    litware, empty = body["value"]
    documented = fixture("query/accounts-expand-collections.response.json")["value"][0]
    contact = litware[CONTACTS][0]
    assert set(contact) == set(documented["contact_customer_accounts"][0])
    assert contact["_parentcustomerid_value"] == litware["accountid"]
    assert set(litware[MEETINGS][0]) == set(documented["Account_Tasks"][0])
    assert sorted(m["subject"] for m in litware[MEETINGS]) == ["Task 1 for Litware",
                                                               "Task 2 for Litware"]
    assert len(litware[CONTACTS]) == 3
    assert empty[CONTACTS] == [] and empty[MEETINGS] == []


def test_collection_options_filter_orderby_top(client: FlaskClient,
                                               token: dict[str, str]) -> None:
    body = get(client, f"accounts?$filter=name eq 'Litware'&$expand={CONTACTS}($select="
                       "fullname;$filter=fullname ne 'Contact 1';$orderby=fullname desc;$top=1)",
               token)
    assert [c["fullname"] for c in body["value"][0][CONTACTS]] == ["Contact 2"]
    functions = get(client, f"accounts?$filter=name eq 'Litware'&$expand={CONTACTS}($select="
                            "fullname;$filter=Microsoft.Dynamics.CRM.In(PropertyName='fullname',"
                            "PropertyValues=['Contact 0','Contact 2']))", token)
    assert sorted(c["fullname"] for c in functions["value"][0][CONTACTS]) == [
        "Contact 0", "Contact 2"]


def test_nested_expand(client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    # Single-valued within single-valued (Learn: regardingobjectid_contact_task(...;
    # $expand=parentcustomerid_account(...))).
    meetings = get(client, "appointments?$select=subject&$expand=regardingobjectid_account("
                           f"$select=name;$expand={CONTACTS}($select=fullname))", token)
    first = meetings["value"][0]["regardingobjectid_account"]
    assert first["name"] == "Litware" and len(first[CONTACTS]) == 3
    # Single-valued within collection-valued (Learn: contact_customer_accounts(...;
    # $expand=owninguser(...))); the hidden lookup stays hidden.
    body = get(client, f"accounts?$filter=name eq 'Litware'&$expand={CONTACTS}($select="
                       "fullname;$expand=parentcustomerid_account($select=name))", token)
    contacts = body["value"][0][CONTACTS]
    assert {c["parentcustomerid_account"]["name"] for c in contacts} == {"Litware"}
    one = get(client, "contacts?$top=1&$select=fullname&$expand=parentcustomerid_account("
                      f"$select=name;$expand={MEETINGS}($select=subject))", token)
    contact = one["value"][0]
    assert "_parentcustomerid_value" not in contact
    assert len(contact["parentcustomerid_account"][MEETINGS]) == 2


def test_annotations_reach_expanded_records(client: FlaskClient, token: dict[str, str]) -> None:
    answer = client.get(DV_ROOT + quote(f"accounts?$filter=name eq 'Litware'&$expand={CONTACTS}"
                                        "($select=fullname,_parentcustomerid_value)",
                                        safe="/?&=$(),'*;"),
                        headers={**token, "Prefer": 'odata.include-annotations="*"'})
    contact = answer.json["value"][0][CONTACTS][0]
    assert contact["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == \
        "Litware"


@pytest.mark.parametrize(("query", "words"), [
    (f"accounts?$expand={CONTACTS}($skip=1)", "only $select, $filter, $orderby, $top"),
    (f"accounts?$expand={CONTACTS}($top=x)", "a whole number"),
    (f"accounts?$expand={CONTACTS}($filter=nothing eq 1)", "has no property 'nothing'"),
    (f"accounts?$expand={CONTACTS}($orderby=nothing)", "has no property 'nothing'"),
    ("accounts?$expand=contact_customer_accounts", "has no navigation property"),
    ("contacts?$expand=parentcustomerid($top=1)", "only $select, $expand"),
    ("accounts?$expand=" + ",".join([CONTACTS] * 16), "at most 15"),
    (f"accounts?$expand={CONTACTS}($expand=parentcustomerid_account($expand={CONTACTS}("
     "$expand=parentcustomerid_account)))", "3 levels deep"),
])
def test_bad_expansions_say_why(client: FlaskClient, token: dict[str, str], query: str,
                                words: str) -> None:
    answer = client.get(DV_ROOT + quote(query, safe="/?&=$(),'*;"), headers=token)
    assert answer.status_code == 400, answer.json
    assert words in answer.json["error"]["message"]
    assert answer.json["error"]["code"] == "0x80040203"


def test_more_than_5000_related_records_are_refused_not_cut(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    litware = get(client, "accounts?$filter=name eq 'Litware'", token)["value"][0]["accountid"]
    records.save_records(sales_org, "contact", [
        {"contactid": str(uuid.UUID(int=n + 1)), "lastname": "Many", "parentcustomerid": litware}
        for n in range(5000)])
    answer = client.get(DV_ROOT + f"accounts?$expand={CONTACTS}($select=lastname)",
                        headers=token)
    assert answer.status_code == 400
    assert "more than 5000 related records" in answer.json["error"]["message"]
    limited = get(client, f"accounts?$filter=name eq 'Litware'&$expand={CONTACTS}("
                          "$select=lastname;$top=5000)", token)
    assert len(limited["value"][0][CONTACTS]) == 5000

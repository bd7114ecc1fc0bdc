"""Records on the Dataverse root in Dataverse's JSON shapes, written by the one write path.

Payloads copied from Microsoft Learn into tests/fixtures/dataverse/ (the page each
comes from is named in the test that reads it; paths under powerapps-docs
`powerapps-docs/developer/data-platform/`):
* webapi/web-api-query-data-sample.md: contacts-filter-annotations-all,
  contact-retrieve-annotations-all, contacts-page1/page2-nextlink-annotations-all;
* webapi/query/select-columns.md: accounts-formatted-values, accounts-lookup-annotations;
* webapi/query/page-results.md: contacts-maxpagesize-page1/page2.
"""

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records, transactions
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, fixture, new_application_user
from tests.odata_helpers import AUTH

ACCOUNT = "6a9f3c1e-0000-4000-8000-000000000001"
CONTACT = "6a9f3c1e-0000-4000-8000-000000000002"
FORMATTED = "@OData.Community.Display.V1.FormattedValue"
NAVIGATION = "@Microsoft.Dynamics.CRM.associatednavigationproperty"
TARGET = "@Microsoft.Dynamics.CRM.lookuplogicalname"
ALL = 'odata.include-annotations="*"'


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers of an application user of `sales`, with an account and a contact."""
    records.create_record(sales_org, "account", {
        "name": "Litware, Inc. (sample)", "revenue": 20000, "industrycode": 7,
        "creditonhold": False, "lastusedincampaign": "2023-04-07T21:59:01Z"}, record_id=ACCOUNT)
    records.create_record(sales_org, "contact", {
        "fullname": "Yvonne McKay (sample)", "lastname": "McKay", "jobtitle": "Coffee Master",
        "parentcustomerid": ACCOUNT}, record_id=CONTACT)
    records.update_record(sales_org, "account", ACCOUNT, {"primarycontactid": CONTACT})
    return bearer(client_token(client, *new_application_user(app)))


def get(client: FlaskClient, url: str, headers: dict[str, str], prefer: str | None = None
        ) -> Any:
    """GET a Dataverse URL; the decoded JSON (asserting 200)."""
    answer = client.get(DV_ROOT + url, headers={**headers, **({"Prefer": prefer} if prefer
                                                                 else {})})
    assert answer.status_code == 200, answer.json
    return answer


def suffixes(record: dict[str, Any], key: str) -> set[str]:
    """The annotation terms a record carries for one property."""
    return {k[len(key):] for k in record if k.startswith(key + "@")}


def test_lookups_read_as_value_properties(client: FlaskClient, token: dict[str, str]) -> None:
    body = get(client, "contacts?$select=fullname,_parentcustomerid_value", token).json
    [contact] = body["value"]
    assert contact["_parentcustomerid_value"] == ACCOUNT
    assert "parentcustomerid" not in contact
    assert set(contact) == {"@odata.etag", "contactid", "fullname", "_parentcustomerid_value"}
    # The Org API keeps its own spelling of the same record.
    org_api = client.get("/odata/v4/sales/contacts?$select=fullname,parentcustomerid",
                         headers=AUTH).json["value"][0]
    assert org_api["parentcustomerid"] == ACCOUNT and "_parentcustomerid_value" not in org_api


def test_annotations_all_as_in_the_query_data_sample(client: FlaskClient,
                                                     token: dict[str, str]) -> None:
    """webapi/web-api-query-data-sample.md, section 2 (filter with annotations)."""
    documented = fixture("query/contacts-filter-annotations-all.response.json")
    answer = get(client, "contacts?$select=fullname,jobtitle,_parentcustomerid_value"
                 "&$filter=contains(fullname,'(sample)')", token, ALL)
    body = answer.json
    assert list(body) == list(documented)  # context, 3 collection annotations, value
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == -1
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is False
    assert isinstance(body["@Microsoft.Dynamics.CRM.globalmetadataversion"], str)
    assert answer.headers["Preference-Applied"] == ALL
    [ours] = body["value"]
    theirs = documented["value"][0]
    assert suffixes(ours, "_parentcustomerid_value") == \
        suffixes(theirs, "_transactioncurrencyid_value")
    assert ours["_parentcustomerid_value" + FORMATTED] == "Litware, Inc. (sample)"
    assert ours["_parentcustomerid_value" + TARGET] == "account"
    assert ours["_parentcustomerid_value" + NAVIGATION] == "parentcustomerid"
    # Annotations come before the value they annotate, as Dataverse writes them.
    keys = list(ours)
    assert keys.index("_parentcustomerid_value" + TARGET) < keys.index("_parentcustomerid_value")
    assert suffixes(ours, "fullname") == suffixes(theirs, "fullname") == set()


def test_formatted_values_as_in_select_columns(client: FlaskClient, token: dict[str, str]
                                               ) -> None:
    """webapi/query/select-columns.md: formatted money, lookup, choice and date values."""
    documented = fixture("query/accounts-formatted-values.response.json")["value"][0]
    body = get(client, "accounts?$select=name,revenue,_primarycontactid_value,industrycode,"
               "lastusedincampaign,creditonhold", token,
               'odata.include-annotations="OData.Community.Display.V1.FormattedValue"').json
    [ours] = body["value"]
    assert ours["revenue" + FORMATTED] == documented["revenue" + FORMATTED] == "$20,000.00"
    assert suffixes(ours, "revenue") == suffixes(documented, "revenue")
    assert suffixes(ours, "_primarycontactid_value") == \
        suffixes(documented, "_primarycontactid_value") == {FORMATTED}
    assert ours["_primarycontactid_value" + FORMATTED] == "Yvonne McKay (sample)"
    assert suffixes(ours, "industrycode") == suffixes(documented, "customertypecode")
    assert ours["industrycode" + FORMATTED] == "Consulting"
    assert ours["lastusedincampaign" + FORMATTED] == "4/7/2023 9:59 PM"  # UTC
    assert ours["creditonhold" + FORMATTED] == "No"
    assert "@Microsoft.Dynamics.CRM.totalrecordcount" not in body  # not asked for


def test_lookup_annotations_as_in_select_columns(app: Flask, client: FlaskClient,
                                                 sales_org: OrgDb, token: dict[str, str]
                                                 ) -> None:
    """webapi/query/select-columns.md: lookup properties (polymorphic lookups too)."""
    documented = fixture("query/accounts-lookup-annotations.response.json")["value"][0]
    records.create_record(sales_org, "appointment", {"subject": "Visit",
                                                     "regardingobjectid": CONTACT})
    prefer = ('odata.include-annotations="Microsoft.Dynamics.CRM.associatednavigationproperty,'
              'Microsoft.Dynamics.CRM.lookuplogicalname"')
    [ours] = get(client, "appointments?$select=subject,_regardingobjectid_value", token,
                 prefer).json["value"]
    assert suffixes(ours, "_regardingobjectid_value") == suffixes(documented, "_ownerid_value")
    assert ours["_regardingobjectid_value" + TARGET] == "contact"
    assert ours["_regardingobjectid_value" + NAVIGATION] == "regardingobjectid_contact"


def test_single_record_with_annotations_as_in_the_query_data_sample(
        client: FlaskClient, token: dict[str, str]) -> None:
    """webapi/web-api-query-data-sample.md, section 1 (retrieve with annotations)."""
    documented = fixture("query/contact-retrieve-annotations-all.response.json")
    answer = get(client, f"contacts({CONTACT})?$select=fullname,jobtitle,"
                 "_parentcustomerid_value", token, ALL)
    body = answer.json
    assert body["@odata.context"].endswith(
        "$metadata#contacts(fullname,jobtitle,_parentcustomerid_value)/$entity")
    assert documented["@odata.context"].endswith("/$entity")
    assert answer.headers["ETag"] == body["@odata.etag"]
    assert suffixes(body, "_parentcustomerid_value") == \
        suffixes(documented, "_transactioncurrencyid_value")


def test_paging_with_count_and_annotations_as_in_the_query_data_sample(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    """webapi/web-api-query-data-sample.md, "Pagination": $count, page size 4, annotations."""
    records.save_records(sales_org, "contact", [
        {"contactid": str(uuid.UUID(int=i + 100)), "lastname": f"C{i}", "fullname": f"C {i}"}
        for i in range(8)])
    first_doc = fixture("query/contacts-page1-nextlink-annotations-all.response.json")
    second_doc = fixture("query/contacts-page2-nextlink-annotations-all.response.json")
    prefer = f"odata.maxpagesize=4,{ALL}"
    first = get(client, "contacts?$select=fullname,jobtitle&$count=true", token, prefer)
    assert list(first.json) == list(first_doc)
    assert first.json["@odata.count"] == first.json["@Microsoft.Dynamics.CRM.totalrecordcount"]\
        == 9
    assert len(first.json["value"]) == 4
    assert set(first.headers["Preference-Applied"].split(", ")) == \
        {ALL, "odata.maxpagesize=4"}
    assert "$skiptoken=" in first.json["@odata.nextLink"]
    second = client.get(first.json["@odata.nextLink"], headers={**token, "Prefer": prefer})
    assert list(second.json) == list(second_doc)
    seen = [r["contactid"] for r in first.json["value"] + second.json["value"]]
    third = client.get(second.json["@odata.nextLink"], headers={**token, "Prefer": prefer})
    seen += [r["contactid"] for r in third.json["value"]]
    assert "@odata.nextLink" not in third.json
    assert len(seen) == len(set(seen)) == 9


def test_maxpagesize_as_in_page_results(client: FlaskClient, sales_org: OrgDb,
                                        token: dict[str, str]) -> None:
    """webapi/query/page-results.md: Prefer: odata.maxpagesize=2, no annotations."""
    records.save_records(sales_org, "contact", [
        {"contactid": str(uuid.UUID(int=i + 100)), "lastname": f"C{i}", "fullname": f"C {i}"}
        for i in range(4)])
    documented = fixture("query/contacts-maxpagesize-page1.response.json")
    answer = get(client, "contacts?$select=fullname", token, "odata.maxpagesize=2")
    assert list(answer.json) == list(documented)
    assert [set(r) for r in answer.json["value"]] == [set(r) for r in documented["value"]]
    assert answer.headers["Preference-Applied"] == "odata.maxpagesize=2"
    link = urlsplit(answer.json["@odata.nextLink"])
    assert link.path == DV_ROOT + "contacts"
    assert set(parse_qs(link.query)) == {"$select", "$skiptoken"}


def test_page_size_is_5000_by_default_and_at_most(client: FlaskClient, sales_org: OrgDb,
                                                  token: dict[str, str]) -> None:
    records.save_records(sales_org, "account", [
        {"accountid": str(uuid.UUID(int=i + 100)), "name": f"A {i}"} for i in range(5100)])
    default = get(client, "accounts?$select=name", token).json
    assert len(default["value"]) == 5000 and "@odata.nextLink" in default
    asked = get(client, "accounts?$select=name", token, "odata.maxpagesize=9000")
    assert len(asked.json["value"]) == 5000
    assert asked.headers["Preference-Applied"] == "odata.maxpagesize=5000"


def test_filter_orderby_and_count_on_lookup_values(client: FlaskClient, token: dict[str, str]
                                                   ) -> None:
    body = get(client, f"contacts?$select=fullname&$filter=_parentcustomerid_value eq {ACCOUNT}"
               "&$orderby=_parentcustomerid_value desc&$count=true", token).json
    assert body["@odata.count"] == 1 and body["value"][0]["contactid"] == CONTACT
    none = get(client, "contacts?$filter=_parentcustomerid_value eq "
               "00000000-0000-4000-8000-000000000000", token).json
    assert none["value"] == []
    count = client.get(DV_ROOT + f"contacts/$count?$filter=_parentcustomerid_value eq {ACCOUNT}",
                       headers=token)
    assert count.status_code == 200 and count.data == b"1"
    assert count.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("navigation", ["parentcustomerid", "parentcustomerid_account"])
def test_expand_single_valued_navigation_with_select(client: FlaskClient, token: dict[str, str],
                                                     navigation: str) -> None:
    body = get(client, f"contacts?$select=fullname&$expand={navigation}($select=name,revenue)",
               token).json
    [contact] = body["value"]
    assert contact[navigation]["name"] == "Litware, Inc. (sample)"
    assert contact[navigation]["accountid"] == ACCOUNT
    assert set(contact[navigation]) == {"@odata.etag", "accountid", "name", "revenue"}
    one = get(client, f"contacts({CONTACT})?$select=fullname&$expand={navigation}($select=name)",
              token).json
    assert one[navigation]["name"] == "Litware, Inc. (sample)"


@pytest.mark.parametrize("query, status", [
    ("contacts?$expand=nothere", 400),
    ("contacts?$expand=parentcustomerid($filter=name eq 'x')", 400),
    ("contacts?$expand=parentcustomerid($select=nothere)", 400),
    ("contacts?$select=_nothere_value", 400),
    ("contacts?$orderby=_nothere_value", 400),
], ids=["unknown-nav", "filter-inside", "unknown-column", "select", "orderby"])
def test_bad_expand_and_lookup_names_are_refused(client: FlaskClient, token: dict[str, str],
                                                 query: str, status: int) -> None:
    answer = client.get(DV_ROOT + query, headers=token)
    assert answer.status_code == status
    assert set(answer.json["error"]) >= {"code", "message"}


def test_org_api_still_refuses_expand(client: FlaskClient, token: dict[str, str]) -> None:
    answer = client.get("/odata/v4/sales/contacts?$expand=parentcustomerid_account", headers=AUTH)
    assert answer.status_code == 501


def test_create_with_bind_answers_204_unless_representation(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    body = {"lastname": "Doe", "parentcustomerid_account@odata.bind": f"/accounts({ACCOUNT})"}
    created = client.post(DV_ROOT + "contacts", json=body, headers=token)
    assert created.status_code == 204 and created.data == b""
    new_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert sales_org.db.execute("SELECT parentcustomerid FROM contact WHERE contactid = ?",
                                [new_id]).fetchone()[0] == ACCOUNT
    shown = client.post(DV_ROOT + "contacts", json=body,
                        headers={**token, "Prefer": f"return=representation,{ALL}"})
    assert shown.status_code == 201
    assert shown.json["_parentcustomerid_value"] == ACCOUNT
    assert shown.json["_parentcustomerid_value" + TARGET] == "account"
    assert shown.headers["Preference-Applied"] == "return=representation"


def test_update_with_representation_and_etags(client: FlaskClient, token: dict[str, str]
                                              ) -> None:
    url = DV_ROOT + f"contacts({CONTACT})"
    etag = client.get(url, headers=token).headers["ETag"]
    changed = client.patch(url, json={"jobtitle": "Barista"},
                           headers={**token, "If-Match": etag, "Prefer": "return=representation"})
    assert changed.status_code == 200 and changed.json["jobtitle"] == "Barista"
    assert "_parentcustomerid_value" in changed.json
    stale = client.patch(url, json={"jobtitle": "Chef"}, headers={**token, "If-Match": etag})
    assert stale.status_code == 412
    missing = client.patch(DV_ROOT + "contacts(00000000-0000-4000-8000-00000000dead)",
                           json={"lastname": "X"}, headers={**token, "If-Match": "*"})
    assert missing.status_code == 404
    exists = client.patch(url, json={"lastname": "X"}, headers={**token, "If-None-Match": "*"})
    assert exists.status_code == 412


def test_bind_to_a_missing_record_is_refused_and_writes_nothing(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    before = sales_org.db.execute("SELECT count(*) FROM contact").fetchone()[0]
    answer = client.post(DV_ROOT + "contacts", json={
        "lastname": "Doe",
        "parentcustomerid_account@odata.bind": "/accounts(00000000-0000-4000-8000-00000000dead)"},
        headers=token)
    assert answer.status_code == 400
    assert answer.json["error"]["target"] == "parentcustomerid"
    assert sales_org.db.execute("SELECT count(*) FROM contact").fetchone()[0] == before


def test_writes_through_this_root_are_the_org_apis_writes(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str]) -> None:
    """A client org records offline transactions for writes on either root; deletes leave
    tombstones."""
    transactions.set_client(sales_org, True)
    created = client.post(DV_ROOT + "accounts", json={"name": "Fabrikam"}, headers=token)
    new_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    client.patch(DV_ROOT + f"accounts({new_id})", json={"name": "Fabrikam Ltd"},
                 headers={**token, "If-Match": "*"})
    assert client.delete(DV_ROOT + f"accounts({new_id})", headers=token).status_code == 204
    operations = [(t.record_id, t.operation) for t in transactions.list_transactions(sales_org)
                  if t.record_id == new_id]
    assert [op for _, op in operations] == ["create", "update", "delete"]
    assert sales_org.db.execute("SELECT count(*) FROM _tombstones WHERE id = ?",
                                [new_id]).fetchone()[0] == 1


def test_paging_through_20000_records(client: FlaskClient, sales_org: OrgDb,
                                      token: dict[str, str]) -> None:
    records.save_records(sales_org, "account", (
        {"accountid": str(uuid.UUID(int=i + 1000)), "name": f"A {i:05d}"} for i in range(20000)))
    seen: list[str] = []
    url = DV_ROOT + "accounts?$select=name&$count=true"
    pages = 0
    while url:
        answer = client.get(url, headers=token)
        assert answer.status_code == 200
        body = answer.json
        assert body["@odata.count"] == 20001  # with the fixture's account
        seen += [r["accountid"] for r in body["value"]]
        url = body.get("@odata.nextLink", "")
        pages += 1
    assert pages == 5  # 5,000 a page
    assert len(seen) == len(set(seen)) == 20001


def test_change_tracking_on_this_root(client: FlaskClient, sales_org: OrgDb,
                                      token: dict[str, str]) -> None:
    first = get(client, "contacts?$select=fullname,_parentcustomerid_value", token,
                "odata.track-changes").json
    delta = first["@odata.deltaLink"]
    assert delta.startswith("http://localhost" + DV_ROOT + "contacts?")
    records.update_record(sales_org, "contact", CONTACT, {"jobtitle": "Barista"})
    new = records.create_record(sales_org, "contact", {"lastname": "New"})
    records.delete_record(sales_org, "contact", new["contactid"])
    changes = client.get(delta, headers=token).json
    changed = [v for v in changes["value"] if "id" not in v]
    deleted = [v for v in changes["value"] if "id" in v]
    assert [c["contactid"] for c in changed] == [CONTACT]
    assert changed[0]["_parentcustomerid_value"] == ACCOUNT
    assert deleted == [{"@odata.context": "http://localhost" + DV_ROOT +
                        "$metadata#contacts/$deletedEntity", "id": new["contactid"],
                        "reason": "deleted"}]


FETCH = """<fetch count="2">
  <entity name="account">
    <attribute name="name" />
    <attribute name="revenue" />
    <order attribute="name" />
    <filter type="and">
      <condition attribute="revenue" operator="ge" value="100" />
      <filter type="or">
        <condition attribute="name" operator="like" value="F%" />
        <condition attribute="name" operator="eq" value="Litware, Inc. (sample)" />
      </filter>
    </filter>
  </entity>
</fetch>"""


def test_fetchxml_query_with_filter_order_and_pages(client: FlaskClient, sales_org: OrgDb,
                                                    token: dict[str, str]) -> None:
    """Microsoft Learn: "Use FetchXml to query data", "Page results using FetchXml"."""
    records.save_records(sales_org, "account", [
        {"accountid": str(uuid.UUID(int=i + 100)), "name": f"F{i}", "revenue": i * 100}
        for i in range(4)])
    prefer = ('odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,'
              'Microsoft.Dynamics.CRM.morerecords"')
    first = client.get(DV_ROOT + "accounts", query_string={"fetchXml": FETCH},
                       headers={**token, "Prefer": prefer})
    assert first.status_code == 200, first.json
    assert [r["name"] for r in first.json["value"]] == ["F1", "F2"]
    assert first.json["@Microsoft.Dynamics.CRM.morerecords"] is True
    assert 'pagenumber="2"' in first.json["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"]
    second = client.get(DV_ROOT + "accounts",
                        query_string={"fetchXml": FETCH.replace('count="2"',
                                                                'count="2" page="2"')},
                        headers={**token, "Prefer": prefer})
    assert [r["name"] for r in second.json["value"]] == ["F3", "Litware, Inc. (sample)"]
    assert second.json["@Microsoft.Dynamics.CRM.morerecords"] is False
    assert set(second.json["value"][0]) == {"@odata.etag", "accountid", "name", "revenue"}


@pytest.mark.parametrize("xml, status", [
    ("<fetch><entity name='account'><link-entity name='contact' from='parentcustomerid' "
     "to='accountid'><link-entity name='lead' from='leadid' to='contactid'/></link-entity>"
     "</entity></fetch>", 501),
    ("<fetch aggregate='true'><entity name='account'/></fetch>", 400),
    ("<fetch distinct='true'><entity name='account'/></fetch>", 501),
    ("<fetch><entity name='contact'/></fetch>", 400),
    ("<fetch><entity name='account'><filter><condition attribute='nothere' operator='eq' "
     "value='1'/></filter></entity></fetch>", 400),
    ("<fetch count='0'><entity name='account'/></fetch>", 400),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><fetch><entity name='account'/></fetch>", 400),
    ("<fetch>", 400),
], ids=["nested-link-entity", "aggregate-of-nothing", "distinct", "other-entity",
        "unknown-attribute", "count", "dtd", "malformed"])
def test_fetchxml_bad_input_is_refused(client: FlaskClient, token: dict[str, str], xml: str,
                                       status: int) -> None:
    answer = client.get(DV_ROOT + "accounts", query_string={"fetchXml": xml}, headers=token)
    assert answer.status_code == status
    assert answer.json["error"]["message"]


def test_metadata_names_lookups_as_the_records_do(client: FlaskClient, token: dict[str, str]
                                                  ) -> None:
    from defusedxml.ElementTree import fromstring

    edm = "{http://docs.oasis-open.org/odata/ns/edm}"

    def contact_properties(document: bytes) -> set[str]:
        types = fromstring(document).iter(edm + "EntityType")
        contact = next(t for t in types if t.get("Name") == "contact")
        return {p.get("Name", "") for p in contact.iter(edm + "Property")}

    dataverse = client.get(DV_ROOT + "$metadata", headers=token)
    org_api = client.get("/odata/v4/sales/$metadata", headers=AUTH)
    assert dataverse.status_code == org_api.status_code == 200
    assert "_parentcustomerid_value" in contact_properties(dataverse.data)
    assert "parentcustomerid" not in contact_properties(dataverse.data)
    assert "parentcustomerid" in contact_properties(org_api.data)

"""Entity set reads: $select, $filter, $orderby, $top, $skip, $count, paging, single records."""

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.odata_helpers import AUTH, ROOT

PARENT = str(uuid.UUID(int=999))


def guid(i: int) -> str:
    return str(uuid.UUID(int=i))


@pytest.fixture
def accounts(sales_org: OrgDb) -> OrgDb:
    """30 accounts with varied values (some nulls), and a parent the first ten point to."""
    records.create_record(sales_org, "account", {"name": "Parent"}, record_id=PARENT)
    records.save_records(sales_org, "account", [
        {"accountid": guid(i + 1), "name": f"Acc {i:02d}" + (" O'Brien" if i == 5 else ""),
         "revenue": None if i % 10 == 0 else i * 100.0, "numberofemployees": i,
         "creditonhold": i % 2 == 0, "industrycode": 1 + i % 3,
         "lastusedincampaign": f"2024-01-{i + 1:02d}T10:00:00Z" if i < 28 else None,
         "parentaccountid": PARENT if i < 10 else None}
        for i in range(30)])
    return sales_org


def get(client: FlaskClient, query: str, **headers: str) -> Any:
    answer = client.get(ROOT + query, headers={**AUTH, **headers})
    assert answer.status_code == 200, answer.data
    return answer


def names(client: FlaskClient, query: str) -> list[str]:
    return [r["name"] for r in get(client, query).json["value"]]


@pytest.mark.parametrize("expression, expected", [
    ("name eq 'Acc 03'", ["Acc 03"]),
    ("name eq 'Acc 05 O''Brien'", ["Acc 05 O'Brien"]),
    ("numberofemployees ge 27", ["Acc 27", "Acc 28", "Acc 29"]),
    ("numberofemployees lt 2 and creditonhold eq true", ["Acc 00"]),
    ("numberofemployees eq 1 or numberofemployees eq 2", ["Acc 01", "Acc 02"]),
    ("not (numberofemployees gt 1) and name ne 'Parent'", ["Acc 00", "Acc 01"]),
    ("contains(name, 'Brien')", ["Acc 05 O'Brien"]),
    ("startswith(name, 'Acc 2') and endswith(name, '9')", ["Acc 29"]),
    ("revenue eq null and name ne 'Parent'", ["Acc 00", "Acc 10", "Acc 20"]),
    ("revenue gt 2750.5", ["Acc 28", "Acc 29"]),
    ("lastusedincampaign ge 2024-01-27T00:00:00Z", ["Acc 26", "Acc 27"]),
    ("lastusedincampaign lt 2024-01-02", ["Acc 00"]),
    ("numberofemployees lt 2147483647 and numberofemployees gt 28", ["Acc 29"]),
    ("numberofemployees gt -2147483648 and numberofemployees lt 1", ["Acc 00"]),
    ("lastusedincampaign eq null", ["Acc 28", "Acc 29", "Parent"]),
    (f"accountid eq {guid(3)}", ["Acc 02"]),
    (f"parentaccountid eq {PARENT.upper()} and numberofemployees lt 2", ["Acc 00", "Acc 01"]),
    (f"_parentaccountid_value eq {PARENT} and numberofemployees eq 9", ["Acc 09"]),
    ("industrycode in (2, 3) and numberofemployees lt 5", ["Acc 01", "Acc 02", "Acc 04"]),
    ("year(lastusedincampaign) eq 2024 and day(lastusedincampaign) eq 3", ["Acc 02"]),
    ("tolower(name) eq 'acc 07'", ["Acc 07"]),
    ("contains(name, '%') or contains(name, '_')", []),
])
def test_query_filter_selects_matching_records(client: FlaskClient, accounts: OrgDb,
                                               expression: str, expected: list[str]) -> None:
    assert names(client, f"accounts?$filter={quote(expression)}&$orderby=name") == expected


def test_query_select_returns_only_named_properties_with_key_and_etag(
        client: FlaskClient, accounts: OrgDb) -> None:
    body = get(client, "accounts?$select=name,creditonhold&$top=1&$orderby=name").json
    assert body["@odata.context"].endswith("$metadata#accounts(name,creditonhold)")
    record = body["value"][0]
    assert set(record) == {"@odata.etag", "accountid", "name", "creditonhold"}
    assert record["creditonhold"] is True and record["@odata.etag"].startswith('W/"')


def test_query_orderby_top_skip_and_count(client: FlaskClient, accounts: OrgDb) -> None:
    body = get(client, "accounts?$orderby=numberofemployees desc&$top=3&$skip=1&$count=true"
               "&$filter=numberofemployees ne null").json
    assert [r["name"] for r in body["value"]] == ["Acc 28", "Acc 27", "Acc 26"]
    assert body["@odata.count"] == 30
    assert "@odata.nextLink" not in body


@pytest.mark.parametrize("orderby", ["", "revenue", "revenue desc", "lastusedincampaign desc,name",
                                     "creditonhold,revenue desc"])
def test_query_paging_visits_every_record_once(client: FlaskClient, accounts: OrgDb,
                                               orderby: str) -> None:
    query = "accounts?$select=name" + (f"&$orderby={orderby}" if orderby else "")
    whole = [r["accountid"] for r in get(client, query).json["value"]]
    seen, url, pages = [], ROOT + query, 0
    while url:
        answer = client.get(url, headers={**AUTH, "Prefer": "odata.maxpagesize=4"})
        assert answer.status_code == 200, answer.data
        assert answer.headers["Preference-Applied"] == "odata.maxpagesize=4"
        seen += [r["accountid"] for r in answer.json["value"]]
        url = answer.json.get("@odata.nextLink")
        pages += 1
    assert seen == whole and len(seen) == 31
    assert pages == 8


@pytest.mark.parametrize("prefer, size", [(None, 1000), ("odata.maxpagesize=5000", 5000),
                                           ("odata.maxpagesize=20000", 5000)])
def test_pages_hold_1000_records_unless_asked_for_up_to_5000(
        client: FlaskClient, sales_org: OrgDb, prefer: str | None, size: int) -> None:
    records.save_records(sales_org, "account", [{"accountid": guid(i + 1), "name": f"A {i}"}
                                                for i in range(5200)])
    answer = get(client, "accounts?$select=name", **({"Prefer": prefer} if prefer else {}))
    assert len(answer.json["value"]) == size
    assert answer.headers.get("Preference-Applied") == (
        f"odata.maxpagesize={size}" if prefer else None)
    rest = client.get(answer.json["@odata.nextLink"], headers={**AUTH, "Prefer": prefer or ""})
    assert len(rest.json["value"]) == min(size, 5200 - size)


def test_query_top_larger_than_a_page_is_served_in_pages(client: FlaskClient,
                                                        accounts: OrgDb) -> None:
    first = get(client, "accounts?$top=10", Prefer="odata.maxpagesize=4").json
    second = client.get(first["@odata.nextLink"], headers=AUTH).json
    third = client.get(second["@odata.nextLink"], headers=AUTH).json
    assert [len(p["value"]) for p in (first, second, third)] == [4, 4, 2]
    assert "@odata.nextLink" not in third


def test_query_single_record_by_key_with_select(client: FlaskClient, accounts: OrgDb) -> None:
    answer = get(client, f"accounts({guid(4)})?$select=name,revenue")
    assert answer.json["name"] == "Acc 03" and answer.json["revenue"] == 300.0
    assert answer.json["@odata.context"].endswith("$metadata#accounts(name,revenue)/$entity")
    assert answer.headers["ETag"] == answer.json["@odata.etag"]
    assert get(client, f"accounts(accountid={guid(4)})").json["name"] == "Acc 03"
    again = client.get(ROOT + f"accounts({guid(4)})",
                       headers={**AUTH, "If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("query, status, words", [
    ("accounts?$filter=name eq", 400, "not a valid expression"),
    ("accounts?$filter=name eq 'x' or", 400, "not a valid expression"),
    ("accounts?$filter=bogus eq 1", 400, "no property 'bogus'"),
    ("accounts?$filter=name eq 1", 400, "not a valid string"),
    ("accounts?$filter=numberofemployees eq 'x'", 400, "not a valid integer"),
    # An integer is Dataverse's Int32, as for writes and FetchXML filters.
    ("accounts?$filter=numberofemployees eq 2147483648", 400, "not a valid integer"),
    ("accounts?$filter=numberofemployees eq -2147483649", 400, "not a valid integer"),
    ("accounts?$filter=industrycode eq 2147483648", 400, "not a valid picklist"),
    ("accounts?$filter=accountid eq 'not-a-guid'", 400, "not a valid uniqueidentifier"),
    ("accounts?$filter=name eq 'x'; DROP TABLE account; --", 400, "not a valid expression"),
    ("accounts?$filter=name eq 'x' -- comment", 400, "not a valid expression"),
    ("accounts?$filter=name eq 'x''; DELETE FROM account; --'", 200, ""),
    ("accounts?$filter=[name] eq 'x'", 400, "not a valid expression"),
    ("accounts?$filter=name", 400, "must be a condition"),
    ("accounts?$filter=primarycontactid_contact/fullname eq 'x'", 501, "navigation"),
    ("accounts?$select=name,bogus", 400, "no property 'bogus'"),
    ("accounts?$select=name;drop", 400, "no property"),
    ("accounts?$orderby=bogus", 400, "no property 'bogus'"),
    ("accounts?$orderby=name sideways", 400, "asc|desc"),
    ("accounts?$top=-1", 400, "$top must be a whole number"),
    ("accounts?$top=99999999999999999999", 400, "$top must be a whole number"),
    ("accounts?$top=abc", 400, "$top must be a whole number"),
    ("accounts?$skip=-5", 400, "$skip must be a whole number"),
    ("accounts?$count=maybe", 400, "$count must be true or false"),
    ("accounts?$expand=primarycontactid_contact", 501, "not supported"),
    ("accounts?$bogus=1", 400, "unknown"),
    ("accounts?$skiptoken=abc", 400, "$skiptoken is not valid"),
    ("accounts(not-a-guid)", 400, "is not a GUID"),
    ("accounts(1)", 400, "is not a GUID"),
    ("nothings", 404, "does not exist"),
    ("accounts/name", 404, "no resource"),
])
def test_query_refuses_bad_input_with_a_clear_message(client: FlaskClient, accounts: OrgDb,
                                                      query: str, status: int,
                                                      words: str) -> None:
    answer = client.get(ROOT + query, headers=AUTH)
    assert answer.status_code == status, answer.data
    if status != 200:
        assert answer.content_type.startswith("application/json")
        assert words in answer.json["error"]["message"]
    assert records.get_record(accounts, "account", guid(1)) is not None  # nothing dropped


def test_query_skiptoken_cannot_be_moved_to_another_query(client: FlaskClient,
                                                          accounts: OrgDb) -> None:
    first = get(client, "accounts?$orderby=name", Prefer="odata.maxpagesize=5").json
    token = first["@odata.nextLink"].split("$skiptoken=")[1]
    answer = client.get(ROOT + f"accounts?$orderby=revenue&$skiptoken={token}", headers=AUTH)
    assert answer.status_code == 400
    assert "another query" in answer.json["error"]["message"]


def test_query_missing_record_is_404(client: FlaskClient, accounts: OrgDb) -> None:
    answer = client.get(ROOT + f"accounts({guid(12345)})", headers=AUTH)
    assert answer.status_code == 404 and answer.json["error"]["code"] == "NotFound"

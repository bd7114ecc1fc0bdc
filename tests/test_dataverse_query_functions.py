"""Dataverse's query functions in $filter on the Dataverse root (portal.web.odata.query_functions).

Requests copied from Microsoft Learn, "Filter rows using OData"
(powerapps-docs developer/data-platform/webapi/query/filter-rows.md): the Between
example (accounts with 5 to 2,000 employees) and the In example with parameter
aliases and double-quoted values (contacts named O'Brian and the like). The In and
NotIn calls are the ones Microsoft's SDK builds (`col(...).in_`, `not_in`).
"""

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PowerPlatform.Dataverse.models.filters import col

from portal.db import TIMESTAMP_FORMAT
from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user
from tests.odata_helpers import AUTH, ROOT

EMPLOYEES = [1, 5, 300, 2000, 2001, None]
LASTNAMES = ["OBrian", "OBryan", "O'Brian", "O'Bryan", "Smith"]


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers of an application user of `sales`, with accounts and contacts."""
    for n, employees in enumerate(EMPLOYEES):
        records.create_record(sales_org, "account", {"name": f"Account {n}",
                                                     "numberofemployees": employees})
    for name in LASTNAMES:
        records.create_record(sales_org, "contact", {"lastname": name})
    return bearer(client_token(client, *new_application_user(app)))


def query(client: FlaskClient, headers: dict[str, str], url: str, root: str = DV_ROOT) -> Any:
    return client.get(root + quote(url, safe="/?&=$(),'*@"), headers=headers)


def names(answer: Any, key: str = "numberofemployees") -> list[Any]:
    assert answer.status_code == 200, answer.json
    return sorted((r[key] for r in answer.json["value"]), key=str)


def test_learns_between_example(client: FlaskClient, token: dict[str, str]) -> None:
    answer = query(client, token, "accounts?$select=name,numberofemployees&$filter=Microsoft."
                   "Dynamics.CRM.Between(PropertyName='numberofemployees',"
                   'PropertyValues=["5","2000"])')
    assert names(answer) == [2000, 300, 5]
    outside = query(client, token, "accounts?$select=numberofemployees&$filter=Microsoft."
                    "Dynamics.CRM.NotBetween(PropertyName='numberofemployees',"
                    'PropertyValues=["5","2000"])')
    assert names(outside) == [1, 2001]  # null is neither between nor not between


def test_learns_in_example_with_aliases_and_quotes(client: FlaskClient,
                                                   token: dict[str, str]) -> None:
    answer = query(client, token, "contacts?$select=fullname,lastname&$filter=Microsoft."
                   "Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)&@p1='lastname'"
                   '&@p2=["OBrian","OBryan","O\'Brian","O\'Bryan"]')
    assert names(answer, "lastname") == ["O'Brian", "O'Bryan", "OBrian", "OBryan"]
    missing = query(client, token, "contacts?$filter=Microsoft.Dynamics.CRM.In("
                    "PropertyName=@p1,PropertyValues=['Smith'])")
    assert missing.status_code == 400
    assert "parameter alias @p1 has no value" in missing.json["error"]["message"]


def test_sdk_in_and_not_in(client: FlaskClient, token: dict[str, str]) -> None:
    within = (col("numberofemployees").in_([1, 300]) & (col("name") != "x")).to_odata()
    assert within.startswith("(Microsoft.Dynamics.CRM.In(PropertyName='numberofemployees',"
                             'PropertyValues=["1","300"])')
    assert names(query(client, token, f"accounts?$filter={within}")) == [1, 300]
    without = col("numberofemployees").not_in([1, 300]).to_odata()
    assert names(query(client, token, f"accounts?$filter={without}")) == [2000, 2001, 5]
    negated = f"not {col('numberofemployees').in_([1]).to_odata()}"
    assert names(query(client, token, f"accounts?$filter={negated}")) == [2000, 2001, 300, 5]


def test_date_functions_in_utc(client: FlaskClient, sales_org: OrgDb,
                               token: dict[str, str]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ages = {"now": timedelta(0), "3 days": timedelta(days=3), "40 days": timedelta(days=40),
            "3 years": timedelta(days=3 * 366)}
    for label, age in ages.items():
        made = records.create_record(sales_org, "lead", {"lastname": label, "subject": label})
        stamp = (now - age).strftime(TIMESTAMP_FORMAT)
        records.set_timestamps(sales_org, "lead", made["leadid"], stamp, stamp)

    def leads(function: str) -> list[Any]:
        return names(query(client, token, f"leads?$select=lastname&$filter=Microsoft.Dynamics."
                                          f"CRM.{function}"), "lastname")

    assert leads("Today(PropertyName='createdon')") == ["now"]
    assert leads("LastXDays(PropertyName='createdon',PropertyValue=10)") == ["3 days", "now"]
    assert leads("Last7Days(PropertyName='createdon')") == ["3 days", "now"]
    assert leads("OlderThanXDays(PropertyName='createdon',PropertyValue=10)") == [
        "3 years", "40 days"]
    assert leads("LastXHours(PropertyName='modifiedon',PropertyValue=1)") == ["now"]
    day = (now - timedelta(days=3)).strftime("%Y-%m-%d")
    assert leads(f"On(PropertyName='createdon',PropertyValue='{day}')") == ["3 days"]
    assert leads(f"OnOrBefore(PropertyName='createdon',PropertyValue='{day}')") == [
        "3 days", "3 years", "40 days"]
    assert leads(f"OnOrAfter(PropertyName='createdon',PropertyValue='{day}')") == [
        "3 days", "now"]
    assert "now" in leads("ThisYear(PropertyName='createdon')")
    assert not {"now", "3 years"} & set(leads("LastYear(PropertyName='createdon')"))
    # NextXDays runs from the moment of the query, which a record stamped when the test
    # began may already be behind on a slow machine: the one it must find is an hour ahead.
    soon = records.create_record(sales_org, "lead", {"lastname": "in an hour", "subject": "soon"})
    stamp = (datetime.now(UTC) + timedelta(hours=1)).strftime(TIMESTAMP_FORMAT)
    records.set_timestamps(sales_org, "lead", soon["leadid"], stamp, stamp)
    upcoming = leads("NextXDays(PropertyName='createdon',PropertyValue=3)")
    assert "in an hour" in upcoming and not {"3 days", "40 days", "3 years"} & set(upcoming)


@pytest.mark.parametrize(("condition", "status", "words"), [
    ("Microsoft.Dynamics.CRM.In(PropertyName='nothing',PropertyValues=['1'])", 400,
     "has no property 'nothing'"),
    ("Microsoft.Dynamics.CRM.In(PropertyName='numberofemployees',PropertyValues=['x'])", 400,
     "'x' is not a valid integer value"),
    ("Microsoft.Dynamics.CRM.In(PropertyName='numberofemployees')", 400,
     "takes PropertyName, PropertyValues"),
    ("Microsoft.Dynamics.CRM.In('numberofemployees',['1'])", 400, "named parameters"),
    ("Microsoft.Dynamics.CRM.Between(PropertyName='numberofemployees',PropertyValues=['1'])",
     400, "needs two PropertyValues"),
    ("Microsoft.Dynamics.CRM.Today(PropertyName='name')", 400,
     "applies to date and time properties"),
    ("Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue='soon')", 400,
     "whole number"),
    ('Microsoft.Dynamics.CRM.In(PropertyName=\'name\',PropertyValues=["open)', 400,
     "double-quoted string is not closed"),
    ("Microsoft.Dynamics.CRM.EqualUserId(PropertyName='ownerid')", 501,
     "Microsoft.Dynamics.CRM.EqualUserId is not served"),
])
def test_malformed_function_calls_say_why(client: FlaskClient, token: dict[str, str],
                                          condition: str, status: int, words: str) -> None:
    answer = query(client, token, f"accounts?$filter={condition}")
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]
    assert answer.json["error"]["code"].startswith("0x8004")


def test_the_org_api_refuses_them_and_says_where_they_are(client: FlaskClient,
                                                          token: dict[str, str]) -> None:
    for condition in ("Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['a'])",
                      'Microsoft.Dynamics.CRM.In(PropertyName=\'name\',PropertyValues=["a"])'):
        answer = query(client, AUTH, f"accounts?$filter={condition}", ROOT)
        assert answer.status_code == 400
        assert "served at the org's Dataverse Web API root" in answer.json["error"]["message"]
    # The Org API's own form of the same query.
    assert names(query(client, AUTH, "accounts?$filter=numberofemployees in (1, 300)", ROOT)
                 ) == [1, 300]

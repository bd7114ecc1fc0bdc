"""FetchXML aggregates on the Dataverse root (portal.web.odata.fetch_aggregates).

The data set, the queries and the expected results are Microsoft Learn's, "Aggregate
data using FetchXml" (powerapps-docs developer/data-platform/fetchxml/aggregate-data.md):
ten accounts, aggregates of numberofemployees, sums and counts by address1_city, and
sums by parts of createdon. (The page's table gives the first account 8/25/2023; its
result row says day 27, week 35, which is 8/27/2023: that date is used here.)
"""

from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user

ACCOUNTS = [  # numberofemployees, name, address1_city, createdon
    (None, "Example Account", None, "2023-08-27T10:00:00Z"),
    (1500, "Contoso Pharmaceuticals (sample)", "Redmond", "2023-03-25T10:00:00Z"),
    (2700, "Fabrikam, Inc. (sample)", "Lynnwood", "2023-03-25T10:00:00Z"),
    (2900, "Blue Yonder Airlines (sample)", "Los Angeles", "2023-03-25T10:00:00Z"),
    (2900, "City Power & Light (sample)", "Redmond", "2023-03-25T10:00:00Z"),
    (3900, "Coho Winery (sample)", "Phoenix", "2023-03-25T10:00:00Z"),
    (4300, "Adventure Works (sample)", "Santa Cruz", "2023-03-25T10:00:00Z"),
    (4800, "Alpine Ski House (sample)", "Missoula", "2023-03-25T10:00:00Z"),
    (6000, "Litware, Inc. (sample)", "Dallas", "2023-03-25T10:00:00Z"),
    (6200, "A. Datum Corporation (sample)", "Redmond", "2023-03-25T10:00:00Z"),
]


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers of an application user, with Learn's ten accounts."""
    for employees, name, city, created in ACCOUNTS:
        made = records.create_record(sales_org, "account", {
            "name": name, "numberofemployees": employees, "address1_city": city})
        records.set_timestamps(sales_org, "account", made["accountid"], created, created)
    return bearer(client_token(client, *new_application_user(app)))


def fetch(client: FlaskClient, headers: dict[str, str], xml: str) -> Any:
    return client.get(DV_ROOT + "accounts?fetchXml=" + quote(xml), headers=headers)


def rows(answer: Any) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.json
    return list(answer.json["value"])


def test_learns_aggregates(client: FlaskClient, token: dict[str, str]) -> None:
    answer = fetch(client, token, """<fetch aggregate='true'>
  <entity name='account'>
    <attribute name='numberofemployees'
      alias='Average'
      aggregate='avg' />
    <attribute name='numberofemployees'
      alias='Count'
      aggregate='count' />
    <attribute name='numberofemployees'
      alias='ColumnCount'
      aggregate='countcolumn' />
    <attribute name='numberofemployees'
      alias='Maximum'
      aggregate='max' />
    <attribute name='numberofemployees'
      alias='Minimum'
      aggregate='min' />
    <attribute name='numberofemployees'
      alias='Sum'
      aggregate='sum' />
  </entity>
</fetch>""")
    assert rows(answer) == [{"Average": 3911, "Count": 10, "ColumnCount": 9, "Maximum": 6200,
                             "Minimum": 1500, "Sum": 35200}]
    distinct = fetch(client, token, """<fetch aggregate='true'><entity name='account'>
<attribute name='numberofemployees'
   alias='ColumnCount'
   aggregate='countcolumn'
   distinct='true' />
</entity></fetch>""")
    assert rows(distinct) == [{"ColumnCount": 8}]


def test_learns_grouping_by_city(client: FlaskClient, token: dict[str, str]) -> None:
    answer = fetch(client, token, """<fetch aggregate='true'>
   <entity name='account'>
      <attribute name='numberofemployees'
         alias='Total'
         aggregate='sum' />
      <attribute name='address1_city'
         alias='Count'
         aggregate='count' />
      <attribute name='address1_city'
         alias='City'
         groupby='true' />
      <order alias='City' />
   </entity>
</fetch>""")
    assert [(r["Total"], r["Count"], r["City"]) for r in rows(answer)] == [
        (0, 1, None), (6000, 1, "Dallas"), (2900, 1, "Los Angeles"), (2700, 1, "Lynnwood"),
        (4800, 1, "Missoula"), (3900, 1, "Phoenix"), (10600, 3, "Redmond"),
        (4300, 1, "Santa Cruz")]


def test_learns_grouping_by_parts_of_a_date(client: FlaskClient, token: dict[str, str]) -> None:
    parts = """
      <attribute name='createdon'
         alias='Day'
         groupby='true'
         dategrouping='day' />
      <attribute name='createdon'
         alias='Week'
         groupby='true'
         dategrouping='week' />
      <attribute name='createdon'
         alias='Month'
         groupby='true'
         dategrouping='month' />
      <attribute name='createdon'
         alias='Year'
         groupby='true'
         dategrouping='year' />"""
    fiscal = """
      <attribute name='createdon'
         alias='FiscalPeriod'
         groupby='true'
         dategrouping='fiscal-period' />"""
    query = """<fetch aggregate='true'>
   <entity name='account'>
      <attribute name='numberofemployees'
         alias='Total'
         aggregate='sum' />{parts}
      <order alias='Month' />
   </entity>
</fetch>"""
    answer = fetch(client, token, query.format(parts=parts))
    assert [(r["Total"], r["Day"], r["Week"], r["Month"], r["Year"]) for r in rows(answer)] == [
        (35200, 25, 12, 3, 2023), (0, 27, 35, 8, 2023)]
    refused = fetch(client, token, query.format(parts=parts + fiscal))
    assert refused.status_code == 501
    assert "dategrouping='fiscal-period' is not served" in refused.json["error"]["message"]


def test_filters_and_formatted_values(client: FlaskClient, token: dict[str, str]) -> None:
    answer = client.get(DV_ROOT + "accounts?fetchXml=" + quote("""<fetch aggregate='true'>
      <entity name='account'>
        <attribute name='numberofemployees' alias='Sum' aggregate='sum' />
        <attribute name='address1_city' alias='City' groupby='true' />
        <filter><condition attribute='address1_city' operator='eq' value='Redmond' /></filter>
      </entity></fetch>"""), headers={**token, "Prefer": 'odata.include-annotations="*"'})
    assert rows(answer) == [{"Sum@OData.Community.Display.V1.FormattedValue": "10,600",
                             "Sum": 10600, "City": "Redmond"}]


def test_aggregate_record_limit_is_dataverses_error(client: FlaskClient,
                                                    token: dict[str, str]) -> None:
    answer = fetch(client, token, """<fetch aggregate='true' aggregatelimit='9'>
      <entity name='account'><attribute name='name' alias='n' aggregate='count' /></entity>
      </fetch>""")
    assert answer.status_code == 400
    assert answer.json["error"] == {
        "code": "0x8004E023",
        "message": "AggregateQueryRecordLimit exceeded. Cannot perform this operation."}
    assert rows(fetch(client, token, """<fetch aggregate='true' aggregatelimit='10'>
      <entity name='account'><attribute name='name' alias='n' aggregate='count' /></entity>
      </fetch>""")) == [{"n": 10}]


@pytest.mark.parametrize(("attributes", "status", "words"), [
    ("<attribute name='name' aggregate='count' />", 400, "needs an alias"),
    ("<attribute name='name' alias='a' />", 400, "needs either aggregate or groupby"),
    ("<attribute name='name' alias='a' aggregate='median' />", 400, "is not one of"),
    ("<attribute name='name' alias='a' aggregate='sum' />", 400, "sum does not apply to name"),
    ("<attribute name='nothing' alias='a' aggregate='count' />", 400, "is not an attribute"),
    ("<attribute name='name' alias='a' groupby='true' dategrouping='day' />", 400,
     "dategrouping applies to date"),
    ("<attribute name='name' alias='a' aggregate='count' /><order attribute='name' />", 400,
     "names a groupby alias"),
    ("<attribute name='name' alias='a' aggregate='count' /><order alias='a' />", 400,
     "is not a groupby alias"),
    ("<attribute name='name' alias='a' aggregate='count' />"
     "<attribute name='name' alias='a' aggregate='count' />", 400, "distinct aliases"),
    ("<attribute name='name' alias='a' aggregate='count' /><link-entity name='contact' "
     "from='parentcustomerid' to='accountid' />", 501, "link-entity is not served"),
])
def test_bad_aggregates_say_why(client: FlaskClient, token: dict[str, str], attributes: str,
                                status: int, words: str) -> None:
    answer = fetch(client, token, f"<fetch aggregate='true'><entity name='account'>"
                                  f"{attributes}</entity></fetch>")
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]

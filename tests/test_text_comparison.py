"""Text compares case-insensitively on every surface, by one rule (portal.orgs.types.fold_text).

Dataverse compares text case-insensitively (its default collation: "Use FetchXml
to filter rows" and "Filter rows" on Microsoft Learn say conditions on strings
are case-insensitive); the Dataverse root's $filter and FetchXML do the same here,
the Org API (OData v4 with Dataverse's conventions) too, and so do sync filters,
so one filter selects the same records on every surface and on both sides of a sync.
"""

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from portal.sync import filters
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user
from tests.odata_helpers import AUTH, ROOT

NAMES = ["Contoso Ltd", "CONTOSO LTD", "contoso ltd.", "Ärzte Zentrum", "ärzte zentrum",
         "Fabrikam"]


@pytest.fixture
def accounts(sales_org: OrgDb) -> dict[str, str]:
    """The accounts by id, one per name."""
    ids = {str(uuid.UUID(int=i + 1)): name for i, name in enumerate(NAMES)}
    records.save_records(sales_org, "account", [{"accountid": i, "name": n}
                                                for i, n in ids.items()])
    return ids


def _names(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.json
    return sorted(r["name"] for r in answer.json["value"])


def _synced(sales_org: OrgDb, xml: str) -> list[str]:
    rule = filters.parse_filter(xml).check(sales_org.entity("account"))
    return sorted(r["name"] for r in sales_org.db.table("account").rows
                  if filters.matches(rule, r))


@pytest.mark.parametrize(("odata", "fetch", "expected"), [
    ("name eq 'contoso ltd'", '<condition attribute="name" operator="eq" value="contoso ltd"/>',
     ["CONTOSO LTD", "Contoso Ltd"]),
    ("name ne 'CONTOSO ltd'", '<condition attribute="name" operator="ne" value="CONTOSO ltd"/>',
     ["Fabrikam", "contoso ltd.", "Ärzte Zentrum", "ärzte zentrum"]),
    ("name eq 'ÄRZTE ZENTRUM'",
     '<condition attribute="name" operator="eq" value="ÄRZTE ZENTRUM"/>',
     ["Ärzte Zentrum", "ärzte zentrum"]),
    ("startswith(name,'CONTOSO')", '<condition attribute="name" operator="like" value="CONTOSO%"/>',
     ["CONTOSO LTD", "Contoso Ltd", "contoso ltd."]),
    ("contains(name,'ÄRZTE')", '<condition attribute="name" operator="like" value="%ÄRZTE%"/>',
     ["Ärzte Zentrum", "ärzte zentrum"]),
    ("name in ('fabrikam','contoso LTD.')",
     '<condition attribute="name" operator="in"><value>fabrikam</value>'
     '<value>contoso LTD.</value></condition>', ["Fabrikam", "contoso ltd."]),
    ("name lt 'd'", '<condition attribute="name" operator="lt" value="d"/>',
     ["CONTOSO LTD", "Contoso Ltd", "contoso ltd."]),
], ids=["eq", "ne", "eq-non-ascii", "startswith-like", "contains-like-non-ascii", "in", "lt"])
def test_text_compares_case_insensitively_on_every_surface(
        app: Flask, client: FlaskClient, sales_org: OrgDb, accounts: dict[str, str],
        odata: str, fetch: str, expected: list[str]) -> None:
    token = bearer(client_token(client, *new_application_user(app)))
    org_api = client.get(ROOT + "accounts", query_string={"$filter": odata}, headers=AUTH)
    dataverse = client.get(DV_ROOT + "accounts", query_string={"$filter": odata}, headers=token)
    fetch_xml = (f'<fetch><entity name="account"><attribute name="name"/>'
                 f'<filter>{fetch}</filter></entity></fetch>')
    fetched = client.get(DV_ROOT + "accounts", query_string={"fetchXml": fetch_xml},
                         headers=token)
    assert _names(org_api) == _names(dataverse) == _names(fetched) == sorted(expected)
    assert _synced(sales_org, f"<filter>{fetch}</filter>") == sorted(expected)


def test_text_of_two_columns_compares_case_insensitively(
        client: FlaskClient, sales_org: OrgDb, accounts: dict[str, str]) -> None:
    first = next(iter(accounts))
    records.update_record(sales_org, "account", first, {"description": "CONTOSO ltd"})
    answer = client.get(ROOT + "accounts", query_string={"$filter": "name eq description"},
                        headers=AUTH)
    assert _names(answer) == ["Contoso Ltd"]

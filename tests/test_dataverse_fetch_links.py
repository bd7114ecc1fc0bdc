"""FetchXML link-entities on the Dataverse root (portal.web.odata.fetch_links).

Queries copied from Microsoft Learn, "Join tables using FetchXml" (powerapps-docs
developer/data-platform/fetchxml/join-tables.md): accounts with their primary
contact's fullname (many-to-one, inner, alias contact) and contacts with the name of
the account they are primary contact of (one-to-many, default inner, alias account);
their results are the page's: one row per joined pair, the linked column as
`contact.fullname`.
"""

from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user

PAIRS = [("Litware, Inc. (sample)", "Susanna Stubberod (sample)"),
         ("Adventure Works (sample)", "Nancy Anderson (sample)"),
         ("Fabrikam, Inc. (sample)", "Maria Campbell (sample)")]


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers; three accounts with primary contacts, one without, one lone contact."""
    for account, contact in PAIRS:
        made = records.create_record(sales_org, "contact", {"lastname": contact.split()[1],
                                                            "fullname": contact})
        records.create_record(sales_org, "account", {"name": account,
                                                     "primarycontactid": made["contactid"]})
    records.create_record(sales_org, "account", {"name": "No Contact Ltd"})
    records.create_record(sales_org, "contact", {"lastname": "Alone", "fullname": "Al Alone"})
    return bearer(client_token(client, *new_application_user(app)))


def fetch(client: FlaskClient, headers: dict[str, str], entity_set: str, xml: str) -> Any:
    answer = client.get(DV_ROOT + f"{entity_set}?fetchXml=" + quote(xml), headers=headers)
    return answer


def rows(answer: Any) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.json
    return list(answer.json["value"])


def test_learns_many_to_one_inner(client: FlaskClient, token: dict[str, str]) -> None:
    found = rows(fetch(client, token, "accounts", """<fetch>
  <entity name='account'>
    <attribute name='name' />
    <link-entity name='contact'
      from='contactid'
      to='primarycontactid'
      link-type='inner'
      alias='contact'>
      <attribute name='fullname' />
    </link-entity>
  </entity>
</fetch>"""))
    assert sorted((r["name"], r["contact.fullname"]) for r in found) == sorted(PAIRS)
    assert set(found[0]) == {"@odata.etag", "accountid", "name", "contact.fullname"}


def test_learns_one_to_many_default_inner(client: FlaskClient, token: dict[str, str]) -> None:
    found = rows(fetch(client, token, "contacts", """<fetch>
  <entity name='contact'>
    <attribute name='fullname' />
    <link-entity name='account'
     from='primarycontactid'
     to='contactid'
     alias='account'>
      <attribute name='name' />
    </link-entity>
  </entity>
</fetch>"""))
    assert sorted((r["account.name"], r["fullname"]) for r in found) == sorted(PAIRS)


def test_outer_join_filters_paging_and_annotations(client: FlaskClient,
                                                   token: dict[str, str]) -> None:
    query = """<fetch count='2' page='{page}'><entity name='account'>
      <attribute name='name' /><order attribute='name' />
      <link-entity name='contact' from='contactid' to='primarycontactid' link-type='outer'>
        <attribute name='fullname' />
        <filter><condition attribute='fullname' operator='like' value='%Anderson%' /></filter>
      </link-entity></entity></fetch>"""
    first = rows(fetch(client, token, "accounts", query.format(page=1)))
    second = rows(fetch(client, token, "accounts", query.format(page=2)))
    every = first + second
    assert [r["name"] for r in every] == sorted(a for a, _ in PAIRS + [("No Contact Ltd", "")])
    # The outer join keeps every account; only the filtered contact is joined (alias contact1).
    assert {r["name"]: r.get("contact1.fullname") for r in every} == {
        "Adventure Works (sample)": "Nancy Anderson (sample)", "Fabrikam, Inc. (sample)": None,
        "Litware, Inc. (sample)": None, "No Contact Ltd": None}
    annotated = client.get(DV_ROOT + "accounts?fetchXml=" + quote(query.format(page=1)),
                           headers={**token, "Prefer": 'odata.include-annotations="*"'}).json
    adventure = annotated["value"][0]
    assert adventure["contact1.fullname@OData.Community.Display.V1.AttributeName"] == "fullname"
    assert adventure["contact1.fullname@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert annotated["@Microsoft.Dynamics.CRM.morerecords"] is True


@pytest.mark.parametrize(("link", "status", "words"), [
    ("<link-entity name='nothing' from='x' to='primarycontactid' />", 404, "no such entity"),
    ("<link-entity name='contact' from='nothing' to='primarycontactid' />", 400,
     "from names an attribute of contact"),
    ("<link-entity name='contact' from='contactid' to='name' />", 400, "do not compare"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid' link-type='any' />",
     501, "link-type='any' is not served"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid'><link-entity "
     "name='account' from='accountid' to='parentcustomerid' /></link-entity>", 501,
     "nested link-entity"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid'><order "
     "attribute='fullname' /></link-entity>", 501, "<order> in a link-entity"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid'><attribute "
     "name='nothing' /></link-entity>", 400, "has no property 'nothing'"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid' alias='c' />"
     "<link-entity name='contact' from='contactid' to='primarycontactid' alias='c' />", 400,
     "same alias"),
    ("<link-entity name='contact' from='contactid' to='primarycontactid' />" * 16, 400,
     "Number of link entities in query exceeded maximum limit."),
])
def test_bad_link_entities_say_why(client: FlaskClient, token: dict[str, str], link: str,
                                   status: int, words: str) -> None:
    answer = fetch(client, token, "accounts", f"<fetch><entity name='account'><attribute "
                                              f"name='name' />{link}</entity></fetch>")
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]

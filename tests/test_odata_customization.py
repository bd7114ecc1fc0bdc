"""Customization through the API: entities and attributes added, changed, removed."""

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.db import get_db
from portal.orgs import records, registry
from portal.orgs.store import OrgDb
from tests.odata_helpers import AUTH, ROOT, basic

C = ROOT + "$customization/entities"


def send(client: FlaskClient, method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> Any:
    return client.open(url, method=method, json=body, headers=headers or AUTH)


def test_customization_adds_an_entity_seen_at_once_in_metadata(client: FlaskClient,
                                                               sales_org: OrgDb) -> None:
    answer = send(client, "POST", C, {
        "logicalname": "cf_project", "displayname": "Project", "primarynameattribute": "name",
        "attributes": [{"logicalname": "name", "type": "string", "maxlength": 80},
                       {"logicalname": "accountid", "type": "lookup", "targets": ["account"]}]})
    assert answer.status_code == 201, answer.data
    assert answer.json["entitysetname"] == "cf_projects"
    assert b'EntityType Name="cf_project"' in client.get(ROOT + "$metadata", headers=AUTH).data
    definition = client.get(ROOT + "EntityDefinitions(LogicalName='cf_project')",
                            headers=AUTH).json
    assert definition["EntitySetName"] == "cf_projects"
    created = send(client, "POST", ROOT + "cf_projects", {"name": "Apollo"})
    assert created.status_code == 201


def test_customization_changes_and_removes_attributes(client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    added = send(client, "POST", C + "/account/attributes",
                 {"logicalname": "cf_rating", "type": "integer", "displayname": "Rating"})
    assert added.status_code == 201
    widened = send(client, "PATCH", C + "/account/attributes/cf_rating", {"type": "bigint"})
    assert widened.status_code == 200 and widened.json["type"] == "bigint"
    definition = client.get(
        ROOT + "EntityDefinitions(LogicalName='account')?$expand=Attributes", headers=AUTH).json
    assert {"cf_rating": "BigInt"}.items() <= {
        a["LogicalName"]: a["AttributeType"] for a in definition["Attributes"]}.items()
    assert send(client, "DELETE", C + "/account/attributes/cf_rating").status_code == 204
    assert b'"cf_rating"' not in client.get(ROOT + "$metadata", headers=AUTH).data


def test_customization_updates_an_entity_label(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = send(client, "PATCH", C + "/account", {"displayname": "Company",
                                                    "labels": {"1033": "Company"}})
    assert answer.status_code == 200
    assert client.get(ROOT + "EntityDefinitions(LogicalName='account')", headers=AUTH).json[
        "DisplayName"]["UserLocalizedLabel"]["Label"] == "Company"


def test_customization_refuses_changes_that_lose_data(client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "A" * 150})
    answer = send(client, "PATCH", C + "/account/attributes/name", {"maxlength": 10})
    assert answer.status_code == 409
    assert answer.json["error"]["code"] == "MetadataChangeRefused"
    assert sales_org.entity("account").attribute("name").maxlength == 160


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "", {"logicalname": "Bad Name"}, 400),
    ("POST", "", {"logicalname": "account"}, 409),
    ("POST", "/account/attributes", {"logicalname": "x", "type": "blob"}, 400),
    ("PATCH", "/account", {"entitysetname": "firms"}, 400),
    ("PATCH", "/account/attributes/nothing", {"type": "string"}, 404),
    ("DELETE", "/nothing", None, 404),
    ("DELETE", "/account/attributes/createdon", None, 409),
    ("PUT", "/account", {}, 405),
])
def test_customization_refuses_bad_changes(client: FlaskClient, sales_org: OrgDb, method: str,
                                           path: str, body: Any, status: int) -> None:
    answer = send(client, method, C + path, body)
    assert answer.status_code == status, answer.data
    assert answer.json["error"]["message"]


def test_customization_is_for_org_admins_only(app: Flask, client: FlaskClient,
                                              sales_org: OrgDb) -> None:
    with app.app_context():
        db = get_db()
        org_id = registry.get_org(db, "sales")["id"]
        db.table("org_users").insert({"org_id": org_id, "email": "user@example.com",
                                      "password_hash": "x", "is_admin": 0, "created": "now"})
        from werkzeug.security import generate_password_hash

        db.execute("UPDATE org_users SET password_hash = ? WHERE email = 'user@example.com'",
                   [generate_password_hash("user-pass-1")])
    user = basic("user@example.com", "user-pass-1")
    assert client.get(ROOT + "accounts", headers=user).status_code == 200
    answer = send(client, "DELETE", C + "/account", headers=user)
    assert answer.status_code == 403
    assert "account" in sales_org.entities()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "", {"logicalname": "cf_project"}),
    ("PATCH", "/account", {"displayname": "Company"}),
    ("DELETE", "/lead", None),
    ("POST", "/account/attributes", {"logicalname": "rating", "type": "integer"}),
    ("DELETE", "/account/attributes/telephone1", None),
])
def test_customization_of_a_sync_client_org_is_refused_with_the_reason(
        client: FlaskClient, sales_org: OrgDb, method: str, path: str, body: Any) -> None:
    from portal.orgs import transactions

    transactions.set_client(sales_org, True)  # what the connect job does to a client org
    before = {n: [a.logicalname for a in e.attributes] for n, e in sales_org.entities().items()}
    answer = send(client, method, C + path, body)
    assert answer.status_code == 409
    assert "is the client of a connection" in answer.json["error"]["message"]
    assert {n: [a.logicalname for a in e.attributes]
            for n, e in sales_org.entities().items()} == before
    assert send(client, "GET", C + "/account").status_code == 200  # reading stays allowed

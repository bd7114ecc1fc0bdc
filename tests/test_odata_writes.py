"""Writes through the Org API: POST, PATCH as upsert, DELETE, ETags, and refused bodies."""

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.changes import changes_since
from portal.orgs.store import OrgDb, current_version
from tests.odata_helpers import AUTH, ROOT

ID = "6a9f3c1e-0000-4000-8000-000000000001"


def send(client: FlaskClient, method: str, path: str, body: Any = None,
         **headers: str) -> Any:
    return client.open(ROOT + path, method=method, json=body,
                       headers={**AUTH, **{k.replace("_", "-"): v for k, v in headers.items()}})


def test_writes_post_creates_with_the_clients_own_id(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    answer = send(client, "POST", "accounts", {"accountid": ID.upper(), "name": "Contoso",
                                               "@odata.type": "#Microsoft.Dynamics.CRM.account"})
    assert answer.status_code == 201
    assert answer.headers["OData-EntityId"].endswith(f"/odata/v4/sales/accounts({ID})")
    assert answer.headers["Location"] == answer.headers["OData-EntityId"]
    assert answer.json["accountid"] == ID and answer.json["name"] == "Contoso"
    assert answer.headers["ETag"] == answer.json["@odata.etag"] == \
        f'W/"{answer.json["versionnumber"]}"'
    again = send(client, "POST", "accounts", {"accountid": ID, "name": "Twice"})
    assert again.status_code == 409 and "exists already" in again.json["error"]["message"]
    assert records.get_record(sales_org, "account", ID)["name"] == "Contoso"


def test_writes_post_with_return_minimal_answers_204(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    answer = send(client, "POST", "accounts", {"name": "Quiet"}, Prefer="return=minimal")
    assert answer.status_code == 204 and answer.data == b""
    assert answer.headers["Preference-Applied"] == "return=minimal"
    new_id = answer.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert records.get_record(sales_org, "account", new_id)["name"] == "Quiet"


def test_writes_post_binds_lookups_the_dataverse_way(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "Parent"}, record_id=ID)
    answer = send(client, "POST", "contacts", {
        "lastname": "Doe", "parentcustomerid_account@odata.bind": f"/accounts({ID})"})
    assert answer.status_code == 201, answer.data
    assert answer.json["parentcustomerid"] == ID
    plain = send(client, "POST", "contacts", {"lastname": "Roe", "parentcustomerid": ID})
    assert plain.json["parentcustomerid"] == ID


def test_writes_patch_upserts_and_honours_preconditions(client: FlaskClient,
                                                        sales_org: OrgDb) -> None:
    created = send(client, "PATCH", f"accounts({ID})", {"name": "Made by PATCH"})
    assert created.status_code == 201
    etag = created.headers["ETag"]
    updated = send(client, "PATCH", f"accounts({ID})", {"name": "Renamed"}, If_Match=etag)
    assert updated.status_code == 204 and updated.headers["ETag"] != etag
    stale = send(client, "PATCH", f"accounts({ID})", {"name": "Stale"}, If_Match=etag)
    assert stale.status_code == 412
    only_create = send(client, "PATCH", f"accounts({ID})", {"name": "X"}, If_None_Match="*")
    assert only_create.status_code == 412
    other = str(uuid.uuid4())
    only_update = send(client, "PATCH", f"accounts({other})", {"name": "X"}, If_Match="*")
    assert only_update.status_code == 404
    assert records.get_record(sales_org, "account", other) is None
    assert records.get_record(sales_org, "account", ID)["name"] == "Renamed"
    shown = send(client, "PATCH", f"accounts({ID})", {"revenue": 12.5},
                 Prefer="return=representation")
    assert shown.status_code == 200 and shown.json["revenue"] == 12.5


def test_writes_delete_leaves_a_tombstone(client: FlaskClient, sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "Doomed"}, record_id=ID)
    assert send(client, "DELETE", f"accounts({ID})", If_Match='W/"999"').status_code == 412
    assert send(client, "DELETE", f"accounts({ID})").status_code == 204
    assert send(client, "DELETE", f"accounts({ID})").status_code == 404
    page = changes_since(sales_org, "account", 0)
    assert [(c.id, c.deleted) for c in page.changes] == [(ID, True)]


@pytest.mark.parametrize("body, field, words", [
    ({"name": "x" * 161}, "name", "at most 160"),
    ({"name": "ok", "numberofemployees": "many"}, "numberofemployees", "whole number"),
    ({"name": "ok", "industrycode": 99}, "industrycode", "not one of the options"),
    ({"name": "ok", "bogus": 1}, "bogus", "does not exist"),
    ({"accountnumber": "no name"}, "name", "required"),
    ({"name": "ok", "parentaccountid": str(uuid.UUID(int=5))}, "parentaccountid", "no account"),
    ({"name": "ok", "parentaccountid_account@odata.bind": "/contacts(1)"},
     "parentaccountid_account", "must point to accounts"),
    ({"name": "ok", "accountid": "nope"}, "accountid", "not a GUID"),
])
def test_writes_refuse_invalid_values_naming_the_attribute(
        client: FlaskClient, sales_org: OrgDb, body: dict[str, Any], field: str,
        words: str) -> None:
    before = current_version(sales_org.db)
    answer = send(client, "POST", "accounts", body)
    assert answer.status_code == 400, answer.data
    assert answer.json["error"]["target"] == field
    assert words in answer.json["error"]["message"]
    assert current_version(sales_org.db) == before


@pytest.mark.parametrize("data, content_type, status", [
    (b"name=x", "application/x-www-form-urlencoded", 415),
    (b'{"name": "x"}', "text/plain", 415),
    (b'{"name": ', "application/json", 400),
    (b'["a list"]', "application/json", 400),
    (b"", "application/json", 400),
])
def test_writes_refuse_bodies_that_are_not_json_objects(client: FlaskClient, sales_org: OrgDb,
                                                        data: bytes, content_type: str,
                                                        status: int) -> None:
    before = current_version(sales_org.db)
    answer = client.post(ROOT + "accounts", data=data,
                         headers={**AUTH, "Content-Type": content_type})
    assert answer.status_code == status
    assert answer.json["error"]["message"]
    assert current_version(sales_org.db) == before


def test_writes_refuse_oversize_bodies_with_413(app: Flask, client: FlaskClient,
                                               sales_org: OrgDb) -> None:
    app.config["API_MAX_CONTENT_LENGTH"] = 1000
    answer = client.post(ROOT + "accounts", data=b'{"name": "' + b"x" * 2000 + b'"}',
                         headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.content_type.startswith("application/json")
    assert answer.json["error"]["code"] == "RequestEntityTooLarge"
    assert current_version(sales_org.db) == 0


@pytest.mark.parametrize("method, path, status", [
    ("PUT", f"accounts({ID})", 405),
    ("DELETE", "accounts", 405),
    ("POST", "$metadata", 405),
    ("PATCH", "accounts(nope)", 400),
])
def test_writes_refuse_wrong_methods_and_keys(client: FlaskClient, sales_org: OrgDb,
                                              method: str, path: str, status: int) -> None:
    answer = send(client, method, path, {"name": "x"})
    assert answer.status_code == status
    assert answer.json["error"]["message"]


def test_writes_never_answer_with_an_html_page(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = client.get(ROOT + "accounts(", headers={**AUTH, "Accept": "text/html"})
    assert answer.status_code in (400, 404)
    assert answer.content_type.startswith("application/json")

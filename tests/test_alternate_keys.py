"""Alternate keys: EntityDefinitions(...)/Keys and records addressed by them.

Requests as Microsoft's SDK (powerplatform-dataverse-client 1.1.0) sends them for
`tables.create_alternate_key` / `get_alternate_keys` / `delete_alternate_key`
(data/_odata.py: POST ...Keys with SchemaName, KeyAttributes, DisplayName) and the
record URLs of Microsoft Learn's "Use an alternate key to reference a record"
(webapi/use-alternate-key-reference-record.md): `accounts(accountnumber='ABC123')`
and a composite `contacts(firstname='Joe',emailaddress1='joe@contoso.com')`.
"""

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user
from tests.odata_helpers import AUTH, ROOT

ACCOUNT_KEYS = "EntityDefinitions(LogicalName='account')/Keys"
CONTACT_KEYS = "EntityDefinitions(LogicalName='contact')/Keys"


def add_key(client: FlaskClient, path: str, name: str, attributes: list[str],
            headers: dict[str, str] = AUTH, root: str = ROOT) -> Any:
    return client.post(root + path, headers=headers, json={
        "SchemaName": name, "KeyAttributes": attributes,
        "DisplayName": {"LocalizedLabels": [{"Label": name, "LanguageCode": 1033}]}})


@pytest.fixture
def token(app: Flask, client: FlaskClient, sales_org: OrgDb) -> dict[str, str]:
    """Bearer headers; accounts ABC123 and XYZ, a key on accountnumber, one on contacts."""
    records.create_record(sales_org, "account", {"name": "Contoso", "accountnumber": "ABC123"})
    records.create_record(sales_org, "account", {"name": "Fabrikam", "accountnumber": "XYZ"})
    assert add_key(client, ACCOUNT_KEYS, "new_AccountNumberKey", ["accountnumber"]
                   ).status_code == 204
    assert add_key(client, CONTACT_KEYS, "new_NameEmailKey", ["firstname", "emailaddress1"]
                   ).status_code == 204
    return bearer(client_token(client, *new_application_user(app)))


def test_keys_are_listed_as_entity_key_metadata(client: FlaskClient, sales_org: OrgDb,
                                                token: dict[str, str]) -> None:
    listed = client.get(DV_ROOT + ACCOUNT_KEYS, headers=token).json["value"]
    assert [(k["SchemaName"], k["KeyAttributes"], k["EntityKeyIndexStatus"]) for k in listed] \
        == [("new_AccountNumberKey", ["accountnumber"], "Active")]
    one = client.get(DV_ROOT + ACCOUNT_KEYS + f"({listed[0]['MetadataId']})", headers=token)
    assert one.status_code == 200 and one.json["LogicalName"] == "new_accountnumberkey"
    # The unique index keeps the values unique, through every write path.
    twice = client.post(ROOT + "accounts", headers=AUTH, json={"name": "Again",
                                                               "accountnumber": "XYZ"})
    assert twice.status_code == 409, twice.json
    assert "matching key values already exists" in twice.json["error"]["message"]
    assert sales_org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 2


def test_records_by_alternate_key(client: FlaskClient, sales_org: OrgDb,
                                  token: dict[str, str]) -> None:
    found = client.get(DV_ROOT + "accounts(accountnumber='ABC123')?$select=name", headers=token)
    assert found.status_code == 200 and found.json["name"] == "Contoso"
    updated = client.patch(DV_ROOT + "accounts(accountnumber='ABC123')", headers=token,
                           json={"name": "Contoso Ltd"})
    assert updated.status_code == 204
    assert records.get_record(sales_org, "account", found.json["accountid"])["name"] == \
        "Contoso Ltd"  # type: ignore[index]
    # An upsert by a key no record has creates one with the key's values.
    created = client.patch(DV_ROOT + "contacts(firstname='Joe',emailaddress1='joe@contoso.com')",
                           headers=token, json={"lastname": "Smith"})
    assert created.status_code == 204, created.json
    row = sales_org.db.execute("SELECT firstname, emailaddress1, lastname FROM contact"
                               ).fetchone()
    assert tuple(row) == ("Joe", "joe@contoso.com", "Smith")
    again = client.patch(DV_ROOT + "contacts(emailaddress1='joe@contoso.com',firstname='Joe')",
                         headers=token, json={"lastname": "Smyth"})
    assert again.status_code == 204
    assert sales_org.db.execute("SELECT count(*), max(lastname) FROM contact").fetchone() == \
        (1, "Smyth")
    gone = client.delete(DV_ROOT + "accounts(accountnumber='XYZ')", headers=token)
    assert gone.status_code == 204
    missing = client.get(DV_ROOT + "accounts(accountnumber='XYZ')", headers=token)
    assert missing.status_code == 404 and missing.json["error"]["code"] == "0x80040217"
    only_update = client.patch(DV_ROOT + "accounts(accountnumber='NEW')", json={"name": "N"},
                               headers={**token, "If-Match": "*"})
    assert only_update.status_code == 404
    assert sales_org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 1


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("GET", "accounts(name='Contoso')", None, 400, "name is not an alternate key of account"),
    ("GET", "accounts(nothing='x')", None, 400, "has no attribute 'nothing'"),
    ("GET", "contacts(firstname='Joe')", None, 400, "not an alternate key"),
    ("POST", ACCOUNT_KEYS, {"SchemaName": "k", "KeyAttributes": ["nothing"]}, 400,
     "cannot be part of a key"),
    ("POST", ACCOUNT_KEYS, {"SchemaName": "k", "KeyAttributes": ["description"]}, 400,
     "cannot be part of a key"),
    ("POST", ACCOUNT_KEYS, {"SchemaName": "k", "KeyAttributes": []}, 400, "1 to 16"),
    ("POST", ACCOUNT_KEYS, {"SchemaName": "new_accountnumberkey",
                            "KeyAttributes": ["name"]}, 409, "exists already"),
    ("POST", ACCOUNT_KEYS, {"SchemaName": "k"}, 400, "needs KeyAttributes"),
    ("DELETE", "EntityDefinitions(LogicalName='account')/Attributes(LogicalName="
               "'accountnumber')", None, 409, "part of the key new_AccountNumberKey"),
    ("DELETE", ACCOUNT_KEYS + "(LogicalName='nothing')", None, 404, "Could not find"),
])
def test_bad_keys_are_refused_and_change_nothing(
        client: FlaskClient, sales_org: OrgDb, token: dict[str, str], method: str, path: str,
        body: Any, status: int, words: str) -> None:
    before = (sales_org.entities(), sales_org.db.execute("SELECT * FROM _keys").fetchall())
    answer = client.open(DV_ROOT + path, method=method, json=body, headers=token)
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]
    assert (sales_org.entities(), sales_org.db.execute("SELECT * FROM _keys").fetchall()) == \
        before


def test_a_key_over_shared_values_is_refused(client: FlaskClient, sales_org: OrgDb,
                                             token: dict[str, str]) -> None:
    records.create_record(sales_org, "account", {"name": "Contoso"})
    answer = add_key(client, ACCOUNT_KEYS, "new_NameKey", ["name"], token, DV_ROOT)
    assert answer.status_code == 409
    assert "shared by several account records" in answer.json["error"]["message"]
    assert len(client.get(DV_ROOT + ACCOUNT_KEYS, headers=token).json["value"]) == 1
    # Removing the key drops its index: the values may repeat again.
    key_id = client.get(DV_ROOT + ACCOUNT_KEYS, headers=token).json["value"][0]["MetadataId"]
    assert client.delete(DV_ROOT + ACCOUNT_KEYS + f"({key_id})", headers=token
                         ).status_code == 204
    records.create_record(sales_org, "account", {"name": "Copy", "accountnumber": "XYZ"})

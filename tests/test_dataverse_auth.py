"""The Dataverse root's OAuth 2.0: application users, the token endpoint, Bearer challenges.

Shapes are compared with payloads copied from Microsoft Learn into
tests/fixtures/dataverse/:
* entra-client-credentials-token.response.json, entra-token-error.response.json -
  entra-docs `docs/identity-platform/v2-oauth2-client-creds-grant-flow.md`
  ("Successful response", "Error response");
* 401-bearer-challenge.http - dynamics-365-customer-engagement
  `ce/developer/walkthrough-multi-tenant-server-server-authentication.md`;
* whoami.response.json - powerapps-docs `developer/data-platform/webapi/use-web-api-functions.md`
  (WhoAmI function).
"""

import re
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.db import get_db
from portal.errors import NotFound
from portal.orgs import access_tokens, application_users, registry
from portal.orgs.store import OrgDb
from portal.web.odata.messages import ERROR_CODES, ErrorKind
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir
from tests.dataverse_helpers import (
    DV_ROOT,
    FIXTURES,
    SCOPE,
    bearer,
    client_token,
    fixture,
    new_application_user,
)
from tests.odata_helpers import AUTH

TOKEN_URL = "/dataverse/sales/oauth2/v2.0/token"
PUBLIC_CLIENT = "51f81489-12ee-4a9e-aaae-a2591f45987d"  # Microsoft's Dataverse samples


@pytest.fixture
def other_org(app: Flask, sales_org: OrgDb) -> str:
    """A second org, `other`, with its own admin."""
    with app.app_context():
        registry.create_org(get_db(), orgs_dir(app), "other", email="boss@other.example",
                            password="other-pass-1", template="sales")
    return "other"


def test_application_user_secret_is_shown_once_and_stored_hashed(app: Flask,
                                                                 sales_org: OrgDb) -> None:
    with app.app_context():
        row, secret = application_users.create_application_user(get_db(), "sales", "ETL")
        stored = get_db().execute("SELECT secret_hash FROM application_users").fetchone()[0]
        listed = application_users.list_application_users(get_db(), "sales")
    assert secret not in stored and stored == application_users.secret_hash(secret)
    assert "secret_hash" not in row and [u["client_id"] for u in listed] == [row["client_id"]]
    assert all("secret_hash" not in u for u in listed)


def test_application_user_bad_inputs(app: Flask, sales_org: OrgDb) -> None:
    with app.app_context():
        db = get_db()
        with pytest.raises(Exception, match="name"):
            application_users.create_application_user(db, "sales", " ")
        with pytest.raises(NotFound):
            application_users.create_application_user(db, "no-such-org", "ETL")
        with pytest.raises(NotFound):
            application_users.revoke_application_user(db, "sales", "not-a-client")
        assert application_users.list_application_users(db, "sales") == []


def test_token_by_client_credentials_answers_as_entra(app: Flask, client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    client_id, secret = new_application_user(app)
    answer = client.post(TOKEN_URL, data={"grant_type": "client_credentials",
                                          "client_id": client_id, "client_secret": secret,
                                          "scope": SCOPE})
    assert answer.status_code == 200
    documented = fixture("auth/entra-client-credentials-token.response.json")
    assert set(documented) <= set(answer.json)
    assert answer.json["token_type"] == "Bearer"
    assert answer.json["expires_in"] == app.config["DATAVERSE_TOKEN_LIFETIME_S"]
    assert answer.headers["Cache-Control"] == "no-store"
    who = client.get(DV_ROOT + "WhoAmI", headers=bearer(answer.json["access_token"]))
    assert who.status_code == 200


def test_token_by_client_secret_basic(app: Flask, client: FlaskClient, sales_org: OrgDb) -> None:
    client_id, secret = new_application_user(app)
    answer = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "scope": SCOPE},
                         auth=(client_id, secret))
    assert answer.status_code == 200


def test_token_by_password_for_an_org_user(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = client.post(TOKEN_URL, data={
        "grant_type": "password", "client_id": PUBLIC_CLIENT, "username": ADMIN_EMAIL,
        "password": ADMIN_PASSWORD, "scope": SCOPE + " openid profile offline_access"})
    assert answer.status_code == 200
    assert answer.json["scope"] == SCOPE
    assert client.get(DV_ROOT + "accounts", headers=bearer(answer.json["access_token"])
                      ).status_code == 200


def entra_shaped(body: dict[str, object], error: str, code: int) -> None:
    """An error body with exactly the keys Entra's documented error response has."""
    assert set(body) == set(fixture("auth/entra-token-error.response.json"))
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert str(body["error_description"]).startswith(f"AADSTS{code}: ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", str(body["timestamp"]))


@pytest.mark.parametrize("form, status, error, code", [
    ({"grant_type": "client_credentials", "client_secret": "wrong"}, 401, "invalid_client",
     7000215),
    ({"grant_type": "client_credentials", "client_id": "11111111-2222-3333-4444-555555555555",
      "client_secret": "x"}, 401, "invalid_client", 7000215),
    ({"grant_type": "password", "client_id": PUBLIC_CLIENT, "username": ADMIN_EMAIL,
      "password": "wrong-pass-1"}, 400, "invalid_grant", 50126),
    ({"grant_type": "password", "client_id": PUBLIC_CLIENT, "username": "nobody@example.com",
      "password": ADMIN_PASSWORD}, 400, "invalid_grant", 50126),
    ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type", 70003),
    ({"client_secret": "x"}, 400, "invalid_request", 900144),
    ({"grant_type": "client_credentials", "client_secret": "x", "scope": None}, 400,
     "invalid_request", 900144),
    ({"grant_type": "client_credentials", "client_secret": "x",
      "scope": "http://localhost/dataverse/other/.default"}, 400, "invalid_scope", 70011),
    ({"grant_type": "client_credentials", "client_secret": "x",
      "scope": "https://foo.microsoft.com/.default"}, 400, "invalid_scope", 70011),
    ({"grant_type": "password", "client_id": None, "username": ADMIN_EMAIL,
      "password": ADMIN_PASSWORD}, 400,
     "invalid_request", 900144),
], ids=["wrong-secret", "unknown-client", "wrong-password", "unknown-user", "grant-type",
        "no-grant-type", "no-scope", "other-orgs-scope", "foreign-scope", "no-client-id"])
def test_token_endpoint_refusals_have_entras_shape(
        app: Flask, client: FlaskClient, sales_org: OrgDb, form: dict[str, str | None],
        status: int,
        error: str, code: int) -> None:
    client_id, _ = new_application_user(app)
    data = {"client_id": client_id, "scope": SCOPE, **form}
    answer = client.post(TOKEN_URL, data={k: v for k, v in data.items() if v is not None})
    assert answer.status_code == status
    entra_shaped(answer.json, error, code)
    assert "access_token" not in answer.json


def test_token_endpoint_of_unknown_org_answers_like_a_wrong_secret(
        app: Flask, client: FlaskClient, sales_org: OrgDb) -> None:
    client_id, secret = new_application_user(app)
    unknown = client.post("/dataverse/no-such-org/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": "http://localhost/dataverse/no-such-org/.default"})
    assert unknown.status_code == 401 and unknown.json["error"] == "invalid_client"


def challenge_parts(header: str) -> dict[str, str]:
    """The parameters of a Bearer challenge."""
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="?([^",]*)"?', header[len("Bearer "):]))


def test_request_without_token_gets_the_bearer_challenge_dataverse_gives(
        client: FlaskClient, sales_org: OrgDb) -> None:
    documented = (FIXTURES / "auth/401-bearer-challenge.http").read_text()
    documented_header = re.search(r"^WWW-Authenticate: (.*)$", documented, re.M)
    assert documented_header is not None
    answer = client.get(DV_ROOT + "accounts")
    assert answer.status_code == 401
    header = answer.headers["WWW-Authenticate"]
    assert set(challenge_parts(header)) == set(challenge_parts(documented_header.group(1)))
    assert challenge_parts(header) == {
        "authorization_uri": "http://localhost/dataverse/sales/oauth2/authorize",
        "resource_id": "http://localhost/dataverse/sales/"}
    assert answer.json["error"]["code"] == ERROR_CODES[ErrorKind.UNAUTHORIZED].dataverse


@pytest.mark.parametrize("headers", [AUTH, {"Authorization": "Bearer not-a-token"}],
                         ids=["basic", "garbage"])
def test_dataverse_root_takes_only_oauth_tokens(client: FlaskClient, sales_org: OrgDb,
                                                headers: dict[str, str]) -> None:
    answer = client.get(DV_ROOT + "accounts", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")


def test_token_of_one_org_is_refused_on_another(app: Flask, client: FlaskClient,
                                                other_org: str) -> None:
    token = client_token(client, *new_application_user(app))
    answer = client.get("/dataverse/other/api/data/v9.2/accounts", headers=bearer(token))
    assert answer.status_code == 401
    assert 'error=invalid_token' in answer.headers["WWW-Authenticate"]
    assert "another organization" in answer.json["error"]["message"]
    # ... and an OAuth token is no credential of the Org API either.
    assert client.get("/odata/v4/sales/accounts", headers=bearer(token)).status_code == 401


def test_expired_token_is_refused_with_dataverses_401(app: Flask, client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    client_id, _ = new_application_user(app)
    token = access_tokens.issue_token(app.config["SECRET_KEY"], "sales",
                                      access_tokens.Principal.APPLICATION, client_id,
                                      lifetime_s=60, now=time.time() - 3600)
    answer = client.get(DV_ROOT + "accounts", headers=bearer(token))
    assert answer.status_code == 401
    assert answer.json == {"error": {"code": ERROR_CODES[ErrorKind.UNAUTHORIZED].dataverse,
                                     "message": "the access token has expired"}}
    parts = challenge_parts(answer.headers["WWW-Authenticate"])
    assert parts["error"] == "invalid_token"
    assert parts["authorization_uri"] == "http://localhost/dataverse/sales/oauth2/authorize"


def test_revoked_application_user_loses_its_tokens_at_once(app: Flask, client: FlaskClient,
                                                           sales_org: OrgDb) -> None:
    client_id, secret = new_application_user(app)
    token = client_token(client, client_id, secret)
    assert client.get(DV_ROOT + "accounts", headers=bearer(token)).status_code == 200
    with app.app_context():
        application_users.revoke_application_user(get_db(), "sales", client_id)
    assert client.get(DV_ROOT + "accounts", headers=bearer(token)).status_code == 401
    again = client.post(TOKEN_URL, data={"grant_type": "client_credentials",
                                         "client_id": client_id, "client_secret": secret,
                                         "scope": SCOPE})
    assert again.status_code == 401


def test_whoami_answers_as_dataverse(app: Flask, client: FlaskClient, sales_org: OrgDb) -> None:
    token = client_token(client, *new_application_user(app))
    answer = client.get(DV_ROOT + "WhoAmI()", headers=bearer(token))
    documented = fixture("whoami.response.json")
    assert answer.status_code == 200
    assert set(answer.json) == set(documented)
    assert answer.json["@odata.context"] == \
        "http://localhost" + DV_ROOT + "$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
    for key in ("UserId", "BusinessUnitId", "OrganizationId"):
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                            answer.json[key])
    # Org API: no WhoAmI (it is a Dataverse function).
    assert client.get("/odata/v4/sales/WhoAmI()", headers=AUTH).status_code == 404


def test_openid_configuration_names_the_token_endpoint(client: FlaskClient) -> None:
    answer = client.get("/dataverse/sales/v2.0/.well-known/openid-configuration")
    assert answer.status_code == 200
    assert answer.json["token_endpoint"] == "http://localhost/dataverse/sales/oauth2/v2.0/token"
    assert answer.json["authorization_endpoint"].startswith("http://localhost/dataverse/sales/")
    assert client.get("/dataverse/NOT_A_NAME/v2.0/.well-known/openid-configuration"
                      ).status_code == 400

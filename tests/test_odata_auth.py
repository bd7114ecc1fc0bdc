"""Org API authentication: Basic with an org user, Bearer API tokens, nothing leaks across orgs."""

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.db import get_db
from portal.orgs import registry, tokens
from portal.orgs.store import OrgDb
from tests.conftest import ADMIN_EMAIL, orgs_dir
from tests.odata_helpers import AUTH, ROOT, basic


@pytest.fixture
def other_org(app: Flask, sales_org: OrgDb) -> str:
    """A second org, `other`, with its own admin."""
    with app.app_context():
        registry.create_org(get_db(), orgs_dir(app), "other", email="boss@other.example",
                            password="other-pass-1", template="sales")
    return "other"


def test_auth_basic_reads_the_service_document(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = client.get(ROOT, headers=AUTH)
    assert answer.status_code == 200
    assert answer.headers["OData-Version"] == "4.0"
    assert {"name": "accounts", "kind": "EntitySet", "url": "accounts"} in answer.json["value"]


@pytest.mark.parametrize("headers", [
    {},
    basic(password="wrong-pass-1"),
    basic(email="nobody@example.com"),
    basic("boss@other.example", "other-pass-1"),  # a user of another org
    {"Authorization": "Bearer crm_not-a-token"},
    {"Authorization": "Digest username=x"},
], ids=["none", "wrong-password", "unknown-user", "other-orgs-user", "bad-token", "digest"])
def test_auth_refuses_bad_credentials_with_401(client: FlaskClient, other_org: str,
                                               headers: dict[str, str]) -> None:
    answer = client.get(ROOT + "accounts", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert answer.json["error"]["code"] == "Unauthorized"


def test_auth_unknown_org_and_wrong_password_answer_identically(
        client: FlaskClient, other_org: str) -> None:
    unknown = client.get("/odata/v4/no-such-org/accounts", headers=AUTH)
    wrong = client.get("/odata/v4/other/accounts", headers=AUTH)  # sales' admin on `other`
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.data == wrong.data
    assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]


def test_auth_bearer_token_works_until_revoked(app: Flask, client: FlaskClient,
                                               other_org: str) -> None:
    with app.app_context():
        token_id, token = tokens.create_token(get_db(), "sales", ADMIN_EMAIL)
        stored = get_db().execute("SELECT token_hash FROM api_tokens").fetchone()[0]
    assert token not in stored  # only a hash is kept
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get(ROOT + "accounts", headers=bearer).status_code == 200
    assert client.get("/odata/v4/other/accounts", headers=bearer).status_code == 401
    with app.app_context():
        tokens.revoke_token(get_db(), "sales", token_id)
    assert client.get(ROOT + "accounts", headers=bearer).status_code == 401


def test_auth_cli_creates_lists_and_revokes_tokens(app: Flask, client: FlaskClient,
                                                   sales_org: OrgDb) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["tokens", "create", "sales", "--email", ADMIN_EMAIL])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert client.get(ROOT, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    listed = runner.invoke(args=["tokens", "list", "sales"])
    assert ADMIN_EMAIL in listed.output and "active" in listed.output and token not in \
        listed.output
    revoked = runner.invoke(args=["tokens", "revoke", "sales", "1"])
    assert revoked.exit_code == 0, revoked.output
    assert client.get(ROOT, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    again = runner.invoke(args=["tokens", "revoke", "sales", "1"])
    assert again.exit_code == 1 and "no active token" in again.output


def test_auth_cli_refuses_a_token_for_an_unknown_user(app: Flask, sales_org: OrgDb) -> None:
    result = app.test_cli_runner().invoke(
        args=["tokens", "create", "sales", "--email", "ghost@example.com"])
    assert result.exit_code == 1 and "no user" in result.output


def test_auth_password_checks_are_cached(app: Flask, client: FlaskClient, sales_org: OrgDb,
                                         tmp_path: Path) -> None:
    import time

    client.get(ROOT, headers=AUTH)  # first check pays the hash
    start = time.perf_counter()
    for _ in range(20):
        assert client.get(ROOT, headers=AUTH).status_code == 200
    # 20 scrypt checks would take over a second; cached ones take milliseconds.
    assert time.perf_counter() - start < 1.0

"""Small helpers shared by the Dataverse root tests."""

import json
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from portal.db import get_db
from portal.orgs import application_users

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dataverse"
DV_ROOT = "/dataverse/sales/api/data/v9.2/"
SCOPE = "http://localhost/dataverse/sales/.default"  # the test client's host


def fixture(name: str) -> Any:
    """A vendor payload copied into tests/fixtures/dataverse (JSON)."""
    return json.loads((FIXTURES / name).read_text())


def new_application_user(app: Flask, org: str = "sales", *, admin: bool = True
                         ) -> tuple[str, str]:
    """(client id, secret) of a new application user of an org."""
    with app.app_context():
        row, secret = application_users.create_application_user(get_db(), org, "SDK tests",
                                                                 admin=admin)
    return row["client_id"], secret


def client_token(client: FlaskClient, client_id: str, secret: str, org: str = "sales",
                 scope: str | None = None) -> str:
    """An access token by client credentials from the org's token endpoint."""
    answer = client.post(f"/dataverse/{org}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": scope or f"http://localhost/dataverse/{org}/.default"})
    assert answer.status_code == 200, answer.json
    return str(answer.json["access_token"])


def bearer(token: str) -> dict[str, str]:
    """Headers with a Bearer token."""
    return {"Authorization": f"Bearer {token}"}

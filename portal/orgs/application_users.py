"""Application users of an org: OAuth 2.0 clients (client id + secret), as Dataverse has them.

A program that talks to an org's Dataverse root (Microsoft's SDK, MSAL's
client credentials flow) signs in as an application user. The secret is
shown once, at creation; only its SHA-256 is stored (it is long and random,
so a slow password hash would only add latency, as for API tokens).
"""

import hashlib
import hmac
import secrets
import uuid
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import InvalidInput, NotFound
from portal.orgs.registry import get_org

SECRET_PREFIX = "crs_"
MAX_NAME_LENGTH = 100


def secret_hash(secret: str) -> str:
    """The stored form of a client secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_application_user(db: Database, org_name: str, name: str, *, admin: bool = False
                            ) -> tuple[dict[str, Any], str]:
    """Create an application user; returns (its row without the hash, the secret, shown once)."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"the name must be 1-{MAX_NAME_LENGTH} characters", field="name")
    org = get_org(db, org_name)
    client_id = str(uuid.uuid4())
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    with immediate(db):
        row_id = db.execute(
            "INSERT INTO application_users (org_id, client_id, name, secret_hash, is_admin, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            [org["id"], client_id, name.strip(), secret_hash(secret), int(admin), utcnow()],
        ).lastrowid
    assert row_id is not None
    return _public(get_application_user(db, org_name, client_id)), secret


def get_application_user(db: Database, org_name: str, client_id: str) -> dict[str, Any]:
    """One application user of an org (revoked ones too); NotFound otherwise."""
    rows = list(db.query(
        "SELECT application_users.* FROM application_users "
        "JOIN orgs ON orgs.id = application_users.org_id "
        "WHERE orgs.name = ? AND application_users.client_id = ?", [org_name, client_id]))
    if not rows:
        raise NotFound(f"org {org_name} has no application user {client_id}", field="client_id")
    return rows[0]


def list_application_users(db: Database, org_name: str) -> list[dict[str, Any]]:
    """An org's application users (never their secrets), oldest first."""
    org = get_org(db, org_name)
    return [_public(row) for row in db.query(
        "SELECT * FROM application_users WHERE org_id = ? ORDER BY id", [org["id"]])]


def revoke_application_user(db: Database, org_name: str, client_id: str) -> None:
    """Revoke an application user: its secret and every token it got stop working at once."""
    org = get_org(db, org_name)
    with immediate(db):
        changed = db.execute(
            "UPDATE application_users SET revoked = ? "
            "WHERE org_id = ? AND client_id = ? AND revoked IS NULL",
            [utcnow(), org["id"], client_id]).rowcount
    if not changed:
        raise NotFound(f"org {org_name} has no active application user {client_id}",
                       field="client_id")


def check_client_secret(db: Database, org_name: str, client_id: str, secret: str
                        ) -> dict[str, Any] | None:
    """The live application user of this org with this client id and secret, or None."""
    row = active_application_user(db, org_name, client_id)
    if row is None or not hmac.compare_digest(row["secret_hash"], secret_hash(secret)):
        return None
    return row


def active_application_user(db: Database, org_name: str, client_id: str
                            ) -> dict[str, Any] | None:
    """The org's application user with this client id unless it was revoked, else None."""
    rows = list(db.query(
        "SELECT application_users.* FROM application_users "
        "JOIN orgs ON orgs.id = application_users.org_id "
        "WHERE orgs.name = ? AND application_users.client_id = ? "
        "AND application_users.revoked IS NULL", [org_name, client_id]))
    return rows[0] if rows else None


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "secret_hash"}

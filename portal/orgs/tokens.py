"""API tokens of the Org API: created for an org user, shown once, stored hashed, revocable.

A token is `crm_` followed by 32 random bytes (URL-safe base64). Only its
SHA-256 is stored: the token is long and random, so a slow password hash
would add nothing but latency to every API request.
"""

import hashlib
import secrets
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import InvalidInput, NotFound
from portal.orgs.registry import get_org

TOKEN_PREFIX = "crm_"


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, org_name: str, email: str) -> tuple[int, str]:
    """Create a token for an org user; returns (token id, token). The token is not kept."""
    org = get_org(db, org_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with immediate(db):
        user = db.execute(
            "SELECT id FROM org_users WHERE org_id = ? AND lower(email) = lower(?)",
            [org["id"], email]).fetchone()
        if user is None:
            raise NotFound(f"org {org_name} has no user {email!r}", field="email")
        token_id = db.execute(
            "INSERT INTO api_tokens (org_id, user_id, token_hash, created) VALUES (?, ?, ?, ?)",
            [org["id"], user[0], token_hash(token), utcnow()]).lastrowid
    assert token_id is not None
    return token_id, token


def revoke_token(db: Database, org_name: str, token_id: int) -> None:
    """Revoke one of an org's tokens; NotFound if the org has no such (live) token."""
    org = get_org(db, org_name)
    if not isinstance(token_id, int):
        raise InvalidInput("the token id must be a number", field="token_id")
    with immediate(db):
        changed = db.execute(
            "UPDATE api_tokens SET revoked = ? WHERE id = ? AND org_id = ? AND revoked IS NULL",
            [utcnow(), token_id, org["id"]]).rowcount
    if not changed:
        raise NotFound(f"org {org_name} has no active token {token_id}", field="token_id")


def list_tokens(db: Database, org_name: str) -> list[dict[str, Any]]:
    """An org's tokens (never the tokens themselves): id, user e-mail, created, revoked."""
    org = get_org(db, org_name)
    return list(db.query(
        "SELECT api_tokens.id, org_users.email, api_tokens.created, api_tokens.revoked "
        "FROM api_tokens JOIN org_users ON org_users.id = api_tokens.user_id "
        "WHERE api_tokens.org_id = ? ORDER BY api_tokens.id", [org["id"]]))


def check_token(db: Database, org_name: str, token: str) -> dict[str, Any] | None:
    """The org user a live token of this org belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    rows = list(db.query(
        "SELECT org_users.* FROM api_tokens "
        "JOIN orgs ON orgs.id = api_tokens.org_id "
        "JOIN org_users ON org_users.id = api_tokens.user_id "
        "WHERE api_tokens.token_hash = ? AND orgs.name = ? AND api_tokens.revoked IS NULL",
        [token_hash(token), org_name]))
    return rows[0] if rows else None

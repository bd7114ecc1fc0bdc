"""Organizations and their users, as the registry database knows them.

An org's name is its address (/odata/v4/{name}/), so it is checked once here
and used everywhere. Creating an org writes its own file (with the template's
entities) and its registry rows; either both exist afterwards or neither.
"""

import functools
import re
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from werkzeug.security import check_password_hash, generate_password_hash

from portal.db import immediate, utcnow
from portal.errors import AlreadyExists, InvalidInput, NotFound
from portal.orgs import schema, store
from portal.orgs.templates import template_entities

ORG_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{2,62}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 8
USER_FIELDS = ("firstname", "lastname", "company", "jobtitle", "phone", "country")


def check_org_name(name: Any) -> str:
    """Refuse an org name that cannot be an address: ^[a-z][a-z0-9-]{2,62}$."""
    if not isinstance(name, str) or not ORG_NAME_RE.match(name):
        raise InvalidInput(
            "the organization name must be 3-63 characters: lower-case letters, digits and "
            "'-', starting with a letter", field="name")
    return name


def check_email(email: Any) -> str:
    """Refuse something that is not an e-mail address."""
    if not isinstance(email, str) or len(email) > 254 or not EMAIL_RE.match(email):
        raise InvalidInput("enter a valid e-mail address", field="email")
    return email


def check_password(password: Any) -> str:
    """Refuse a weak password: under 8 characters, or without both letters and digits."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_LENGTH} characters",
                           field="password")
    if not (re.search(r"[A-Za-z]", password) and re.search(r"[0-9]", password)):
        raise InvalidInput("the password must contain letters and digits", field="password")
    return password


def create_org(db: Database, orgs_dir: str | Path, name: str, *, email: str, password: str,
               displayname: str | None = None, template: str | None = None,
               **user: str | None) -> dict[str, Any]:
    """Create an org with its admin user and its own file (empty or from a template)."""
    check_org_name(name)
    check_email(email)
    check_password(password)
    unknown = set(user) - set(USER_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown user field {sorted(unknown)[0]}", field=sorted(unknown)[0])
    entities = template_entities(template) if template else []
    password_hash = generate_password_hash(password)
    with immediate(db):
        if db.execute("SELECT 1 FROM orgs WHERE name = ?", [name]).fetchone():
            raise AlreadyExists(f"the organization name {name!r} is taken", field="name")
        org_id = db.table("orgs").insert({
            "name": name, "displayname": displayname or name, "template": template,
            "created": utcnow()}).last_pk
        db.table("org_users").insert({
            "org_id": org_id, "email": email, "password_hash": password_hash, "is_admin": 1,
            "created": utcnow(), **{f: user.get(f) for f in USER_FIELDS}})
        # The file is made while the registry row is uncommitted: if making it
        # fails, the rows roll back; if the commit fails, the file is removed.
        try:
            with store.create_org_file(orgs_dir, name) as org:
                if entities:
                    schema.add_entities(org, entities)
        except BaseException:
            store.remove_org_file(orgs_dir, name)
            raise
    return get_org(db, name)


def get_org(db: Database, name: str) -> dict[str, Any]:
    """One org's registry row; NotFound if there is none."""
    rows = list(db.query("SELECT * FROM orgs WHERE name = ?", [name]))
    if not rows:
        raise NotFound(f"organization {name!r} does not exist")
    return rows[0]


def list_orgs(db: Database) -> list[dict[str, Any]]:
    """Every org with its number of users, by name."""
    return list(db.query(
        "SELECT orgs.*, (SELECT count(*) FROM org_users WHERE org_id = orgs.id) AS users "
        "FROM orgs ORDER BY name"))


def delete_org(db: Database, orgs_dir: str | Path, name: str) -> None:
    """Delete an org: its registry rows and its file."""
    with immediate(db):
        org = get_org(db, name)
        db.execute("DELETE FROM org_users WHERE org_id = ?", [org["id"]])
        db.execute("DELETE FROM orgs WHERE id = ?", [org["id"]])
    store.remove_org_file(orgs_dir, name)


def add_user(db: Database, org_name: str, *, email: str, password: str,
             is_admin: bool = False) -> dict[str, Any]:
    """Add a user to an org (an admin, or a user of its data who may not administer it)."""
    check_email(email)
    check_password(password)
    password_hash = generate_password_hash(password)
    with immediate(db):
        org = get_org(db, org_name)
        if db.execute("SELECT 1 FROM org_users WHERE org_id = ? AND lower(email) = lower(?)",
                      [org["id"], email]).fetchone():
            raise AlreadyExists(f"{email} is a user of {org_name} already", field="email")
        user_id = db.table("org_users").insert({
            "org_id": org["id"], "email": email, "password_hash": password_hash,
            "is_admin": int(is_admin), "created": utcnow()}).last_pk
    found = get_user(db, org_name, int(user_id or 0))
    assert found is not None  # just inserted, in this transaction's commit
    return found


def get_user(db: Database, org_name: str, user_id: int) -> dict[str, Any] | None:
    """An org's user by id, or None."""
    rows = list(db.query(
        "SELECT org_users.* FROM org_users JOIN orgs ON orgs.id = org_users.org_id "
        "WHERE orgs.name = ? AND org_users.id = ?", [org_name, user_id]))
    return rows[0] if rows else None


def authenticate(db: Database, org_name: str, email: str, password: str) -> dict[str, Any] | None:
    """The org user with these credentials, or None (same answer for any kind of mismatch)."""
    rows = list(db.query(
        "SELECT org_users.* FROM org_users JOIN orgs ON orgs.id = org_users.org_id "
        "WHERE orgs.name = ? AND lower(org_users.email) = lower(?)", [org_name, email]))
    if not rows:
        # Spend the time of a hash check anyway, so timing does not tell which part was wrong.
        check_password_hash(_dummy_hash(), password)
        return None
    user = rows[0]
    return user if check_password_hash(user["password_hash"], password) else None


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash("not-a-password-0")

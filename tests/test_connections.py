"""Connections in the registry: each bad input refused with the field named, nothing changed."""

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlite_utils import Database

from portal import crypto
from portal.db import get_db
from portal.errors import InvalidInput
from portal.orgs import registry
from portal.sync import connections
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir

URL = "https://crm.example.com/odata/v4/srv/"


@pytest.fixture
def db(app: Flask):
    """A registry with org `cli` connected to URL and org `plain` without a connection."""
    with app.app_context():
        database = get_db()
        for name in ("cli", "plain"):
            registry.create_org(database, orgs_dir(app), name, email=ADMIN_EMAIL,
                                password=ADMIN_PASSWORD, template="sales")
        org = registry.get_org(database, "cli")
        connection = connections.create_connection(
            database, crypto.load_key(app.instance_path), org["id"], backend="resco", url=URL,
            username="u", password="p")
        connections.set_server_entities(database, connection.id, ["account", "contact"])
        yield database


def _state(db: Database) -> list[Any]:
    return [list(db.query("SELECT * FROM connections ORDER BY id")),
            list(db.query("SELECT * FROM connection_entities ORDER BY entity"))]


def _create(app: Flask, db: Database, **kw: Any) -> None:
    values = {"backend": "resco", "url": URL, "username": "u", "password": "p", **kw}
    org = registry.get_org(db, values.pop("org", "plain"))
    connections.create_connection(db, crypto.load_key(app.instance_path), org["id"], **values)


BAD: list[tuple[str, Callable[[Flask, Database], Any], str]] = [
    ("backend", lambda app, db: _create(app, db, backend="nosuch"), "unknown backend"),
    ("consumer_key", lambda app, db: _create(app, db, backend="salesforce"), "consumer key"),
    ("url", lambda app, db: _create(app, db, url="ftp://x/"), "http:// or https://"),
    ("url", lambda app, db: _create(app, db, url="https://"), "name a host"),
    ("username", lambda app, db: _create(app, db, username=""), "user name"),
    ("password", lambda app, db: _create(app, db, password=""), "password"),
    ("conflict_policy", lambda app, db: _create(app, db, conflict_policy="loudest-wins"),
     "unknown conflict policy"),
    ("org", lambda app, db: _create(app, db, org="cli"), "connected already"),
    ("conflict_policy", lambda app, db: connections.update_settings(
        db, 1, conflict_policy="x"), "unknown conflict policy"),
    ("entity", lambda app, db: connections.configure_entity(db, 1, "lead", enabled=False),
     "not an entity of the server"),
    ("schedule", lambda app, db: connections.set_schedule(db, 1, every_minutes=5,
                                                          daily_at="01:00"), "not both"),
    ("daily_at", lambda app, db: connections.set_schedule(db, 1, daily_at="25:00"), "HH:MM"),
    ("schedule", lambda app, db: connections.set_schedule(db, 1), "needs an interval"),
    ("status", lambda app, db: connections.set_status(db, 1, "happy"), "unknown status"),
    ("auth", lambda app, db: _create(app, db, server_options={"tenant": "t"}),
     "takes no sign-in options"),
    ("auth", lambda app, db: _create(app, db, backend="dynamics",
                                     server_options={"auth": "magic"}), "unknown sign-in"),
    ("tenant", lambda app, db: _create(app, db, backend="dynamics",
                                       server_options={"tenant": "no such/tenant"}),
     "tenant must be"),
    ("auth", lambda app, db: _create(app, db, backend="dynamics",
                                     server_options={"secret": "x"}), "unknown Dynamics option"),
]


def test_connection_keeps_dynamics_sign_in_options_and_the_secret_encrypted(
        app: Flask, db: Database) -> None:
    org = registry.get_org(db, "plain")
    key = crypto.load_key(app.instance_path)
    made = connections.create_connection(
        db, key, org["id"], backend="dynamics", url="https://contoso.crm4.dynamics.com",
        username="app-id", password="the-client-secret",
        server_options={"auth": "client_credentials", "tenant": "contoso.onmicrosoft.com",
                        "client_id": " "})
    assert made.server_options == {"auth": "client_credentials",
                                   "tenant": "contoso.onmicrosoft.com"}
    row = db.execute("SELECT * FROM connections WHERE id = ?", [made.id]).fetchone()
    assert "the-client-secret" not in str(row)
    assert connections.server_password(db, key, made.id) == "the-client-secret"
    changed = connections.update_server(db, key, made.id, backend="dynamics",
                                        url=made.url, username="someone@contoso.com",
                                        password="pw", server_options={})
    assert changed.server_options == {"auth": "password"}


@pytest.mark.parametrize("field, call, message", BAD)
def test_connection_bad_input_is_refused_and_changes_nothing(
        app: Flask, db: Database, field: str, call: Callable[[Flask, Database], Any],
        message: str) -> None:
    before = _state(db)
    with pytest.raises(InvalidInput) as refused:
        call(app, db)
    assert refused.value.field == field
    assert message in refused.value.message
    assert _state(db) == before


@pytest.mark.parametrize("text", ["", "0m", "15x", "m", "-5", "99999h"])
def test_connection_bad_interval_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        connections.parse_every(text)


def test_connection_password_is_encrypted_at_rest(app: Flask, db: Database) -> None:
    stored = db.execute("SELECT password_encrypted FROM connections").fetchone()[0]
    assert stored != "p" and "p" not in stored.split(".")
    key = crypto.load_key(app.instance_path)
    assert connections.server_password(db, key, 1) == "p"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        connections.server_password(db, b"A" * 43 + b"=", 1)

"""Registering a connection in the data layer: org + admin + connection in one transaction,
and the entities and sync filters a ConnectAsync requests, applied once entities are known."""

from pathlib import Path

import pytest
from flask import Flask

from portal import crypto
from portal.db import get_db
from portal.errors import AlreadyExists, InvalidInput
from portal.orgs import registry, store
from portal.sync import connections
from portal.sync.registration import (
    Registration,
    RequestedSetup,
    apply_requested_setup,
    parse_setup,
    register_connection,
    requested_setup,
)
from tests.conftest import orgs_dir

SERVER = "http://127.0.0.1:9/odata/v4/srv/"
FILTER = ('<fetch><entity name="account"><filter type="and">'
          '<condition attribute="numberofemployees" operator="gt" value="10"/>'
          '</filter></entity></fetch>')


def registration(**changes: str) -> Registration:
    values = {"org": "cli", "email": "ann@example.com", "password": "pass-word-1",
              "backend": "resco", "url": SERVER, "username": "admin@example.com",
              "server_password": "server-pass-1", "firstname": "Ann", "company": "Acme"}
    values.update(changes)
    return Registration(**values)


def counts(app: Flask) -> tuple[int, int, int, bool]:
    with app.app_context():
        db = get_db()
        return (db.table("orgs").count, db.table("org_users").count,
                db.table("connections").count, store.org_file(orgs_dir(app), "cli").exists())


def register(app: Flask, reg: Registration, **kwargs):
    with app.app_context():
        return register_connection(get_db(), orgs_dir(app), crypto.load_key(app.instance_path),
                                   reg, allow_private=True, **kwargs)


def test_register_connection_creates_org_admin_and_pending_connection(app: Flask) -> None:
    connection = register(app, registration())
    assert connection.status == "pending" and connection.org_name == "cli"
    assert counts(app) == (1, 1, 1, True)
    with app.app_context():
        assert registry.authenticate(get_db(), "cli", "ann@example.com", "pass-word-1")


@pytest.mark.parametrize("changes, error", [
    ({"username": ""}, "server user name"),            # create_connection fails after create_org
    ({"server_password": ""}, "server password"),
    ({"backend": "salesforce"}, "consumer key"),
    ({"backend": "nope"}, "unknown backend"),
    ({"url": "ftp://x/"}, "http:// or https://"),
    ({"password": "short"}, "at least 8"),
])
def test_register_connection_leaves_nothing_when_any_part_fails(
        app: Flask, changes: dict[str, str], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        register(app, registration(**changes))
    assert counts(app) == (0, 0, 0, False)


def test_register_connection_refuses_a_private_server_before_writing(app: Flask) -> None:
    with app.app_context(), pytest.raises(InvalidInput, match="loopback"):
        register_connection(get_db(), orgs_dir(app), crypto.load_key(app.instance_path),
                            registration(), allow_private=False)
    assert counts(app) == (0, 0, 0, False)


def test_register_connection_keeps_an_existing_org_of_that_name(app: Flask) -> None:
    register(app, registration())
    with pytest.raises(AlreadyExists):
        register(app, registration(email="other@example.com"))
    assert counts(app) == (1, 1, 1, True)


@pytest.mark.parametrize("entities, xml, error", [
    ([], None, "at least one entity"),
    (["Account"], None, "not an entity logical name"),
    (["contact"], FILTER, "not in the requested entities"),
    (None, "<fetch><entity name='account'><link-entity/></entity></fetch>", "not supported"),
    (None, "<filter/>", "expected a <fetch>"),
])
def test_parse_setup_refuses_bad_requests(entities: list[str] | None, xml: str | None,
                                          error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse_setup(entities, xml)


def test_requested_setup_is_applied_once_the_entities_are_known(app: Flask,
                                                                tmp_path: Path) -> None:
    setup = parse_setup(["account", "contact"], FILTER)
    connection = register(app, registration(), setup=setup)
    # What the connect job has done by now: copied the server's metadata
    # (here: the sales template) and listed its entities on the connection.
    with app.app_context():
        db = get_db()
        assert requested_setup(db, connection.id) == setup
        org = store.open_org(orgs_dir(app), "cli")
        from portal.orgs import schema
        from portal.orgs.templates import sales

        schema.add_entities(org, sales())
        connections.set_server_entities(db, connection.id, list(org.entities()))
        lines = apply_requested_setup(db, connection.id, org.entities())
        org.close()
        settings = {s.entity: s for s in connections.entity_settings(db, connection.id)}
        assert {n for n, s in settings.items() if s.enabled} == {"account", "contact"}
        assert 'operator="gt"' in (settings["account"].filter or "")
        assert settings["contact"].filter is None
        assert len(lines) == 2
        assert requested_setup(db, connection.id) is None
        assert apply_requested_setup(db, connection.id, {}) == []


def test_requested_setup_that_does_not_fit_the_server_fails_and_changes_nothing(
        app: Flask) -> None:
    bad = RequestedSetup(None, parse_setup(None, FILTER.replace(
        "numberofemployees", "nosuchattribute")).filters)
    connection = register(app, registration(), setup=bad)
    with app.app_context():
        db = get_db()
        org = store.open_org(orgs_dir(app), "cli")
        from portal.orgs import schema
        from portal.orgs.templates import sales

        schema.add_entities(org, sales())
        connections.set_server_entities(db, connection.id, list(org.entities()))
        with pytest.raises(InvalidInput, match="nosuchattribute"):
            apply_requested_setup(db, connection.id, org.entities())
        with pytest.raises(InvalidInput, match="no entity 'account'"):
            apply_requested_setup(db, connection.id, {})
        org.close()
        assert all(s.filter is None for s in connections.entity_settings(db, connection.id))
        assert requested_setup(db, connection.id) == bad

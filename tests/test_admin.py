"""The org admin through Flask's test client: sign-in, access to every route, bad input.

Forms are posted with their CSRF token, as a browser does. No server is reached:
the connection is stored as connected by the data layer, and jobs are only
enqueued (the browser tests run them on a real worker against a real server).
"""

import html
import re
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker

from portal import crypto
from portal.db import get_db, immediate
from portal.orgs import application_users, records, registry, tokens, transactions
from portal.orgs.store import open_org
from portal.sync import connections, runs
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir

OTHER_EMAIL = "bea@example.com"
USER_EMAIL = "user@example.com"
SERVER_URL = "https://crm.example.com/odata/v4/srv/"
CLIENT_ID = "00000000-0000-4000-8000-000000000001"  # in URLs of the route list


@pytest.fixture
def orgs(app: Flask, redis: Redis) -> Flask:
    """`acme` (connected, with transactions), `beta` (another org), a non-admin user of acme."""
    app.config["ALLOW_PRIVATE_SERVERS"] = True
    with app.app_context():
        db = get_db()
        registry.create_org(db, orgs_dir(app), "acme", email=ADMIN_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
        registry.create_org(db, orgs_dir(app), "beta", email=OTHER_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
        registry.add_user(db, "acme", email=USER_EMAIL, password=ADMIN_PASSWORD)
        connection = connections.create_connection(
            db, crypto.load_key(app.instance_path), registry.get_org(db, "acme")["id"],
            backend="resco", url=SERVER_URL, username=ADMIN_EMAIL, password=ADMIN_PASSWORD)
        connections.set_server_entities(db, connection.id, ["account", "contact", "lead"])
        connections.set_status(db, connection.id, "connected")
        run_id = runs.start_run(db, connection.id, connection.org_id, "sync", "button")
        runs.log(db, connection.org_id, run_id, "info", "downloaded 3 accounts", "account")
        runs.finish_run(db, run_id, "succeeded", {"account": {"downloaded": 3}}, 1.5)
    with open_org(orgs_dir(app), "acme") as org:
        transactions.set_client(org, True)
        records.create_record(org, "account", {"name": "pending one"})
        records.create_record(org, "account", {"name": "error one"})
        with immediate(org.db):
            transactions.mark(org.db, [2], "error", "the server said no")
    return app


def state(app: Flask, redis: Redis) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    with app.app_context():
        db = get_db()
        conns = [(c.org_name, c.url, c.username, c.status, c.write_offline, c.conflict_policy,
                  c.schedule_every_minutes, c.schedule_daily_at, c.schedule_active, c.streams)
                 for c in connections.list_connections(db)]
        settings = [(s.entity, s.enabled, s.sync_deletion, s.filter)
                    for c in connections.list_connections(db)
                    for s in connections.entity_settings(db, c.id)]
        passwords = [connections.server_password(db, crypto.load_key(app.instance_path), c.id)
                     for c in connections.list_connections(db)]
        api_tokens = [(t["id"], t["revoked"]) for org in ("acme", "beta")
                      for t in tokens.list_tokens(db, org)]
        apps = [(a["client_id"], a["revoked"]) for org in ("acme", "beta")
                for a in application_users.list_application_users(db, org)]
    with open_org(orgs_dir(app), "acme") as org:
        rows = [(t.id, t.status, t.error) for t in transactions.list_transactions(org)]
    return {"connections": conns, "settings": settings, "passwords": passwords,
            "transactions": rows, "queued": Queue("default", connection=redis).count,
            "tokens": api_tokens, "applications": apps}


def token_of(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client: FlaskClient, org: str = "acme", email: str = ADMIN_EMAIL,
            password: str = ADMIN_PASSWORD):
    token = token_of(client.get("/admin/sign-in").get_data(as_text=True))
    return client.post("/admin/sign-in", data={"organization": org, "email": email,
                                               "password": password, "csrf_token": token})


def post(client: FlaskClient, url: str, data: dict[str, Any] | None = None,
         page: str | None = None):
    """Post a form of `page` (default: the url itself) with that page's CSRF token."""
    token = token_of(client.get(page or url).get_data(as_text=True))
    return client.post(url, data={**(data or {}), "csrf_token": token})


def errors_of(page: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for field, message in re.findall(
            r'<span class="error" id="([a-z_0-9.-]+)-error">([^<]*)</span>', page):
        found.setdefault(field, []).append(html.unescape(message))
    return found


@pytest.fixture
def admin(orgs: Flask) -> FlaskClient:
    """A test client signed in as acme's admin."""
    client = orgs.test_client()
    assert sign_in(client).status_code == 302
    return client


# --- sign-in and session --------------------------------------------------------------

def test_admin_sign_in_goes_to_synchronization_with_a_safe_cookie(orgs: Flask) -> None:
    client = orgs.test_client()
    answer = sign_in(client)
    assert answer.status_code == 302 and answer.location == "/admin/acme/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/admin/acme/").location == "/admin/acme/sync/"
    page = client.get("/admin/acme/sync/").get_data(as_text=True)
    assert "Synchronization" in page and 'id="entity-account"' in page and ADMIN_EMAIL in page


def test_admin_session_cookie_is_secure_over_https(orgs: Flask) -> None:
    client = orgs.test_client()
    token = token_of(client.get("/admin/sign-in", base_url="https://localhost")
                     .get_data(as_text=True))
    answer = client.post("/admin/sign-in", base_url="https://localhost", data={
        "organization": "acme", "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
        "csrf_token": token}, headers={"Referer": "https://localhost/admin/sign-in"})
    assert answer.status_code == 302
    assert "Secure" in answer.headers["Set-Cookie"]


@pytest.mark.parametrize("org, email, password", [
    ("acme", ADMIN_EMAIL, "wrong-pass-1"),
    ("acme", "nobody@example.com", ADMIN_PASSWORD),
    ("ghost", ADMIN_EMAIL, ADMIN_PASSWORD),
    ("beta", ADMIN_EMAIL, ADMIN_PASSWORD),  # acme's admin is not beta's
    ("acme", USER_EMAIL, ADMIN_PASSWORD),  # a user of acme who is not its admin
], ids=["wrong-password", "unknown-email", "unknown-org", "other-org", "not-admin"])
def test_admin_sign_in_refused_says_the_same_for_every_mismatch(
        orgs: Flask, org: str, email: str, password: str) -> None:
    client = orgs.test_client()
    answer = sign_in(client, org, email, password)
    assert answer.status_code == 401
    assert "The organization, e-mail or password is wrong" in answer.get_data(as_text=True)
    assert client.get("/admin/acme/sync/").status_code == 302  # still signed out


@pytest.mark.parametrize("data, field, message", [
    ({"organization": "", "email": ADMIN_EMAIL, "password": "x"}, "organization",
     "Enter your organization's name."),
    ({"organization": "acme", "email": "", "password": "x"}, "email",
     "Enter your e-mail address."),
    ({"organization": "acme", "email": ADMIN_EMAIL, "password": ""}, "password",
     "Enter your password."),
    ({"organization": "a" * 64, "email": ADMIN_EMAIL, "password": "x"}, "organization",
     "Field cannot be longer than 63 characters."),
    ({"organization": "Not An Org!", "email": ADMIN_EMAIL, "password": "x"}, "organization",
     "The organization name must be 3-63 characters"),
])
def test_admin_sign_in_bad_input_is_shown_beside_the_field(
        orgs: Flask, data: dict[str, str], field: str, message: str) -> None:
    client = orgs.test_client()
    answer = post(client, "/admin/sign-in", data)
    assert answer.status_code == 400
    assert any(m.startswith(message) for m in errors_of(answer.get_data(as_text=True))[field])


def test_admin_sign_in_without_csrf_token_is_refused(orgs: Flask) -> None:
    client = orgs.test_client()
    client.get("/admin/sign-in")
    answer = client.post("/admin/sign-in", data={"organization": "acme", "email": ADMIN_EMAIL,
                                                 "password": ADMIN_PASSWORD})
    assert answer.status_code == 400 and "security token" in answer.get_data(as_text=True)
    assert client.get("/admin/acme/sync/").status_code == 302


def test_admin_sign_in_returns_to_the_page_asked_for_never_elsewhere(orgs: Flask) -> None:
    client = orgs.test_client()
    first = client.get("/admin/acme/sync/logs?level=error")
    assert first.status_code == 302 and "/admin/sign-in" in first.location
    page = client.get(first.location).get_data(as_text=True)
    assert 'value="/admin/acme/sync/logs?level=error"' in page
    token = token_of(page)
    answer = client.post("/admin/sign-in", data={
        "organization": "acme", "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
        "next": "/admin/acme/sync/logs?level=error", "csrf_token": token})
    assert answer.location == "/admin/acme/sync/logs?level=error"
    for target in ("https://evil.example.com/admin/acme/", "//evil.example.com/x",
                   "/admin/beta/sync/"):
        client.post("/admin/sign-out", data={"csrf_token": token_of(
            client.get("/admin/acme/sync/").get_data(as_text=True))})
        token = token_of(client.get("/admin/sign-in").get_data(as_text=True))
        answer = client.post("/admin/sign-in", data={
            "organization": "acme", "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
            "next": target, "csrf_token": token})
        assert answer.location == "/admin/acme/", target


def test_admin_sign_out_ends_the_session(admin: FlaskClient) -> None:
    answer = post(admin, "/admin/sign-out", page="/admin/acme/sync/")
    assert answer.status_code == 302 and answer.location == "/admin/sign-in"
    assert admin.get("/admin/acme/sync/").status_code == 302


# --- access to every route ---------------------------------------------------------

def admin_routes(app: Flask) -> list[tuple[str, str]]:
    """(method, URL) of every route of an org's admin, for org acme and entity account."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin.") or "<org>" not in rule.rule:
            continue
        url = rule.rule.replace("<org>", "acme").replace("<entity>", "account").replace(
            "<attribute>", "telephone1").replace("<int:token_id>", "1").replace(
            "<client_id>", CLIENT_ID)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, url))
    return found


def test_admin_routes_are_all_listed(orgs: Flask) -> None:
    # A guard runs before every view of the blueprint; this keeps the list below honest.
    assert len(admin_routes(orgs)) >= 20


@pytest.mark.parametrize("who", ["signed-out", "other-org-admin", "not-admin"])
def test_admin_every_route_refuses_who_is_not_this_orgs_admin(
        orgs: Flask, redis: Redis, who: str) -> None:
    client = orgs.test_client()
    if who == "other-org-admin":
        assert sign_in(client, "beta", OTHER_EMAIL).status_code == 302
    elif who == "not-admin":
        # A session of a user who is not (or no longer) an admin: the guard checks the
        # registry on every request, not just the sign-in.
        with orgs.app_context():
            user = registry.add_user(get_db(), "acme", email="was-admin@example.com",
                                     password=ADMIN_PASSWORD)
        with client.session_transaction() as session:
            session["admin"] = {"org": "acme", "user": user["id"]}
    before = state(orgs, redis)
    # A CSRF token of this visitor's own session, so that the guard (not CSRF) answers.
    token = token_of(client.get("/admin/sign-in").get_data(as_text=True))
    for method, url in admin_routes(orgs):
        data = {"csrf_token": token, "action": "enable", "entity": "account", "id": "1",
                "email": ADMIN_EMAIL, "name": "ETL", "archive_open": "y",
                "edit": "clear", "write_mode": "instant", "conflict_policy": "client-wins"}
        answer = client.open(url, method=method, data=data if method == "POST" else None)
        if who == "signed-out":
            assert answer.status_code == 302, (method, url)
            assert answer.location.startswith("/admin/sign-in"), (method, url)
        else:
            assert answer.status_code == 403, (method, url, answer.status_code)
            assert "signed in" in answer.get_data(as_text=True) or \
                "not an administrator" in answer.get_data(as_text=True)
    assert state(orgs, redis) == before


def test_admin_every_post_without_csrf_token_is_refused(admin: FlaskClient, orgs: Flask,
                                                        redis: Redis) -> None:
    before = state(orgs, redis)
    for method, url in admin_routes(orgs):
        if method != "POST":
            continue
        answer = admin.post(url, data={"action": "disable", "entity": "account", "id": "1",
                                       "edit": "clear", "write_mode": "instant",
                                       "email": ADMIN_EMAIL, "name": "ETL", "archive_open": "y"})
        assert answer.status_code == 400, url
        assert "security token" in answer.get_data(as_text=True)
    assert state(orgs, redis) == before


@pytest.mark.parametrize("url", ["/admin/beta/sync/", "/admin/beta/sync/transactions",
                                 "/admin/ghost/sync/", "/admin/acme/sync/entities/ghost/filter",
                                 "/admin/acme/sync/entities/systemuser/filter"])
def test_admin_foreign_or_unknown_ids_in_the_url_are_refused(admin: FlaskClient,
                                                             url: str) -> None:
    # Another org (403, whether it exists or not); an entity the connection does not have (404).
    assert admin.get(url).status_code == (403 if "/acme/" not in url else 404)


# --- Synchronization -------------------------------------------------------------------

def test_admin_entities_disable_many_at_once(admin: FlaskClient, orgs: Flask) -> None:
    answer = admin.post("/admin/acme/sync/", data={
        "action": "disable", "entity": ["account", "lead"],
        "csrf_token": token_of(admin.get("/admin/acme/sync/").get_data(as_text=True))})
    assert answer.status_code == 302
    with orgs.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "acme")
        assert connection is not None
        enabled = {s.entity: s.enabled for s in connections.entity_settings(db, connection.id)}
    assert enabled == {"account": False, "contact": True, "lead": False}
    page = admin.get("/admin/acme/sync/?q=lea").get_data(as_text=True)
    assert 'id="entity-lead"' in page and 'id="entity-account"' not in page


@pytest.mark.parametrize("data, message", [
    ({"action": "disable"}, "Choose at least one entity"),
    ({"action": "disable", "entity": ["account", "ghost"]}, "'ghost' is not an entity"),
    ({"action": "explode", "entity": ["account"]}, "Not a valid choice"),
])
def test_admin_entities_bad_input_changes_nothing(admin: FlaskClient, orgs: Flask, redis: Redis,
                                                  data: dict[str, Any], message: str) -> None:
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/", data)
    assert answer.status_code == 400 and message in html.unescape(answer.get_data(as_text=True))
    assert state(orgs, redis) == before


# --- Sync Filter ----------------------------------------------------------------------

def filter_form(admin: FlaskClient, rows: dict[str, str], edit: str):
    url = "/admin/acme/sync/entities/account/filter"
    return admin.post(url, data={**rows, "edit": edit,
                                 "csrf_token": token_of(admin.get(url).get_data(as_text=True))})


def saved_filter(app: Flask, entity: str = "account") -> str | None:
    with app.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "acme")
        assert connection is not None
        return {s.entity: s.filter for s in connections.entity_settings(db, connection.id)}[entity]


def test_admin_filter_editor_builds_nested_groups_saves_exports_and_clears(
        admin: FlaskClient, orgs: Flask) -> None:
    page = filter_form(admin, {"t-0": "and"}, "add-condition:0").get_data(as_text=True)
    assert 'name="a-0.0"' in page
    page = filter_form(admin, {"t-0": "and", "a-0.0": "name", "o-0.0": "like", "v-0.0": "A%"},
                       "add-group:0").get_data(as_text=True)
    assert 'name="t-0.1"' in page and 'name="a-0.1.0"' in page
    rows = {"t-0": "and", "a-0.0": "name", "o-0.0": "like", "v-0.0": "A%", "t-0.1": "or",
            "a-0.1.0": "industrycode", "o-0.1.0": "in", "v-0.1.0": "1, 2",
            "a-0.1.1": "creditonhold", "o-0.1.1": "eq", "v-0.1.1": "true"}
    answer = filter_form(admin, rows, "save")
    assert answer.status_code == 302
    assert saved_filter(orgs) == (
        '<filter type="and"><condition attribute="name" operator="like" value="A%" />'
        '<filter type="or"><condition attribute="industrycode" operator="in"><value>1</value>'
        '<value>2</value></condition><condition attribute="creditonhold" operator="eq" '
        'value="true" /></filter></filter>')
    page = admin.get("/admin/acme/sync/entities/account/filter").get_data(as_text=True)
    assert 'name="v-0.1.0" id="v-0.1.0" value="1, 2"' in page
    exported = admin.get("/admin/acme/sync/entities/account/filter.xml")
    assert exported.status_code == 200 and exported.get_data(as_text=True) == saved_filter(orgs)
    # Remove the group, save again; then clear.
    filter_form(admin, rows, "remove:0.1")
    assert filter_form(admin, {k: v for k, v in rows.items() if not k.endswith(("0.1", "0.1.0",
                                                                               "0.1.1"))},
                       "save").status_code == 302
    assert saved_filter(orgs) == ('<filter type="and"><condition attribute="name" '
                                  'operator="like" value="A%" /></filter>')
    assert filter_form(admin, {}, "clear").status_code == 302
    assert saved_filter(orgs) is None
    assert admin.get("/admin/acme/sync/entities/account/filter.xml").status_code == 404


@pytest.mark.parametrize("rows, path, message", [
    ({"t-0": "and", "a-0.0": "nosuchattr", "o-0.0": "eq", "v-0.0": "x"}, "0.0",
     "Attribute 'nosuchattr' does not exist in entity account"),
    ({"t-0": "and", "a-0.0": "numberofemployees", "o-0.0": "eq", "v-0.0": "many"}, "0.0",
     "'many' is not a whole number"),
    ({"t-0": "and", "a-0.0": "", "o-0.0": "eq", "v-0.0": "x"}, "0.0", "Choose an attribute"),
    ({"t-0": "and", "a-0.0": "name", "o-0.0": "explode", "v-0.0": "x"}, "0.0",
     "unknown operator"),
    ({"t-0": "and"}, "0", "Add at least one condition"),
    ({"t-0": "and", "a-0.0": "accountid", "o-0.0": "gt", "v-0.0": "x"}, "0.0",
     "cannot be ordered"),
], ids=["unknown-attribute", "wrong-type", "empty", "unknown-operator", "no-condition",
        "unordered"])
def test_admin_filter_bad_rows_are_shown_beside_the_row_and_nothing_saved(
        admin: FlaskClient, orgs: Flask, redis: Redis, rows: dict[str, str], path: str,
        message: str) -> None:
    before = state(orgs, redis)
    answer = filter_form(admin, rows, "save")
    assert answer.status_code == 400
    errors = errors_of(answer.get_data(as_text=True))
    assert any(message in m for m in errors[f"row-{path}"]), errors
    assert state(orgs, redis) == before


@pytest.mark.parametrize("xml, message", [
    ('<filter><condition attribute="nosuch" operator="eq" value="1"/></filter>',
     "does not exist in entity account"),
    ("<filter><condition", "malformed XML"),
    ("x" * 1_000_001, "The FetchXML is too long."),
    ("", "Paste a FetchXML"),
    ('<fetch><entity name="contact"><filter><condition attribute="lastname" operator="eq" '
     'value="x"/></filter></entity></fetch>', "has no filter of entity 'account'"),
], ids=["unknown-attribute", "broken-xml", "too-long", "empty", "other-entity"])
def test_admin_filter_import_bad_fetchxml_is_refused_beside_the_field(
        admin: FlaskClient, orgs: Flask, redis: Redis, xml: str, message: str) -> None:
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/entities/account/filter/import", {"fetchxml": xml},
                  page="/admin/acme/sync/entities/account/filter")
    assert answer.status_code == 400
    assert any(message in m for m in errors_of(answer.get_data(as_text=True))["fetchxml"])
    assert state(orgs, redis) == before


def test_admin_filter_import_saves_a_fetch_documents_filter(admin: FlaskClient,
                                                            orgs: Flask) -> None:
    xml = ('<fetch><entity name="account"><attribute name="name"/><filter type="or">'
           '<condition attribute="name" operator="eq" value="Acme"/></filter></entity></fetch>')
    answer = post(admin, "/admin/acme/sync/entities/account/filter/import", {"fetchxml": xml},
                  page="/admin/acme/sync/entities/account/filter")
    assert answer.status_code == 302
    assert saved_filter(orgs) == ('<filter type="or"><condition attribute="name" operator="eq" '
                                  'value="Acme" /></filter>')


# --- Offline Transactions ----------------------------------------------------------------

def test_admin_transactions_set_to_archived_pending_and_all(admin: FlaskClient,
                                                            orgs: Flask) -> None:
    page = admin.get("/admin/acme/sync/transactions").get_data(as_text=True)
    assert 'id="transaction-1"' in page and "the server said no" in page
    assert re.search(r'id="status-error">Error <span class="count">1</span>', page)
    post(admin, "/admin/acme/sync/transactions", {"action": "archived", "id": ["1"]})
    post(admin, "/admin/acme/sync/transactions", {"action": "all-pending"})
    with open_org(orgs_dir(orgs), "acme") as org:
        assert transactions.counts(org) == {"pending": 1, "processed": 0, "error": 0,
                                            "archived": 1}
    post(admin, "/admin/acme/sync/transactions", {"action": "pending", "id": ["1"]})
    with open_org(orgs_dir(orgs), "acme") as org:
        assert transactions.counts(org)["pending"] == 2
    page = admin.get("/admin/acme/sync/transactions?status=archived").get_data(as_text=True)
    assert "No transactions archived." in page


@pytest.mark.parametrize("url, data, status, message", [
    ("/admin/acme/sync/transactions", {"action": "pending"}, 400, "Tick the transactions"),
    ("/admin/acme/sync/transactions", {"action": "explode", "id": ["1"]}, 400,
     "Not a valid choice"),
    ("/admin/acme/sync/transactions?status=lost", {}, 400, "Unknown status"),
])
def test_admin_transactions_bad_input_changes_nothing(
        admin: FlaskClient, orgs: Flask, redis: Redis, url: str, data: dict[str, Any],
        status: int, message: str) -> None:
    before = state(orgs, redis)
    answer = post(admin, url, data, page="/admin/acme/sync/transactions") if data else \
        admin.get(url)
    assert answer.status_code == status
    assert message in html.unescape(answer.get_data(as_text=True))
    assert state(orgs, redis) == before


def test_admin_transactions_page_by_keyset_through_many_rows(admin: FlaskClient,
                                                             orgs: Flask) -> None:
    with open_org(orgs_dir(orgs), "acme") as org, immediate(org.db):
        org.db.conn.executemany(
            "INSERT INTO _transactions (entity, record_id, operation, changes, client_version, "
            "status, attempts, created, updated) VALUES ('account', ?, 'update', '{}', 1, "
            "'processed', 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            [(f"r{i}",) for i in range(120)])
    seen: list[str] = []
    url = "/admin/acme/sync/transactions?status=processed"
    while url:
        page = admin.get(url).get_data(as_text=True)
        seen += re.findall(r'id="transaction-(\d+)"', page)
        older = re.search(r'href="([^"]+)" id="older"', page)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert [int(i) for i in seen] == list(range(122, 2, -1))
    newer = re.search(r'href="([^"]+)" id="newer"', admin.get(
        "/admin/acme/sync/transactions?status=processed&before=73").get_data(as_text=True))
    assert newer
    page = admin.get(newer.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert re.findall(r'id="transaction-(\d+)"', page)[0] == "122"


def test_admin_transactions_pages_use_the_status_index(orgs: Flask) -> None:
    # What keeps 100,000 rows fast without a timed assertion: no page reads the whole table.
    with open_org(orgs_dir(orgs), "acme") as org:
        plan = " ".join(str(r[3]) for r in org.db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM _transactions WHERE status = ? AND id < ? "
            "ORDER BY id DESC LIMIT 51", ["error", 1000]))
    assert "idx_transactions_status" in plan and "TEMP B-TREE" not in plan


# --- Sync Job ----------------------------------------------------------------------

def connection_now(app: Flask) -> connections.Connection:
    with app.app_context():
        found = connections.connection_of_org(get_db(), "acme")
        assert found is not None
        return found


def test_admin_job_schedules_daily_and_every_n_hours_and_runs_now(admin: FlaskClient,
                                                                  orgs: Flask,
                                                                  redis: Redis) -> None:
    assert post(admin, "/admin/acme/sync/job", {"kind": "daily", "daily_at": "06:30",
                                                "active": "y"}).status_code == 302
    saved = connection_now(orgs)
    assert (saved.schedule_daily_at, saved.schedule_active) == ("06:30", True)
    assert saved.next_run_at and saved.next_run_at.endswith("06:30:00Z")
    assert post(admin, "/admin/acme/sync/job", {"kind": "every", "every": "2", "unit": "h",
                                                "active": "y"}).status_code == 302
    assert connection_now(orgs).schedule_every_minutes == 120
    assert post(admin, "/admin/acme/sync/job", {"kind": "every", "every": "2",
                                                "unit": "h"}).status_code == 302
    assert connection_now(orgs).schedule_active is False
    answer = post(admin, "/admin/acme/sync/run", {"return_to": "/admin/acme/sync/job"},
                  page="/admin/acme/sync/job")
    assert answer.location == "/admin/acme/sync/job"
    queued = Queue("default", connection=redis).job_ids  # one job, of one run
    assert len(queued) == 1 and queued[0].startswith(f"sync-{saved.id}-")
    state_now = admin.get("/admin/acme/sync/progress.json").get_json()
    assert state_now["state"] == "queued" and state_now["kind"] == "sync"


@pytest.mark.parametrize("data, field, message", [
    ({"kind": "daily", "daily_at": "25:00", "active": "y"}, "daily_at",
     "Enter a time from 00:00 to 23:59"),
    ({"kind": "daily", "daily_at": "", "active": "y"}, "daily_at", "Enter the time"),
    ({"kind": "daily", "daily_at": "06:300", "active": "y"}, "daily_at",
     "Field cannot be longer than 5 characters."),
    ({"kind": "every", "every": "", "active": "y"}, "every", "Enter the interval"),
    ({"kind": "every", "every": "soon", "active": "y"}, "every", "Enter a whole number"),
    ({"kind": "every", "every": "0", "active": "y"}, "every", "Enter a whole number"),
    ({"kind": "every", "every": "200", "unit": "h", "active": "y"}, "every",
     "The interval must be at most a week"),
    ({"kind": "weekly", "every": "2", "active": "y"}, "kind", "Not a valid choice"),
], ids=["25:00", "empty-time", "too-long", "empty-interval", "wrong-type", "zero",
        "over-a-week", "unknown-kind"])
def test_admin_job_bad_schedule_is_shown_beside_the_field(
        admin: FlaskClient, orgs: Flask, redis: Redis, data: dict[str, str], field: str,
        message: str) -> None:
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/job", data)
    assert answer.status_code == 400
    errors = errors_of(answer.get_data(as_text=True))
    assert any(m.startswith(message) for m in errors.get(field, [])), errors
    assert state(orgs, redis) == before


# --- Connection -----------------------------------------------------------------------

def test_admin_connection_settings_and_credentials(admin: FlaskClient, orgs: Flask) -> None:
    assert post(admin, "/admin/acme/sync/connection/settings", {
        "write_mode": "instant", "conflict_policy": "newest-wins"},
        page="/admin/acme/sync/connection").status_code == 302
    saved = connection_now(orgs)
    assert (saved.write_offline, saved.conflict_policy) == (False, "newest-wins")
    assert post(admin, "/admin/acme/sync/connection/credentials", {
        "server_username": "other@example.com", "server_password": "new-pass-2"},
        page="/admin/acme/sync/connection").status_code == 302
    saved = connection_now(orgs)
    assert (saved.username, saved.status) == ("other@example.com", "connected")
    with orgs.app_context():
        assert connections.server_password(get_db(), crypto.load_key(orgs.instance_path),
                                           saved.id) == "new-pass-2"


def test_admin_connection_streams_saved_and_shown_with_what_caps_them(
        admin: FlaskClient, orgs: Flask) -> None:
    page = html.unescape(admin.get("/admin/acme/sync/connection").get_data(as_text=True))
    assert "4 asked, 3 used: 3 entities are enabled (empty: the portal's default, 4)" in page
    assert post(admin, "/admin/acme/sync/connection/settings", {
        "write_mode": "offline", "conflict_policy": "server-wins", "streams": "2"},
        page="/admin/acme/sync/connection").status_code == 302
    assert connection_now(orgs).streams == 2
    page = html.unescape(admin.get("/admin/acme/sync/connection").get_data(as_text=True))
    assert 'value="2"' in page and "2 asked, 2 used." in page
    with orgs.app_context(), immediate(get_db()) as db:  # a server type that allows one
        db.execute("UPDATE connections SET backend = 'odata'")
    page = html.unescape(admin.get("/admin/acme/sync/connection").get_data(as_text=True))
    assert "2 asked, 1 used: the odata backend allows 1." in page
    assert post(admin, "/admin/acme/sync/connection/settings", {
        "write_mode": "offline", "conflict_policy": "server-wins", "streams": ""},
        page="/admin/acme/sync/connection").status_code == 302
    assert connection_now(orgs).streams is None


@pytest.mark.parametrize("url, data, field, message", [
    ("settings", {"write_mode": "sometimes", "conflict_policy": "server-wins"}, "write_mode",
     "Not a valid choice"),
    *[("settings", {"write_mode": "instant", "conflict_policy": "server-wins", "streams": bad},
       "streams", "Streams must be a whole number from 1 to 16") for bad in ("0", "17", "abc")],
    ("settings", {"conflict_policy": "server-wins"}, "write_mode", "Choose a write mode"),
    ("settings", {"write_mode": "instant", "conflict_policy": "loudest-wins"},
     "conflict_policy", "Not a valid choice"),
    ("credentials", {"server_username": "", "server_password": "x"}, "server_username",
     "Enter the server user name."),
    ("credentials", {"server_username": "u" * 255, "server_password": "x"}, "server_username",
     "Field cannot be longer than 254 characters."),
    ("credentials", {"server_username": "u@example.com", "server_password": ""},
     "server_password", "Enter the server password."),
])
def test_admin_connection_bad_input_is_shown_beside_the_field(
        admin: FlaskClient, orgs: Flask, redis: Redis, url: str, data: dict[str, str],
        field: str, message: str) -> None:
    before = state(orgs, redis)
    answer = post(admin, f"/admin/acme/sync/connection/{url}", data,
                  page="/admin/acme/sync/connection")
    assert answer.status_code == 400
    errors = errors_of(answer.get_data(as_text=True))
    assert any(m.startswith(message) for m in errors.get(field, [])), errors
    assert state(orgs, redis) == before


def test_admin_disconnect_with_unsent_changes_is_refused_unless_they_are_archived(
        admin: FlaskClient, orgs: Flask, redis: Redis) -> None:
    page = admin.get("/admin/acme/sync/connection").get_data(as_text=True)
    assert "Changes not on the server yet: 2" in page and 'id="archive_open"' in page
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/connection/disconnect",
                  page="/admin/acme/sync/connection")
    assert answer.status_code == 409
    assert errors_of(answer.get_data(as_text=True))["archive_open"] == [
        "Changes of this organization not on the server yet (pending or in error): 2; "
        "upload them first (Sync All), or confirm that they are archived"]
    assert state(orgs, redis) == before


def test_admin_disconnect_refused_while_a_job_works(admin: FlaskClient, orgs: Flask,
                                                    redis: Redis) -> None:
    with orgs.app_context():
        connection = connection_now(orgs)
        runs.start_run(get_db(), connection.id, connection.org_id, "sync", "button")
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/connection/disconnect", {"archive_open": "y"},
                  page="/admin/acme/sync/connection")
    assert answer.status_code == 409
    assert "A job is working on this connection" in answer.get_data(as_text=True)
    assert state(orgs, redis) == before


def test_admin_disconnect_archives_unsent_changes_keeps_the_org_and_offers_the_connector(
        admin: FlaskClient, orgs: Flask) -> None:
    answer = post(admin, "/admin/acme/sync/connection/disconnect", {"archive_open": "y"},
                  page="/admin/acme/sync/connection")
    assert answer.location == "/admin/acme/sync/connector"
    with orgs.app_context():
        assert connections.connection_of_org(get_db(), "acme") is None
    with open_org(orgs_dir(orgs), "acme") as org:
        assert not transactions.is_client(org.db) and org.db.table("account").count == 2
        # Archived, so that a server connected later never receives them.
        assert transactions.counts(org) == {"pending": 0, "processed": 0, "error": 0,
                                            "archived": 2}
    page = admin.get("/admin/acme/sync/connector").get_data(as_text=True)
    assert 'id="connector"' in page and "Changes archived that were not on the server: 2" \
        in page
    assert admin.get("/admin/acme/sync/").location == "/admin/acme/sync/connector"
    answer = post(admin, "/admin/acme/sync/run", page="/admin/acme/sync/connector")
    assert answer.status_code == 409 and "not connected" in answer.get_data(as_text=True)


def test_admin_connector_bad_input_is_shown_beside_the_field(admin: FlaskClient, orgs: Flask,
                                                             redis: Redis) -> None:
    post(admin, "/admin/acme/sync/connection/disconnect", {"archive_open": "y"},
         page="/admin/acme/sync/connection")
    orgs.config["ALLOW_PRIVATE_SERVERS"] = False
    before = state(orgs, redis)
    answer = post(admin, "/admin/acme/sync/connector", {
        "backend": "resco", "server_url": "http://127.0.0.1:1/odata/v4/srv/",
        "server_username": "", "server_password": "x"})
    assert answer.status_code == 400
    errors = errors_of(answer.get_data(as_text=True))
    assert errors["server_username"] == ["Enter the server user name."]
    assert "server_url" in errors
    assert state(orgs, redis) == before


# --- Logs and Runs ---------------------------------------------------------------------

def test_admin_logs_search_and_runs_chart(admin: FlaskClient) -> None:
    page = admin.get("/admin/acme/sync/logs?text=3+acc&level=info").get_data(as_text=True)
    assert "downloaded 3 accounts" in page
    page = admin.get("/admin/acme/sync/logs?text=nothing-like-it").get_data(as_text=True)
    assert "No log lines match." in page
    page = admin.get("/admin/acme/sync/runs").get_data(as_text=True)
    assert 'id="runs-chart"' in page and page.count('class="bar"') == 1


@pytest.mark.parametrize("query, field", [("run=abc", "run"), ("level=loud", "level"),
                                          ("text=" + "x" * 201, "text")])
def test_admin_logs_bad_search_is_answered_beside_the_field(admin: FlaskClient, query: str,
                                                            field: str) -> None:
    answer = admin.get(f"/admin/acme/sync/logs?{query}")
    assert answer.status_code == 400 and field in errors_of(answer.get_data(as_text=True))


def test_home_page_links_to_connect_and_sign_in(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'href="/connect" id="home-connect"' in page
    assert 'href="/admin/sign-in" id="home-sign-in"' in page
    for link in re.findall(r'href="(/[^"]*)"', page):
        answer = client.get(link)
        answer.close()  # static files are streamed from an open file
        assert answer.status_code == 200, link  # every link works


# --- Customization -----------------------------------------------------------------------

@pytest.fixture
def beta_admin(orgs: Flask) -> FlaskClient:
    """A test client signed in as beta's admin (beta is no client of a connection)."""
    client = orgs.test_client()
    assert sign_in(client, "beta", OTHER_EMAIL).status_code == 302
    return client


def test_admin_customization_adds_an_entity_and_attributes_then_removes(
        beta_admin: FlaskClient, orgs: Flask) -> None:
    answer = post(beta_admin, "/admin/beta/customization", {
        "logicalname": "cf_project", "displayname": "Project"})
    assert answer.location == "/admin/beta/customization/cf_project"
    url = "/admin/beta/customization/cf_project"
    assert post(beta_admin, url, {"logicalname": "stage", "displayname": "Stage",
                                  "type": "picklist", "options_text": "1=Idea, 2=Running",
                                  "target": ""}).status_code == 302
    assert post(beta_admin, url, {"logicalname": "accountid", "displayname": "Account",
                                  "type": "lookup", "target": "account"}).status_code == 302
    with open_org(orgs_dir(orgs), "beta") as org:
        project = org.entity("cf_project")
        stage = project.attribute("stage")
        assert stage is not None and [(o.value, o.label) for o in stage.options] == [
            (1, "Idea"), (2, "Running")]
        assert project.attribute("accountid").targets == ["account"]  # type: ignore[union-attr]
    assert post(beta_admin, url + "/label", {"displayname": "Projects"}, page=url).status_code \
        == 302
    assert post(beta_admin, url + "/attributes/stage/remove", page=url).status_code == 302
    with open_org(orgs_dir(orgs), "beta") as org:
        assert org.entity("cf_project").displayname == "Projects"
        assert org.entity("cf_project").attribute("stage") is None
    assert post(beta_admin, url + "/remove", page=url).status_code == 302
    with open_org(orgs_dir(orgs), "beta") as org:
        assert "cf_project" not in org.entities()


@pytest.mark.parametrize("data, field, message", [
    ({"logicalname": "Bad Name", "displayname": "X", "type": "string"}, "logicalname",
     "Attribute name 'Bad Name' must be"),
    ({"logicalname": "", "displayname": "X", "type": "string"}, "logicalname",
     "Enter the attribute's logical name."),
    ({"logicalname": "stage", "displayname": "X", "type": "picklist"}, "options_text",
     "Attribute stage: a picklist needs options"),
    ({"logicalname": "stage", "displayname": "X", "type": "picklist",
      "options_text": "one=Idea"}, "options_text", "Write each option as value=label"),
    ({"logicalname": "note", "displayname": "X", "type": "string", "maxlength": "long"},
     "maxlength", "Enter a whole number."),
    ({"logicalname": "note", "displayname": "X", "type": "blob"}, "type", "Not a valid choice"),
    ({"logicalname": "name", "displayname": "X", "type": "string"}, None, "exists"),
])
def test_admin_customization_bad_attribute_is_shown_beside_the_field(
        beta_admin: FlaskClient, orgs: Flask, data: dict[str, str], field: str | None,
        message: str) -> None:
    with open_org(orgs_dir(orgs), "beta") as org:
        before = [a.logicalname for a in org.entity("account").attributes]
    answer = post(beta_admin, "/admin/beta/customization/account", data)
    assert answer.status_code in (400, 409)
    page = html.unescape(answer.get_data(as_text=True))
    if field is None:
        assert message in page
    else:
        assert any(m.startswith(message) for m in errors_of(page).get(field, [])), errors_of(page)
    with open_org(orgs_dir(orgs), "beta") as org:
        assert [a.logicalname for a in org.entity("account").attributes] == before


def test_admin_customization_of_a_client_org_is_refused_with_the_reason(
        admin: FlaskClient, orgs: Flask) -> None:
    page = admin.get("/admin/acme/customization").get_data(as_text=True)
    assert "is the client of a connection" in page and 'id="add-entity"' not in page
    with open_org(orgs_dir(orgs), "acme") as org:
        before = {n: [a.logicalname for a in e.attributes] for n, e in org.entities().items()}
    for url, data in [("/admin/acme/customization", {"logicalname": "cf_x", "displayname": "X"}),
                      ("/admin/acme/customization/account", {
                          "logicalname": "rating", "displayname": "R", "type": "integer"}),
                      ("/admin/acme/customization/account/label", {"displayname": "Company"}),
                      ("/admin/acme/customization/account/attributes/telephone1/remove", {}),
                      ("/admin/acme/customization/lead/remove", {})]:
        answer = post(admin, url, data, page="/admin/acme/customization")
        assert answer.status_code == 409, url
        assert "is the client of a connection" in html.unescape(answer.get_data(as_text=True))
    with open_org(orgs_dir(orgs), "acme") as org:
        assert {n: [a.logicalname for a in e.attributes]
                for n, e in org.entities().items()} == before


# --- API tokens -----------------------------------------------------------------------

def test_admin_tokens_created_shown_once_work_and_are_revoked(admin: FlaskClient,
                                                              orgs: Flask) -> None:
    answer = post(admin, "/admin/acme/tokens", {"email": ADMIN_EMAIL})
    assert answer.status_code == 201
    token = re.search(r'id="token-value">(crm_[^<]+)<', answer.get_data(as_text=True))
    assert token
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert orgs.test_client().get("/odata/v4/acme/", headers=bearer).status_code == 200
    page = admin.get("/admin/acme/tokens").get_data(as_text=True)
    assert 'id="token-1"' in page and token.group(1) not in page  # never shown again
    assert post(admin, "/admin/acme/tokens/1/revoke", page="/admin/acme/tokens").status_code \
        == 302
    assert orgs.test_client().get("/odata/v4/acme/", headers=bearer).status_code == 401


def test_admin_tokens_of_another_org_cannot_be_revoked(admin: FlaskClient, orgs: Flask) -> None:
    with orgs.app_context():
        beta_token_id, beta_token = tokens.create_token(get_db(), "beta", OTHER_EMAIL)
    answer = post(admin, f"/admin/acme/tokens/{beta_token_id}/revoke", page="/admin/acme/tokens")
    assert answer.status_code == 404
    bearer = {"Authorization": f"Bearer {beta_token}"}
    assert orgs.test_client().get("/odata/v4/beta/", headers=bearer).status_code == 200


@pytest.mark.parametrize("email, message", [
    ("", "Enter the e-mail of an org user."),
    ("nobody@example.com", "Org acme has no user 'nobody@example.com'"),
    ("x" * 255, "Field cannot be longer than 254 characters."),
])
def test_admin_tokens_bad_input_is_shown_beside_the_field(admin: FlaskClient, orgs: Flask,
                                                          email: str, message: str) -> None:
    answer = post(admin, "/admin/acme/tokens", {"email": email})
    assert answer.status_code == 400
    assert errors_of(answer.get_data(as_text=True))["email"] == [message]
    with orgs.app_context():
        assert tokens.list_tokens(get_db(), "acme") == []


# --- Application users ----------------------------------------------------------------

def test_admin_application_users_created_shown_once_work_and_are_revoked(
        admin: FlaskClient, orgs: Flask) -> None:
    answer = post(admin, "/admin/acme/applications", {"name": "Nightly ETL", "admin": "y"})
    assert answer.status_code == 201
    page = answer.get_data(as_text=True)
    client_id = re.search(r'id="client-id">([0-9a-f-]{36})<', page)
    secret = re.search(r'id="client-secret">(crs_[^<]+)<', page)
    assert client_id and secret
    # The secret works at the org's token endpoint (client credentials), as MSAL uses it.
    grant = {"grant_type": "client_credentials", "client_id": client_id.group(1),
             "client_secret": secret.group(1),
             "scope": "http://localhost/dataverse/acme/.default"}
    assert orgs.test_client().post("/dataverse/acme/oauth2/v2.0/token",
                                   data=grant).status_code == 200
    page = admin.get("/admin/acme/applications").get_data(as_text=True)
    assert f'id="application-{client_id.group(1)}"' in page and "Nightly ETL" in page
    assert secret.group(1) not in page  # never shown again
    with orgs.app_context():  # the CLI's data layer lists what the page created
        listed = application_users.list_application_users(get_db(), "acme")
    assert [(a["name"], a["is_admin"]) for a in listed] == [("Nightly ETL", 1)]
    answer = post(admin, f"/admin/acme/applications/{client_id.group(1)}/revoke",
                  page="/admin/acme/applications")
    assert answer.status_code == 302
    assert "revoked" in admin.get("/admin/acme/applications").get_data(as_text=True)
    assert orgs.test_client().post("/dataverse/acme/oauth2/v2.0/token",
                                   data=grant).status_code == 401
    # Revoked already: nothing left to revoke.
    assert post(admin, f"/admin/acme/applications/{client_id.group(1)}/revoke",
                page="/admin/acme/applications").status_code == 404


def test_admin_application_users_of_another_org_cannot_be_revoked(admin: FlaskClient,
                                                                  orgs: Flask) -> None:
    with orgs.app_context():
        row, _ = application_users.create_application_user(get_db(), "beta", "Beta's app")
    answer = post(admin, f"/admin/acme/applications/{row['client_id']}/revoke",
                  page="/admin/acme/applications")
    assert answer.status_code == 404
    with orgs.app_context():
        assert application_users.active_application_user(get_db(), "beta", row["client_id"])


@pytest.mark.parametrize("name, message", [
    ("", "Enter a name for the application."),
    ("   ", "The name must be 1-100 characters"),  # the data layer's own check
    ("x" * 101, "Field cannot be longer than 100 characters."),
])
def test_admin_application_users_bad_input_is_shown_beside_the_field(
        admin: FlaskClient, orgs: Flask, name: str, message: str) -> None:
    answer = post(admin, "/admin/acme/applications", {"name": name})
    assert answer.status_code == 400
    assert errors_of(answer.get_data(as_text=True))["name"] == [message]
    with orgs.app_context():
        assert application_users.list_application_users(get_db(), "acme") == []


# --- checks of the server run as jobs: Update Client Metadata's preview, Test credentials ---

def unreachable_server(app: Flask) -> None:
    """Point acme's connection at a local port where nothing listens (refused at once)."""
    with app.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "acme")
        assert connection is not None
        with immediate(db):
            db.execute("UPDATE connections SET url = ? WHERE id = ?",
                       ["http://127.0.0.1:1/odata/v4/srv/", connection.id])


def work(app: Flask, redis: Redis) -> None:
    """Run the queued jobs on a real RQ worker in this process."""
    with app.app_context():
        SimpleWorker(["default"], connection=redis).work(burst=True)


@pytest.mark.parametrize("start, page, shown", [
    ("/admin/acme/sync/metadata/check", "/admin/acme/sync/metadata", "preview-error"),
    ("/admin/acme/sync/connection/test", "/admin/acme/sync/connection", "credentials-result"),
])
def test_admin_server_checks_run_as_jobs_and_show_checking_then_the_reason(
        admin: FlaskClient, orgs: Flask, redis: Redis, start: str, page: str,
        shown: str) -> None:
    unreachable_server(orgs)
    answer = post(admin, start, page=page)
    # The request only enqueues: the job is waiting for a worker, and the page says so.
    assert answer.status_code == 302 and answer.location.startswith(page + "?check=")
    assert Queue("default", connection=redis).count == 1
    waiting = admin.get(answer.location).get_data(as_text=True)
    assert "Checking…" in waiting and '<meta http-equiv="refresh" content="2">' in waiting
    assert f'id="{shown}"' not in waiting
    work(orgs, redis)
    done = admin.get(answer.location).get_data(as_text=True)
    assert "Checking…" not in done and 'http-equiv="refresh"' not in done
    reason = re.search(rf'id="{shown}">([^<]+)<', done)
    assert reason and "127.0.0.1:1" in html.unescape(reason.group(1)), reason


@pytest.mark.parametrize("check", [
    "credentials-{id}-" + "0" * 32,           # the right form, but no such job (expired)
    "preview-{id}-" + "0" * 32,               # a check of another kind
    "credentials-999-" + "0" * 32,            # another connection's
    "credentials-{id}-../../x",
])
def test_admin_checks_of_other_connections_or_expired_are_404(
        admin: FlaskClient, orgs: Flask, check: str) -> None:
    connection_id = connection_now(orgs).id
    answer = admin.get("/admin/acme/sync/connection?check=" + check.format(id=connection_id))
    assert answer.status_code == 404


def test_admin_check_whose_job_failed_shows_the_jobs_reason(admin: FlaskClient, orgs: Flask,
                                                            redis: Redis) -> None:
    # The stored password was encrypted with another key (the instance key was replaced):
    # the job fails, and the page gives the job's reason instead of waiting forever.
    with orgs.app_context():
        db = get_db()
        with immediate(db):
            db.execute("UPDATE connections SET password_encrypted = ?",
                       [crypto.encrypt(Fernet.generate_key(), "other key")])
    answer = post(admin, "/admin/acme/sync/connection/test", page="/admin/acme/sync/connection")
    work(orgs, redis)
    page = html.unescape(admin.get(answer.location).get_data(as_text=True))
    result = re.search(r'id="credentials-result">([^<]+)<', page)
    assert result and result.group(1) == (
        "Test failed: the check failed (ValueError: stored credentials cannot be decrypted "
        "with this instance's key)")
def test_admin_progress_says_resuming_after_a_killed_run(admin: FlaskClient, orgs: Flask) -> None:
    from portal.orgs import sync_state

    connection = connection_now(orgs)
    with open_org(orgs_dir(orgs), "acme") as org, org.db.conn:
        sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
            "account", SERVER_URL + "accounts?$skiptoken=50", False, None))
        org.db.execute("UPDATE _sync_state SET updated = '2026-01-01T00:00:00Z'")  # before
    with orgs.app_context():
        db = get_db()
        # A sync run after a successful one goes on from delta links: not "resuming".
        run_id, _ = runs.request_run(db, connection.id, connection.org_id, "sync", "button")
        assert admin.get("/admin/acme/sync/progress.json").get_json()["resuming"] is False
        runs.start_run(db, connection.id, connection.org_id, "sync", "button", None, run_id)
        assert runs.end_active(db, run_id, runs.ABANDONED + " (its lock expired)")  # killed
        again, _ = runs.request_run(db, connection.id, connection.org_id, "sync", "schedule")
    state_now = admin.get("/admin/acme/sync/progress.json").get_json()
    assert state_now["state"] == "queued" and state_now["resuming"] is True
    page = admin.get("/admin/acme/sync/").get_data(as_text=True)
    assert "A sync job is waiting for a worker to resume from where the last one stopped" in page
    with orgs.app_context():
        runs.start_run(get_db(), connection.id, connection.org_id, "sync", "schedule", None,
                       again)
    page = admin.get("/admin/acme/sync/").get_data(as_text=True)
    assert f"Run {again} (sync, schedule) is resuming from where the last one stopped" in page

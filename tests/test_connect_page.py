"""The connect page (/Register.aspx?otype=connect, /connect) and the connection status page.

The form is posted with its CSRF token, as a browser does; jobs are only
enqueued here (the browser test runs them), so no traffic leaves the machine.
"""

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue

from portal import create_app, crypto
from portal.db import get_db
from portal.orgs import registry, store
from portal.sync import connections
from tests.conftest import orgs_dir

PUBLIC_SERVER = "http://93.184.215.14/odata/v4/srv/"  # a public literal: passes the address check

VALID = {
    "organization": "acme", "email": "ann@example.com", "password": "pass-word-1",
    "confirm": "pass-word-1", "firstname": "Ann", "lastname": "Smith", "company": "Acme",
    "jobtitle": "CRM admin", "phone": "+421 900 000 000", "country": "Slovakia",
    "backend": "resco", "server_url": PUBLIC_SERVER, "server_username": "admin@example.com",
    "server_password": "server-pass-1", "consent": "y",
}


def csrf_token(client: FlaskClient, url: str = "/connect") -> str:
    page = client.get(url).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def post(client: FlaskClient, url: str = "/connect", **changes: Any):
    data = {**VALID, "csrf_token": csrf_token(client, url), **changes}
    return client.post(url, data={k: v for k, v in data.items() if v is not None})


def errors_of(page: str) -> dict[str, list[str]]:
    """Field id -> the error messages shown beside it."""
    found: dict[str, list[str]] = {}
    for field, message in re.findall(r'<span class="error" id="([a-z_]+)-error">([^<]*)</span>',
                                     page):
        found.setdefault(field, []).append(message.replace("&#39;", "'"))
    return found


def registry_counts(app: Flask) -> tuple[int, int, int]:
    with app.app_context():
        db = get_db()
        return db.table("orgs").count, db.table("org_users").count, db.table("connections").count


def test_connect_page_is_served_at_the_resco_address_and_at_connect(client: FlaskClient) -> None:
    for url in ("/Register.aspx?otype=connect", "/Register.aspx?otype=Connect", "/connect"):
        page = client.get(url).get_data(as_text=True)
        for legend in ("Login Info", "Detail Info", "Backend Login"):
            assert f"<legend>{legend}</legend>" in page
        for label in ("Organization", "E-mail", "Confirm password", "First name", "Job title",
                      "Country", "Type", "URL", "Username"):
            assert f">{label}</label>" in page
        # Every backend type by its display name; the ones not built yet disabled.
        assert '<option selected value="resco">Resco Cloud</option>' in page
        assert '<option value="dynamics">Dynamics CRM</option>' in page
        assert "Dynamics CRM (coming soon)" not in page
        assert '<option value="salesforce">Salesforce</option>' in page
        assert ">Consumer key (Salesforce)</label>" in page
        # Dynamics signs in by user name and password or as an application user.
        assert '<option value="client_credentials">Application user' in page
        assert ">Tenant (Dynamics, optional)</label>" in page
        assert 'type="submit" value="Connect"' in page
    assert client.get("/Register.aspx?otype=register").status_code == 404
    assert client.get("/Register.aspx").status_code == 404


@pytest.mark.parametrize("changes, field, message", [
    ({"organization": ""}, "organization", "Enter a name"),
    ({"organization": "Acme Inc"}, "organization", "lower-case letters"),
    ({"organization": "ab"}, "organization", "3-63 characters"),
    ({"organization": "9lives"}, "organization", "starting with a letter"),
    ({"email": ""}, "email", "Enter your e-mail"),
    ({"email": "ann.example.com"}, "email", "valid e-mail"),
    ({"password": "short1", "confirm": "short1"}, "password", "at least 8"),
    ({"password": "onlyletters", "confirm": "onlyletters"}, "password", "letters and digits"),
    ({"confirm": "pass-word-2"}, "confirm", "do not match"),
    ({"confirm": ""}, "confirm", "Type the password again"),
    ({"backend": "salesforce"}, "server_consumer_key", "Enter the connected app's consumer key"),
    ({"backend": "dynamics", "server_tenant": "not a tenant/"}, "server_tenant",
     "tenant must be a directory (tenant) id"),
    ({"backend": "bogus"}, "backend", "Not a valid choice"),
    ({"server_url": ""}, "server_url", "Enter the server's URL"),
    ({"server_url": "ftp://93.184.215.14/"}, "server_url", "http:// or https://"),
    ({"server_url": "http:///odata"}, "server_url", "name a host"),
    ({"server_url": "http://127.0.0.1:5000/odata/v4/srv/"}, "server_url", "loopback"),
    ({"server_url": "http://localhost/odata/v4/srv/"}, "server_url", "loopback"),
    ({"server_url": "http://10.0.0.5/"}, "server_url", "private"),
    ({"server_url": "http://169.254.169.254/"}, "server_url", "link-local"),
    ({"server_url": "http://[ff02::1]/"}, "server_url", "multicast"),
    ({"server_username": ""}, "server_username", "Enter the server user name"),
    ({"server_password": ""}, "server_password", "Enter the server password"),
    ({"consent": None}, "consent", "Tick the box"),
    ({"firstname": "x" * 101}, "firstname", "longer than 100"),
])
def test_connect_page_shows_each_error_beside_its_field_and_keeps_values(
        app: Flask, client: FlaskClient, redis: Redis, changes: dict[str, Any], field: str,
        message: str) -> None:
    response = post(client, **changes)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    errors = errors_of(page)
    assert list(errors) == [field], errors
    assert message in errors[field][0]
    # Values are kept, passwords are not.
    for name in ("organization", "email", "company", "server_url", "server_username"):
        value = changes.get(name, VALID[name])
        if value:
            assert f'name="{name}"' in page and f'value="{value}"' in page
    assert "pass-word-1" not in page and "server-pass-1" not in page
    assert registry_counts(app) == (0, 0, 0)
    assert Queue("default", connection=redis).count == 0


def test_connect_page_refuses_a_taken_organization_name(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        registry.create_org(get_db(), orgs_dir(app), "acme", email="x@example.com",
                            password="pass-word-9")
    errors = errors_of(post(client).get_data(as_text=True))
    assert errors == {"organization": ["The organization name 'acme' is taken."]}
    assert registry_counts(app) == (1, 1, 0)


def test_connect_page_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    response = client.post("/connect", data=VALID)
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert registry_counts(app) == (0, 0, 0)


def test_connect_page_creates_one_org_user_and_connection_and_enqueues_one_job(
        app: Flask, client: FlaskClient, redis: Redis) -> None:
    response = post(client, url="/Register.aspx?otype=connect")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert urlsplit(location).path == "/connect/acme/status"
    assert registry_counts(app) == (1, 1, 1)
    with app.app_context():
        db = get_db()
        user = registry.authenticate(db, "acme", "ann@example.com", "pass-word-1")
        assert user and user["is_admin"] and user["company"] == "Acme"
        assert user["country"] == "Slovakia" and user["jobtitle"] == "CRM admin"
        connection = connections.connection_of_org(db, "acme")
        assert connection and connection.status == "pending"
        assert connection.url == PUBLIC_SERVER and connection.backend == "resco"
        assert connections.server_password(
            db, crypto.load_key(app.instance_path), connection.id) == "server-pass-1"
    assert store.org_file(orgs_dir(app), "acme").exists()
    queue = Queue("default", connection=redis)
    assert len(queue.job_ids) == 1 and queue.job_ids[0].startswith(f"connect-{connection.id}-")
    job = queue.fetch_job(queue.job_ids[0])
    assert job and job.func_name == "jobs.sync.connect" and job.args == (connection.id,)

    page = client.get(location).get_data(as_text=True)
    assert "Organization acme created" in page
    assert "Waiting for a worker" in page
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "progress.js" in page


def test_connect_page_rate_limit_answers_429(tmp_path: Path, redis_url: str,
                                             redis: Redis) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "limited",
                      "REDIS_URL": redis_url, "SECRET_KEY": "test-secret",
                      "RATELIMIT_ENABLED": True, "CONNECT_RATE_LIMIT": "3 per minute"})
    try:
        client = app.test_client()
        codes = [post(client, organization=f"org-{i}", server_url="nope").status_code
                 for i in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = post(client)
        assert refused.status_code == 429 and "Too many requests" in refused.get_data(as_text=True)
        assert int(refused.headers["Retry-After"]) >= 1
        assert client.get("/connect").status_code == 200  # only posts are counted
        assert registry_counts(app) == (0, 0, 0)
    finally:
        app.extensions["portal_rate_limits"].close()
        if "redis" in app.extensions:
            app.extensions["redis"].close()


# --- the status page ---------------------------------------------------------

@pytest.fixture
def connected_page(app: Flask, client: FlaskClient, redis: Redis):
    """A registration made through the page; returns (connection id, status URL)."""
    response = post(client)
    with app.app_context():
        connection = connections.connection_of_org(get_db(), "acme")
    assert connection
    return connection.id, response.headers["Location"]


def set_state(app: Flask, connection_id: int, status: str, error: str | None = None,
              **progress: Any) -> None:
    with app.app_context():
        db = get_db()
        connections.set_status(db, connection_id, status, error=error)
        if progress:
            connections.set_progress(db, connection_id, progress)


def test_status_page_needs_its_token(app: Flask, client: FlaskClient, connected_page) -> None:
    _, url = connected_page
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert client.get(url).status_code == 200
    assert client.get("/connect/acme/status").status_code == 404
    assert client.get("/connect/acme/status?token=" + token[:-2] + "xx").status_code == 404
    assert client.get("/connect/other/status?token=" + token).status_code == 404
    assert client.get("/connect/acme/status.json?token=nope").status_code == 404


def test_status_page_follows_the_job_steps_and_progress(app: Flask, client: FlaskClient,
                                                        connected_page) -> None:
    connection_id, url = connected_page
    json_url = url.replace("/status?", "/status.json?")
    set_state(app, connection_id, "connecting", step="download", entity="account", done=1200,
              total=2400)
    state = client.get(json_url).get_json()
    assert state["status"] == "connecting" and state["percent"] == 50
    assert [s["state"] for s in state["steps"]] == ["done", "done", "running", "todo"]
    page = client.get(url).get_data(as_text=True)
    assert "1,200" in page and "2,400" in page and 'value="1200"' in page
    assert "Connecting…" in page

    set_state(app, connection_id, "connected", step="connected", entity=None, done=5000,
              total=None)
    state = client.get(json_url).get_json()
    assert state["final"] and [s["state"] for s in state["steps"]] == ["done"] * 4
    page = client.get(url).get_data(as_text=True)
    assert "<h2>Connected</h2>" in page and "http://localhost/odata/v4/acme/" in page
    assert "http-equiv" not in page and "progress.js" not in page


def test_status_page_shows_a_failure_and_connects_again_with_fixed_values(
        app: Flask, client: FlaskClient, redis: Redis, connected_page) -> None:
    connection_id, url = connected_page
    Queue("default", connection=redis).empty()
    set_state(app, connection_id, "failed",
              error="the server refused the user name or password (bad credentials)",
              step="checking credentials", entity=None, done=0, total=None)
    page = client.get(url).get_data(as_text=True)
    assert "<h2>Failed</h2>" in page and "refused the user name or password" in page
    assert [s["state"] for s in client.get(url.replace("/status?", "/status.json?"))
            .get_json()["steps"]] == ["failed", "todo", "todo", "todo"]
    assert f'value="{PUBLIC_SERVER}"' in page  # the values to fix are filled in

    retry_url = re.search(r'action="([^"]+/retry[^"]+)"', page).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    bad = client.post(retry_url, data={"csrf_token": token, "backend": "resco",
                                       "server_url": "http://10.1.1.1/", "server_username": "a",
                                       "server_password": "b"})
    assert bad.status_code == 400 and "private" in bad.get_data(as_text=True)
    good = client.post(retry_url, data={"csrf_token": token, "backend": "resco",
                                        "server_url": "http://93.184.215.15/odata/v4/srv/",
                                        "server_username": "admin@example.com",
                                        "server_password": "right-pass-1"})
    assert good.status_code == 302
    with app.app_context():
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        assert connection.status == "pending" and connection.error is None
        assert connection.url == "http://93.184.215.15/odata/v4/srv/"
        assert connections.server_password(db, crypto.load_key(app.instance_path),
                                           connection_id) == "right-pass-1"
    job_ids = Queue("default", connection=redis).job_ids
    assert len(job_ids) == 1 and job_ids[0].startswith(f"connect-{connection_id}-")
    page = client.get(good.headers["Location"]).get_data(as_text=True)
    assert "Connecting again" in page and "Waiting for a worker" in page


def test_status_page_retry_is_refused_unless_the_connection_failed(
        app: Flask, client: FlaskClient, connected_page) -> None:
    _, url = connected_page
    token = csrf_token(client)
    response = client.post(url.replace("/status?", "/retry?"), data={
        "csrf_token": token, "backend": "resco", "server_url": PUBLIC_SERVER,
        "server_username": "a", "server_password": "b"})
    assert response.status_code == 302
    assert "nothing to try again" in client.get(response.headers["Location"]).get_data(
        as_text=True)


def test_status_page_says_resuming_when_a_killed_connect_goes_on(
        app: Flask, client: FlaskClient, connected_page) -> None:
    from portal.orgs import sync_state
    from portal.sync import runs

    connection_id, url = connected_page
    json_url = url.replace("/status?", "/status.json?")
    with app.app_context():
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        queued = runs.running_run(db, connection_id, runs.RunStatus.QUEUED)
        assert queued is not None
        # Its worker took it up, committed a page of accounts, and was killed.
        runs.start_run(db, connection_id, connection.org_id, "connect", "connect", None,
                       queued["id"])
    set_state(app, connection_id, "connecting", step="download", entity="account", done=50,
              total=400)
    assert client.get(json_url).get_json()["resuming"] is False  # the first attempt
    assert "Connecting…" in client.get(url).get_data(as_text=True)
    with store.open_org(orgs_dir(app), "acme") as org, org.db.conn:
        sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
            "account", PUBLIC_SERVER + "accounts?$skiptoken=50", False, None))
        org.db.execute("UPDATE _sync_state SET updated = '2026-01-01T00:00:00Z'")  # before
    with app.app_context():
        db = get_db()
        assert runs.end_active(db, queued["id"], runs.ABANDONED + " (its lock expired)")
        connections.set_status(db, connection_id, "failed", error=runs.ABANDONED)
        runs.request_run(db, connection_id, connection.org_id, "connect", "connect")  # resumed
        connections.set_status(db, connection_id, "pending")
    state = client.get(json_url).get_json()
    assert state["resuming"] is True and state["status"] == "pending"
    page = client.get(url).get_data(as_text=True)
    assert "Waiting for a worker to resume the connect job from where it stopped" in page

    set_state(app, connection_id, "connecting", step="download", entity="account", done=50,
              total=400)
    page = client.get(url).get_data(as_text=True)
    assert "Resuming: the connect goes on from its last committed page" in page
    assert "Connecting…" not in page

    # Nothing committed to go on from (e.g. moved to another server): a fresh start,
    # and still one once it commits pages of its own.
    with store.open_org(orgs_dir(app), "acme") as org:
        sync_state.reset(org)
    assert client.get(json_url).get_json()["resuming"] is False
    assert "Connecting…" in client.get(url).get_data(as_text=True)
    with store.open_org(orgs_dir(app), "acme") as org, org.db.conn:
        sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
            "account", PUBLIC_SERVER + "accounts?$skiptoken=50", False, None))
    assert client.get(json_url).get_json()["resuming"] is False

"""The operator's status page: closed by default, behind the configured operators' sign-in,
with orgs and connections, queues, workers, failed jobs (requeue, delete) from RQ itself."""

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from werkzeug.security import generate_password_hash

from portal.queue import enqueue
from tests.test_admin import orgs, sign_in, token_of  # noqa: F401 (fixture)

OPERATOR, OPERATOR_PASSWORD = "ops", "ops-pass-1"


@pytest.fixture
def operated(orgs: Flask) -> Flask:  # noqa: F811
    """The portal with one operator configured."""
    orgs.config["OPERATORS"] = {OPERATOR: generate_password_hash(OPERATOR_PASSWORD)}
    return orgs


def operator_sign_in(client: FlaskClient, name: str = OPERATOR,
                     password: str = OPERATOR_PASSWORD):
    token = token_of(client.get("/status/sign-in").get_data(as_text=True))
    return client.post("/status/sign-in", data={"username": name, "password": password,
                                                "csrf_token": token})


def operator_routes(app: Flask) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("operator.") and rule.endpoint not in (
                "operator.sign_in", "operator.sign_out"):
            url = rule.rule.replace("<job_id>", "sync-1").replace("<action>", "delete")
            found += [(m, url) for m in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return found


def test_status_page_is_closed_without_configured_operators(orgs: Flask) -> None:  # noqa: F811
    client = orgs.test_client()
    assert client.get("/status").location == "/status/sign-in"
    page = client.get("/status/sign-in").get_data(as_text=True)
    assert "No operator is configured" in page and 'name="password"' not in page
    answer = client.post("/status/sign-in", data={"username": OPERATOR, "password": "x"})
    assert answer.status_code in (400, 403)
    assert client.get("/status").status_code == 302


@pytest.mark.parametrize("name, password", [(OPERATOR, "wrong-pass-1"), ("nobody", "x")])
def test_status_sign_in_refuses_wrong_credentials(operated: Flask, name: str,
                                                  password: str) -> None:
    client = operated.test_client()
    answer = operator_sign_in(client, name, password)
    assert answer.status_code == 401 and "name or password is wrong" in answer.get_data(
        as_text=True)
    assert client.get("/status").status_code == 302


@pytest.mark.parametrize("who", ["signed-out", "org-admin"])
def test_status_every_route_refuses_who_is_not_an_operator(operated: Flask, redis: Redis,
                                                           who: str) -> None:
    client = operated.test_client()
    if who == "org-admin":
        assert sign_in(client).status_code == 302
    token = token_of(client.get("/status/sign-in").get_data(as_text=True))
    for method, url in operator_routes(operated):
        answer = client.open(url, method=method, data={"csrf_token": token})
        assert answer.status_code == 302 and answer.location == "/status/sign-in", url


def test_status_shows_orgs_queues_and_a_failed_job_to_requeue_and_delete(
        operated: Flask, redis: Redis) -> None:
    with operated.app_context():
        # A job that fails for a reason an operator can read: its connection does not exist.
        enqueue(redis, "jobs.sync.sync_run", 999, "cli", job_id="sync-999")
        SimpleWorker(["default"], connection=redis).work(burst=True)
    client = operated.test_client()
    assert operator_sign_in(client).location == "/status"
    page = client.get("/status").get_data(as_text=True)
    assert 'id="org-acme"' in page and 'id="org-beta"' in page
    assert re.search(r'id="org-acme">.*?connected.*?crm\.example\.com', page, re.S)
    assert "No worker is running" in page
    assert re.search(r'id="queue-default">.*?failed-count">1<', page, re.S)
    assert "connection 999 does not exist" in page
    assert "Heartbeat job last ran: <strong>never" in page

    answer = client.post("/status/jobs/sync-999/requeue", data={"csrf_token": token_of(page)})
    assert answer.location == "/status"
    assert Queue("default", connection=redis).job_ids == ["sync-999"]
    with operated.app_context():
        SimpleWorker(["default"], connection=redis).work(burst=True)
    page = client.get("/status").get_data(as_text=True)
    assert client.post("/status/jobs/sync-999/delete",
                       data={"csrf_token": token_of(page)}).status_code == 302
    assert "No failed jobs." in client.get("/status").get_data(as_text=True)
    # A job that is not (or no longer) failed: 404, nothing done.
    assert client.post("/status/jobs/sync-999/requeue",
                       data={"csrf_token": token_of(page)}).status_code == 404


def test_status_actions_need_the_csrf_token(operated: Flask, redis: Redis) -> None:
    with operated.app_context():
        enqueue(redis, "jobs.sync.sync_run", 999, "cli", job_id="sync-999")
        SimpleWorker(["default"], connection=redis).work(burst=True)
    client = operated.test_client()
    operator_sign_in(client)
    assert client.post("/status/jobs/sync-999/delete").status_code == 400
    assert "connection 999 does not exist" in client.get("/status").get_data(as_text=True)

"""Service protection on the Dataverse root: per-user budgets in the real (bundled) Redis.

Microsoft Learn, powerapps-docs `developer/data-platform/api-limits.md` ("Service
protection API limits"): 429 with Retry-After, the error codes 0x80072322 (requests),
0x80072321 (execution time), 0x80072326 (concurrent requests) and their messages,
and the x-ms-ratelimit-*-xrm-requests headers. The doc shows no example response
body, so the body is Dataverse's error shape with the documented code and message.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from portal import create_app
from portal.db import get_db
from portal.orgs import registry
from portal.web import service_protection
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user
from tests.odata_helpers import AUTH

REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_LEFT = "x-ms-ratelimit-time-remaining-xrm-requests"


def protected_app(tmp_path: Path, redis_url: str, **limits: Any) -> Flask:
    """A portal with an org `sales` and service protection on, with these limits."""
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "instance",
                      "REDIS_URL": redis_url, "SECRET_KEY": "test-secret",
                      "DATAVERSE_SERVICE_PROTECTION": True, **limits})
    with app.app_context():
        registry.create_org(get_db(), orgs_dir(app), "sales", email=ADMIN_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
    return app


@pytest.fixture
def make_app(tmp_path: Path, redis_url: str, redis: Redis) -> Iterator[Any]:
    """Build protected apps (Redis emptied first); their Redis clients closed afterwards."""
    made: list[Flask] = []

    def make(**limits: Any) -> tuple[Flask, FlaskClient]:
        app = protected_app(tmp_path / str(len(made)), redis_url, **limits)
        made.append(app)
        return app, app.test_client()

    yield make
    for app in made:
        client = app.extensions.get("redis")
        if client is not None:
            client.close()


def test_requests_over_the_budget_get_429_with_retry_after(make_app: Any) -> None:
    app, client = make_app(DATAVERSE_LIMIT_REQUESTS=3)
    headers = bearer(client_token(client, *new_application_user(app)))
    answers = [client.get(DV_ROOT + "accounts", headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers[REMAINING] for a in answers] == ["2", "1", "0"]
    assert all(int(a.headers[TIME_LEFT]) > 0 for a in answers)
    refused = client.get(DV_ROOT + "accounts", headers=headers)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 300 + service_protection.BUCKET_S
    assert refused.json == {"error": {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 3 over time window of 300 "
                   "seconds."}}
    # Another user has a budget of its own.
    other = bearer(client_token(client, *new_application_user(app)))
    assert client.get(DV_ROOT + "accounts", headers=other).status_code == 200


def test_execution_time_over_the_budget_gets_429(make_app: Any) -> None:
    app, client = make_app(DATAVERSE_LIMIT_EXECUTION_MS=1)  # any request takes >= 1 ms
    headers = bearer(client_token(client, *new_application_user(app)))
    assert client.get(DV_ROOT + "accounts", headers=headers).status_code == 200
    refused = client.get(DV_ROOT + "accounts", headers=headers)
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "0x80072321"
    assert refused.json["error"]["message"].startswith(
        "Combined execution time of incoming requests exceeded limit of 1 milliseconds over "
        "time window of 300 seconds.")
    assert int(refused.headers["Retry-After"]) >= 1


def test_concurrent_requests_over_the_limit_get_429(make_app: Any, redis: Redis) -> None:
    app, client = make_app(DATAVERSE_LIMIT_CONCURRENT=1)
    client_id, secret = new_application_user(app)
    headers = bearer(client_token(client, client_id, secret))
    with app.app_context():
        row = get_db().execute("SELECT id FROM application_users WHERE client_id = ?",
                               [client_id]).fetchone()
    key = service_protection.user_key("sales", {"kind": "application", "id": row[0]})
    running = service_protection.Held(redis, key, service_protection.limits_of(app.config))
    running.enter()  # a request of this user still running
    refused = client.get(DV_ROOT + "accounts", headers=headers)
    assert refused.status_code == 429
    assert refused.json["error"] == {
        "code": "0x80072326", "message": "Number of concurrent requests exceeded the limit of 1."}
    assert refused.headers["Retry-After"] == "1"
    running.leave()
    assert client.get(DV_ROOT + "accounts", headers=headers).status_code == 200


def test_refused_requests_change_nothing(make_app: Any) -> None:
    app, client = make_app(DATAVERSE_LIMIT_REQUESTS=1)
    headers = bearer(client_token(client, *new_application_user(app)))
    assert client.get(DV_ROOT + "accounts", headers=headers).status_code == 200
    refused = client.post(DV_ROOT + "accounts", json={"name": "Not written"}, headers=headers)
    assert refused.status_code == 429
    listed = client.get("/odata/v4/sales/accounts", headers=AUTH).json["value"]
    assert listed == []


def test_org_api_is_not_limited(make_app: Any) -> None:
    _, client = make_app(DATAVERSE_LIMIT_REQUESTS=1)
    answers = [client.get("/odata/v4/sales/accounts", headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert REMAINING not in answers[0].headers


def test_service_protection_is_off_by_default(app: Flask, client: FlaskClient,
                                              sales_org: object) -> None:
    assert app.config["DATAVERSE_SERVICE_PROTECTION"] is False
    headers = bearer(client_token(client, *new_application_user(app)))
    answer = client.get(DV_ROOT + "accounts", headers=headers)
    assert answer.status_code == 200 and REMAINING not in answer.headers


def test_every_web_api_answer_recommends_the_configured_parallelism(make_app: Any) -> None:
    # x-ms-dop-hint on answers and refusals of the Web API (as Dataverse's), from the setting;
    # the token endpoint is Entra's and has none.
    app, client = make_app(DATAVERSE_LIMIT_REQUESTS=1, DATAVERSE_DOP_HINT=3)
    token = client.post("/dataverse/sales/oauth2/v2.0/token", data={})
    assert token.status_code == 400 and "x-ms-dop-hint" not in token.headers
    headers = bearer(client_token(client, *new_application_user(app)))
    answers = [client.get(DV_ROOT + "accounts", headers=headers),
               client.get(DV_ROOT + "accounts", headers=headers),  # over the budget: 429
               client.get(DV_ROOT + "nosuchset", headers=bearer("not-a-token"))]
    assert [a.status_code for a in answers] == [200, 429, 401]
    assert [a.headers.get("x-ms-dop-hint") for a in answers] == ["3", "3", "3"]

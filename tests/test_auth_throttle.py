"""Failed sign-ins are throttled per account and per client address (portal.web.auth_throttle).

Every sign-in path answers 429 with Retry-After after too many failures, the
same whether the account exists, while other users' sign-ins go on.
"""

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from werkzeug.test import TestResponse as FlaskTestResponse

from portal import create_app
from portal.db import get_db
from portal.orgs import registry, tokens
from portal.web import auth_throttle
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

OTHER_EMAIL = "other-admin@example.com"
OTHER_PASSWORD = "other-pass-22"


@pytest.fixture
def limited(tmp_path: Path, redis_url: str, redis: Redis) -> Iterator[Flask]:
    """A portal with throttling on: 3 failures per account, 8 per address, a minute each."""
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "limited",
                      "REDIS_URL": redis_url, "SECRET_KEY": "test-secret",
                      "RATELIMIT_ENABLED": True, "AUTH_RATE_LIMIT": "3 per minute",
                      "AUTH_ADDRESS_RATE_LIMIT": "8 per minute"})
    orgs = tmp_path / "limited" / "orgs"
    with app.app_context():
        registry.create_org(get_db(), orgs, "sales", email=ADMIN_EMAIL, password=ADMIN_PASSWORD,
                            template="sales")
        registry.create_org(get_db(), orgs, "other", email=OTHER_EMAIL, password=OTHER_PASSWORD,
                            template="sales")
    yield app
    app.extensions["portal_rate_limits"].close()
    if "redis" in app.extensions:
        app.extensions["redis"].close()


def basic(email: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    return {"Authorization": "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()}


def odata(client: FlaskClient, org: str, headers: dict[str, str],
          address: str = "127.0.0.1"):
    return client.get(f"/odata/v4/{org}/accounts", headers=headers,
                      environ_base={"REMOTE_ADDR": address})


def test_org_api_answers_429_after_n_wrong_passwords_and_others_still_sign_in(
        limited: Flask) -> None:
    client = limited.test_client()
    wrong = [odata(client, "sales", basic(ADMIN_EMAIL, f"wrong-{i}")).status_code
             for i in range(3)]
    assert wrong == [401, 401, 401]
    refused = odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD))
    assert refused.status_code == 429  # even the right password, for the window
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.get_json()["error"]
    assert error["code"] == "TooManyRequests" and "failed sign-ins" in error["message"]
    # Another user (from the same address) signs in as before.
    assert odata(client, "other", basic(OTHER_EMAIL, OTHER_PASSWORD)).status_code == 200
    # Requests without credentials are no failed sign-ins.
    assert all(client.get("/odata/v4/other/accounts").status_code == 401 for _ in range(5))
    assert odata(client, "other", basic(OTHER_EMAIL, OTHER_PASSWORD)).status_code == 200


def test_the_answer_is_the_same_whether_the_account_exists(limited: Flask) -> None:
    client = limited.test_client()
    answers = {}
    for email in (ADMIN_EMAIL, "nobody@example.com"):
        codes = [odata(client, "sales", basic(email, "wrong-pass-1")).status_code
                 for _ in range(4)]
        refused = odata(client, "sales", basic(email, "wrong-pass-1"))
        answers[email] = (codes, refused.status_code, refused.get_json()["error"]["code"])
    assert answers[ADMIN_EMAIL] == answers["nobody@example.com"] == \
        ([401, 401, 401, 429], 429, "TooManyRequests")


def test_failures_from_one_address_are_throttled_across_accounts(limited: Flask) -> None:
    client = limited.test_client()
    codes = [odata(client, "sales", basic(f"guess{i}@example.com", "wrong-pass-1"),
                   "192.0.2.7").status_code for i in range(8)]
    assert codes == [401] * 8
    # That address is done for the window, whoever it tries; another address is not.
    assert odata(client, "other", basic(OTHER_EMAIL, OTHER_PASSWORD),
                 "192.0.2.7").status_code == 429
    assert odata(client, "other", basic(OTHER_EMAIL, OTHER_PASSWORD),
                 "192.0.2.8").status_code == 200


def test_wrong_api_tokens_are_throttled_by_address_not_by_org(limited: Flask) -> None:
    with limited.app_context():
        _, token = tokens.create_token(get_db(), "sales", ADMIN_EMAIL)
    client = limited.test_client()
    bearer = {"Authorization": "Bearer not-a-token"}
    codes = [odata(client, "sales", bearer, "192.0.2.9").status_code for _ in range(9)]
    assert codes == [401] * 8 + [429]
    # The org's programs on other addresses go on with their token.
    assert odata(client, "sales", {"Authorization": f"Bearer {token}"},
                 "192.0.2.10").status_code == 200


def test_sync_service_answers_429_in_its_own_format(limited: Flask) -> None:
    client = limited.test_client()
    codes = [client.post("/rest/v1/sync/sales/SyncAsync",
                         headers=basic(ADMIN_EMAIL, "wrong-pass-1")).status_code
             for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    refused = client.post("/rest/v1/sync/sales/SyncAsync",
                          headers={**basic(ADMIN_EMAIL, ADMIN_PASSWORD),
                                   "Accept": "application/json"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["Error"]["Code"] == "TooManyRequests"
    # The other org's admin is not affected (its org has no connection: a 409, not a 429).
    assert client.post("/rest/v1/sync/other/SyncAsync",
                       headers=basic(OTHER_EMAIL, OTHER_PASSWORD)).status_code == 409


def test_dataverse_token_endpoint_answers_429_after_n_wrong_secrets(limited: Flask) -> None:
    from portal.orgs.application_users import create_application_user

    with limited.app_context():
        app_user, secret = create_application_user(get_db(), "sales", "integration")
        other, other_secret = create_application_user(get_db(), "sales", "reporting")
    client = limited.test_client()
    scope = "http://localhost/dataverse/sales/.default"

    def ask(client_id: str, client_secret: str) -> int:
        return client.post("/dataverse/sales/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": client_id,
            "client_secret": client_secret, "scope": scope}).status_code

    assert [ask(app_user["client_id"], f"wrong-{i}") for i in range(3)] == [401, 401, 401]
    refused = client.post("/dataverse/sales/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": app_user["client_id"],
        "client_secret": secret, "scope": scope})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert ask(other["client_id"], other_secret) == 200  # another application user signs in
    # The password grant counts per e-mail the same way.
    wrong = [client.post("/dataverse/sales/oauth2/v2.0/token", data={
        "grant_type": "password", "client_id": "51f81489-12ee-4a9e-aaae-a2591f45987d",
        "username": ADMIN_EMAIL, "password": f"wrong-{i}", "scope": scope}).status_code
        for i in range(4)]
    assert wrong == [400, 400, 400, 429]


def test_admin_sign_in_form_answers_429_page_after_n_wrong_passwords(limited: Flask) -> None:
    import re

    client = limited.test_client()

    def attempt(org: str, email: str, password: str) -> FlaskTestResponse:
        page = client.get("/admin/sign-in").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token is not None
        return client.post("/admin/sign-in", data={
            "organization": org, "email": email, "password": password,
            "csrf_token": token.group(1)})

    assert [attempt("sales", ADMIN_EMAIL, f"wrong-{i}").status_code
            for i in range(3)] == [401, 401, 401]
    refused = attempt("sales", ADMIN_EMAIL, ADMIN_PASSWORD)  # even the right password, now
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "text/html" in refused.content_type and "Traceback" not in refused.get_data(True)
    # Another org's admin signs in meanwhile.
    assert attempt("other", OTHER_EMAIL, OTHER_PASSWORD).status_code == 302


def test_a_sign_in_asks_redis_once_for_all_its_limits(limited: Flask, redis: Redis) -> None:
    # Two limits of the account and two of the address: four counters, one MGET.
    limited.config["AUTH_RATE_LIMIT"] = "3 per minute; 10 per hour"
    limited.extensions["portal_auth_throttle"] = auth_throttle.AuthThrottle(
        limited, limited.extensions["portal_rate_limits"])
    client = limited.test_client()
    assert odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 200
    before = redis.info("commandstats")
    assert odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 200
    after = redis.info("commandstats")

    def calls(command: str) -> int:
        return int(after.get(f"cmdstat_{command}", {}).get("calls", 0)) - int(
            before.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert (calls("mget"), calls("get")) == (1, 0)
    # The hourly limit of the account is read too: it throttles once reached.
    for i in range(3):
        odata(client, "sales", basic(ADMIN_EMAIL, f"wrong-{i}"))
    assert odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD)).status_code == 429


def test_unreachable_redis_is_not_asked_again_for_a_while(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "down",
                      "REDIS_URL": "redis://127.0.0.1:1", "SECRET_KEY": "test-secret",
                      "RATELIMIT_ENABLED": True})
    with app.app_context():
        registry.create_org(get_db(), tmp_path / "down" / "orgs", "sales", email=ADMIN_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
    client = app.test_client()
    answers = [odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD)).status_code,
               odata(client, "sales", basic(ADMIN_EMAIL, "wrong")).status_code,
               odata(client, "sales", basic(ADMIN_EMAIL, ADMIN_PASSWORD)).status_code]
    assert answers == [200, 401, 200]  # not throttled while the queue is down
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1  # one refused connection, not one per request
    app.extensions["portal_rate_limits"].close()

"""The sync web service: ConnectAsync (the seed's XML ConnectRequest, and JSON), SyncAsync,
job status, and every refusal leaving nothing behind.

The client portal is the in-process test app; the server org is on a real
portal process (gunicorn on 127.0.0.1); jobs run on a real RQ SimpleWorker
against the test Redis, bound to the client app's context.
"""

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker

from portal import crypto
from portal.backends.registry import backend_type
from portal.db import get_db
from portal.orgs import registry, store
from portal.sync import connections, registration
from portal.web.connect_request import parse_json
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir
from tests.sync_helpers import Side, seed_sales

RESCO = backend_type("resco").provider_id
DYNAMICS = "60650fb3-5d8b-45dd-b82e-459f3b019e9a"
SALESFORCE = backend_type("salesforce").provider_id

# The seed's ConnectRequest, as written in the Resco summary (whitespace included).
SEED_XML = """<ConnectRequest>     
    <SyncSetup>         
        <ProviderID>60650fb3-5d8b-45dd-b82e-459f3b019e9a</ProviderID>        
        <Url>urlofserverorganization</Url>   
        <UserName>martin.liscinsky@resco.net</UserName>       
        <Password>xxx</Password>         
        <RegistrationInfo>             
            <Email>martin.liscinsky@resco.net</Email>             
            <FirstName>Martin</FirstName>             
            <LastName>Liscinsky</LastName>             
            <Company>Resco</Company>         
        </RegistrationInfo>    
    </SyncSetup> 
</ConnectRequest>"""  # noqa: W291 - the seed's trailing spaces, kept on purpose

CLIENT_PASSWORD = "client-pass-1"
FILTER = ('<fetch><entity name="account"><filter type="and">'
          '<condition attribute="numberofemployees" operator="gt" value="2500"/>'
          '</filter></entity></fetch>')


def seed_xml(server_url: str, *, password: str = ADMIN_PASSWORD,
             extra_registration: str = f"<Password>{CLIENT_PASSWORD}</Password>",
             extra_setup: str = "") -> str:
    """The seed's XML with the resco ProviderID and a working server substituted."""
    xml = (SEED_XML.replace(DYNAMICS, RESCO)
           .replace("<Url>urlofserverorganization</Url>", f"<Url>{server_url}</Url>")
           .replace("<UserName>martin.liscinsky@resco.net</UserName>",
                    f"<UserName>{ADMIN_EMAIL}</UserName>")
           .replace("<Password>xxx</Password>", f"<Password>{password}</Password>"))
    xml = xml.replace("</RegistrationInfo>", extra_registration + "</RegistrationInfo>")
    return xml.replace("</SyncSetup>", extra_setup + "</SyncSetup>")


def basic(email: str = "martin.liscinsky@resco.net", password: str = CLIENT_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()


def post_xml(client: FlaskClient, org: str, xml: str | bytes, call: str = "ConnectAsync",
             **headers: str):
    return client.post(f"/rest/v1/sync/{org}/{call}", data=xml,
                       headers={"Content-Type": "application/xml", **headers})


def post_json(client: FlaskClient, org: str, document: Any, call: str = "ConnectAsync",
              **headers: str):
    return client.post(f"/rest/v1/sync/{org}/{call}", data=json.dumps(document),
                       headers={"Content-Type": "application/json", **headers})


def xml_value(body: str, name: str) -> str:
    from defusedxml.ElementTree import fromstring

    found = fromstring(body).find(name)
    assert found is not None, body
    return found.text or ""


def nothing_created(app: Flask, redis: Redis) -> None:
    with app.app_context():
        db = get_db()
        assert (db.table("orgs").count, db.table("org_users").count,
                db.table("connections").count) == (0, 0, 0)
    assert not any(orgs_dir(app).glob("*.db")) if orgs_dir(app).exists() else True
    assert Queue("default", connection=redis).count == 0


def work(app: Flask, redis: Redis) -> None:
    """Run every queued job on a real RQ worker bound to the client app, until none is left."""
    with app.app_context():
        SimpleWorker(["default"], connection=redis).work(burst=True)


@pytest.fixture
def service_app(app: Flask) -> Flask:
    """The client portal: servers on loopback allowed (the server portal is local)."""
    app.config["ALLOW_PRIVATE_SERVERS"] = True
    return app


@pytest.fixture
def server_url(tmp_path: Path, redis_url: str, portal_process) -> str:
    """A real portal process hosting org `srv` (sales template, 60 accounts); its OData root."""
    server = Side(tmp_path / "server", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=60)
    return str(portal_process(tmp_path / "server").odata_root("srv"))


def client_of(app: Flask) -> FlaskClient:
    return app.test_client()


# --- connecting ------------------------------------------------------------------

def test_connect_async_seed_xml_creates_and_connects_an_org(service_app: Flask, redis: Redis,
                                                            server_url: str) -> None:
    client = client_of(service_app)
    response = post_xml(client, "martin", seed_xml(server_url))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.mimetype == "application/xml"
    body = response.get_data(as_text=True)
    assert xml_value(body, "ConnectionStatus") == "pending"
    job_id = xml_value(body, "JobId")
    status_url = xml_value(body, "StatusUrl")
    with service_app.app_context():
        db = get_db()
        user = registry.authenticate(db, "martin", "martin.liscinsky@resco.net", CLIENT_PASSWORD)
        assert user and user["firstname"] == "Martin" and user["company"] == "Resco"
        connection = connections.connection_of_org(db, "martin")
        run_id = db.execute("SELECT id FROM sync_runs WHERE kind = 'connect'").fetchone()[0]
        assert connection and job_id == f"connect-{connection.id}-{run_id}"
    work(service_app, redis)
    with service_app.app_context():
        connection = connections.connection_of_org(get_db(), "martin")
        assert connection and connection.status == "connected", connection and connection.error
    with store.open_org(orgs_dir(service_app), "martin") as org:
        assert org.db.table("account").count == 60

    # The status URL works without credentials (it carries a token), in the format asked for.
    split = urlsplit(status_url)
    state = client.get(f"{split.path}?{split.query}", headers={"Accept": "application/json"})
    assert state.status_code == 200
    document = state.get_json()
    assert document["JobId"] == job_id and document["ConnectionStatus"] == "connected"
    assert document["JobStatus"] == "succeeded"
    assert {"Step", "Entity", "Done", "Total"} <= set(document["ConnectionProgress"])
    assert document["ConnectionProgress"]["Ended"] == "succeeded"
    assert {c["Entity"]: c["Downloaded"] for c in document["Counts"]}["account"] == 60
    assert client.get(split.path).status_code == 401  # no token, no credentials
    assert client.get(split.path, headers={"Authorization": basic()}).status_code == 200
    assert client.get(f"{split.path}?token=forged").status_code == 401


def test_connect_async_the_seeds_own_dynamics_request_ends_connected_with_identical_data(
        service_app: Flask, redis: Redis, tmp_path: Path, redis_url: str, portal_process,
        monkeypatch) -> None:
    # The seed's ConnectRequest as sent, ProviderID 60650fb3-... kept, pointed at a hosted
    # org's Dataverse Web API root (TLS, test CA) with the org user's e-mail and password.
    from tests.sync_helpers import assert_identical
    from tests.test_sync import SALES, dataverse_tls

    tls = dataverse_tls(tmp_path / "tls")
    server = Side(tmp_path / "server", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=40)
    process = portal_process(tmp_path / "server", tls=tls)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    xml = seed_xml(f"{process.url}/dataverse/srv").replace(RESCO, DYNAMICS)
    assert f"<ProviderID>{DYNAMICS}</ProviderID>" in xml
    response = post_xml(client_of(service_app), "martin", xml)
    assert response.status_code == 202, response.get_data(as_text=True)
    work(service_app, redis)
    with service_app.app_context():
        connection = connections.connection_of_org(get_db(), "martin")
        assert connection and connection.status == "connected", connection and connection.error
        assert connection.backend == "dynamics"
    with server.org("srv") as a, store.open_org(orgs_dir(service_app), "martin") as b:
        assert list(b.entities()) == list(a.entities())
        assert_identical(a, b, SALES)


def test_connect_async_exact_seed_xml_is_taken_as_dynamics_up_to_its_placeholder_url(
        app: Flask, redis: Redis) -> None:
    # The seed's ProviderID is the dynamics backend now; its Url is a placeholder (and
    # this portal has no mail, so the new admin's password is sent).
    xml = SEED_XML.replace("<Company>Resco</Company>",
                           f"<Company>Resco</Company><Password>{CLIENT_PASSWORD}</Password>")
    response = post_xml(client_of(app), "martin", xml)
    assert response.status_code == 400
    assert xml_value(response.get_data(as_text=True), "Element") == "SyncSetup/Url"
    nothing_created(app, redis)


def test_connect_async_json_creates_and_connects_with_entities_and_filters_requested(
        service_app: Flask, redis: Redis, server_url: str) -> None:
    client = client_of(service_app)
    response = post_json(client, "jsonorg", {"ConnectRequest": {"SyncSetup": {
        "ProviderID": RESCO, "Url": server_url, "UserName": ADMIN_EMAIL,
        "Password": ADMIN_PASSWORD,
        "RegistrationInfo": {"Email": "ann@example.com", "Password": CLIENT_PASSWORD,
                             "FirstName": "Ann", "JobTitle": "Admin", "Phone": "1",
                             "Country": "SK"},
        "Entities": ["account", "contact"], "SyncFiltersXml": FILTER}}})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert document["ConnectionStatus"] == "pending" and document["JobId"].startswith("connect-")
    with service_app.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "jsonorg")
        assert connection
        # Kept until the connect job knows the server's entities (see registration.py).
        setup = registration.requested_setup(db, connection.id)
        assert setup and setup.entities == ["account", "contact"]
        assert 'value="2500"' in setup.filters["account"]
        user = registry.authenticate(db, "jsonorg", "ann@example.com", CLIENT_PASSWORD)
        assert user and user["jobtitle"] == "Admin" and user["country"] == "SK"
    work(service_app, redis)
    with service_app.app_context():
        connection = connections.connection_of_org(get_db(), "jsonorg")
        assert connection and connection.status == "connected", connection and connection.error


def test_connect_async_for_a_connected_org_updates_metadata_and_applies_entities_and_filters(
        service_app: Flask, redis: Redis, server_url: str) -> None:
    client = client_of(service_app)
    assert post_xml(client, "martin", seed_xml(server_url)).status_code == 202
    work(service_app, redis)
    again = seed_xml(server_url, extra_registration="", extra_setup=(
        "<Entities><Entity>account</Entity><Entity>lead</Entity></Entities>"
        f"<SyncFiltersXml><![CDATA[{FILTER}]]></SyncFiltersXml>"))

    refused = post_xml(client, "martin", again)  # the org exists: its admin must authenticate
    assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
    wrong = post_xml(client, "martin", again, Authorization=basic(password="wrong-pass-1"))
    assert wrong.status_code == 401

    response = post_xml(client, "martin", again, Authorization=basic(),
                        Accept="application/json")
    assert response.status_code == 202, response.get_data(as_text=True)
    document = response.get_json()
    assert document["JobId"].startswith("metadata-")
    assert "updating its metadata" in document["Message"]
    with service_app.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "martin")
        assert connection
        settings = {s.entity: s for s in connections.entity_settings(db, connection.id)}
        assert {n for n, s in settings.items() if s.enabled} == {"account", "lead"}
        assert 'operator="gt"' in (settings["account"].filter or "")
    assert Queue("default", connection=redis).job_ids == [document["JobId"]]
    work(service_app, redis)
    with service_app.app_context():
        runs = list(get_db().query("SELECT kind, trigger, status FROM sync_runs ORDER BY id"))
    assert runs[-1] == {"kind": "metadata", "trigger": "api", "status": "succeeded"}

    # A filter that does not fit the server's metadata: a 400 naming it, nothing changed.
    # (The <fetch> comes as an element inside <SyncFiltersXml> this time, not as text.)
    bad = seed_xml(server_url, extra_registration="", extra_setup=(
        f"<SyncFiltersXml>{FILTER.replace('numberofemployees', 'nosuch')}</SyncFiltersXml>"))
    response = post_xml(client, "martin", bad, Authorization=basic())
    assert response.status_code == 400
    assert "nosuch" in xml_value(response.get_data(as_text=True), "Message")
    assert xml_value(response.get_data(as_text=True), "Element") == "SyncSetup/SyncFiltersXml"
    assert Queue("default", connection=redis).count == 0


def test_sync_async_twice_queues_one_run(service_app: Flask, redis: Redis,
                                         server_url: str) -> None:
    client = client_of(service_app)
    assert post_xml(client, "martin", seed_xml(server_url)).status_code == 202
    not_yet = client.post("/rest/v1/sync/martin/SyncAsync", headers={"Authorization": basic()})
    assert not_yet.status_code == 409 and not_yet.get_json()["Error"]["Code"] == "NotConnected"
    work(service_app, redis)

    first = client.post("/rest/v1/sync/martin/SyncAsync", headers={"Authorization": basic()})
    second = client.post("/rest/v1/sync/martin/SyncAsync",
                         headers={"Authorization": basic(), "Accept": "application/xml"})
    assert first.status_code == second.status_code == 202
    assert first.get_json()["AlreadyQueued"] is False
    body = second.get_data(as_text=True)
    assert xml_value(body, "AlreadyQueued") == "true"
    assert xml_value(body, "JobId") == first.get_json()["JobId"]
    assert "already" in xml_value(body, "Message")
    assert Queue("default", connection=redis).count == 1
    work(service_app, redis)
    with service_app.app_context():
        runs = list(get_db().query("SELECT kind, trigger FROM sync_runs WHERE kind = 'sync'"))
    assert runs == [{"kind": "sync", "trigger": "api"}]

    assert client.post("/rest/v1/sync/martin/SyncAsync").status_code == 401
    assert client.post("/rest/v1/sync/martin/SyncAsync",
                       headers={"Authorization": basic(password="nope-nope-1")}).status_code == 401


def test_each_status_url_names_one_run_and_tells_its_outcome_after_redis_forgot_it(
        service_app: Flask, redis: Redis, server_url: str) -> None:
    client = client_of(service_app)
    assert post_xml(client, "martin", seed_xml(server_url)).status_code == 202
    work(service_app, redis)

    def state(document: dict[str, Any]) -> dict[str, Any]:
        split = urlsplit(document["StatusUrl"])
        answer = client.get(f"{split.path}?{split.query}", headers={"Accept": "application/json"})
        assert answer.status_code == 200
        return dict(answer.get_json())

    first = client.post("/rest/v1/sync/martin/SyncAsync", headers={"Authorization": basic()})
    queued = state(first.get_json())
    assert queued["JobStatus"] == "queued" and queued["RunId"] == first.get_json()["RunId"]
    work(service_app, redis)
    assert not Queue("default", connection=redis).job_ids  # sync jobs keep no result in Redis
    ended = state(first.get_json())
    assert ended["JobStatus"] == "succeeded" and ended["Ended"] and "Error" not in ended
    assert {c["Entity"] for c in ended["Counts"]} >= {"account", "contact"}
    assert ended["ConnectionProgress"]["Ended"] == "succeeded"
    assert ended["ConnectionProgress"]["RunId"] == ended["RunId"]

    # The next run has its own id; the first run's URL still tells the first run.
    second = client.post("/rest/v1/sync/martin/SyncAsync", headers={"Authorization": basic()})
    assert second.get_json()["JobId"] != first.get_json()["JobId"]
    assert state(second.get_json())["JobStatus"] == "queued"
    assert state(first.get_json())["JobStatus"] == "succeeded"
    assert state(first.get_json())["RunId"] == ended["RunId"]

    # A run that failed tells its reason, after its job is gone from Redis.
    with service_app.app_context():
        db = get_db()
        connection = connections.connection_of_org(db, "martin")
        assert connection is not None
        connections.update_server(db, crypto.load_key(service_app.instance_path),
                                  connection.id, backend="resco", url=server_url,
                                  username=ADMIN_EMAIL, password="wrong-password-1")
        connections.set_status(db, connection.id, "connected")
    work(service_app, redis)
    redis.flushdb()
    failed = state(second.get_json())
    assert failed["JobStatus"] == "failed" and "refused" in failed["Error"]


# --- refusals: the right 4xx, nothing created -------------------------------------

XXE = """<?xml version="1.0"?>
<!DOCTYPE ConnectRequest [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ConnectRequest><SyncSetup><ProviderID>&xxe;</ProviderID></SyncSetup></ConnectRequest>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ConnectRequest><SyncSetup><ProviderID>&lol3;</ProviderID></SyncSetup></ConnectRequest>"""

GOOD = seed_xml("http://127.0.0.1:9/odata/v4/srv/")


@pytest.mark.parametrize("body, status, code, element", [
    ("<ConnectRequest><SyncSetup>", 400, "MalformedXml", "ConnectRequest"),
    ("<ConnectRequest/>", 400, "MissingElement", "ConnectRequest/SyncSetup"),
    ("<Connect/>", 400, "UnknownElement", "Connect"),
    (XXE, 400, "ForbiddenXml", "ConnectRequest"),
    (BILLION_LAUGHS, 400, "ForbiddenXml", "ConnectRequest"),
    (GOOD.replace(RESCO, "11111111-2222-3333-4444-555555555555"), 400, "InvalidInput",
     "SyncSetup/ProviderID"),
    (GOOD.replace(f"<ProviderID>{RESCO}</ProviderID>", ""), 400, "MissingElement",
     "SyncSetup/ProviderID"),
    (GOOD.replace("<Url>http://127.0.0.1:9/odata/v4/srv/</Url>", ""), 400, "MissingElement",
     "SyncSetup/Url"),
    (GOOD.replace(f"<UserName>{ADMIN_EMAIL}</UserName>", ""), 400, "MissingElement",
     "SyncSetup/UserName"),
    (GOOD.replace(f"<Password>{ADMIN_PASSWORD}</Password>", ""), 400, "MissingElement",
     "SyncSetup/Password"),
    (GOOD.replace(f"<Password>{CLIENT_PASSWORD}</Password>", ""), 400, "MissingElement",
     "RegistrationInfo/Password"),
    (GOOD.replace(f"<Password>{CLIENT_PASSWORD}</Password>", "<Password>weak</Password>"), 400,
     "InvalidElement", "RegistrationInfo/Password"),
    (GOOD.replace("<Email>martin.liscinsky@resco.net</Email>", "<Email>nope</Email>"), 400,
     "InvalidInput", "RegistrationInfo/Email"),
    (GOOD.replace("<RegistrationInfo>", "<Registration>").replace(
        "</RegistrationInfo>", "</Registration>"), 400, "UnknownElement",
     "SyncSetup/Registration"),
    (GOOD.replace("<Company>Resco</Company>", "<Company><b>x</b></Company>"), 400,
     "InvalidElement", "RegistrationInfo/Company"),
    (GOOD.replace("<Company>Resco</Company>", "<Company>Resco</Company>" * 2), 400,
     "DuplicateElement", "RegistrationInfo/Company"),
    (GOOD.replace("<Company>Resco</Company>", f"<Company>{'x' * 2049}</Company>"), 400,
     "InvalidElement", "RegistrationInfo/Company"),
    (GOOD.replace("127.0.0.1:9", "10.0.0.8"), 400, "InvalidInput", "SyncSetup/Url"),
    (GOOD.replace("http://127.0.0.1:9", "ftp://93.184.215.14"), 400, "InvalidInput",
     "SyncSetup/Url"),
    (GOOD.replace("</SyncSetup>", "<Entities><Entity>Bad Name</Entity></Entities></SyncSetup>"),
     400, "InvalidInput", "SyncSetup/Entities"),
    (GOOD.replace("</SyncSetup>", "<Entities><Item>account</Item></Entities></SyncSetup>"),
     400, "UnknownElement", "SyncSetup/Entities"),
    (GOOD.replace("</SyncSetup>", "<SyncFiltersXml>&lt;fetch&gt;&lt;entity name='account'&gt;"
                  "&lt;link-entity/&gt;&lt;/entity&gt;&lt;/fetch&gt;</SyncFiltersXml>"
                  "</SyncSetup>"), 400, "InvalidInput", "SyncSetup/SyncFiltersXml"),
    (GOOD.replace("</SyncSetup>", "<SyncFiltersXml><filter/></SyncFiltersXml></SyncSetup>"),
     400, "InvalidElement", "SyncSetup/SyncFiltersXml"),
])
def test_connect_async_refuses_bad_xml_and_creates_nothing(
        app: Flask, redis: Redis, body: str, status: int, code: str, element: str) -> None:
    # Private servers are refused here (the default): the loopback URL of GOOD
    # is then the private-address case; other cases fail before the URL is looked at.
    if "10.0.0.8" not in body:
        app.config["ALLOW_PRIVATE_SERVERS"] = True
    response = post_xml(client_of(app), "martin", body)
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/xml"
    assert xml_value(text, "Code") == code, text
    assert xml_value(text, "Element") == element, text
    nothing_created(app, redis)


def test_connect_async_refuses_a_loopback_server_unless_allowed(app: Flask,
                                                                redis: Redis) -> None:
    response = post_xml(client_of(app), "martin", GOOD)
    assert response.status_code == 400
    assert "loopback" in xml_value(response.get_data(as_text=True), "Message")
    nothing_created(app, redis)


@pytest.mark.parametrize("document, code, element", [
    ("{not json", "MalformedJson", "ConnectRequest"),
    ([], "InvalidElement", "ConnectRequest"),
    ({"SyncSetup": {"ProviderID": 5}}, "InvalidElement", "SyncSetup/ProviderID"),
    ({"SyncSetup": {"ProviderID": "x" * 2049}}, "InvalidElement", "SyncSetup/ProviderID"),
    ({"SyncSetup": {"ProviderID": RESCO, "Extra": "x"}}, "UnknownElement", "SyncSetup/Extra"),
    ({"SyncSetup": {"ProviderID": RESCO, "Url": "http://93.184.215.14/", "UserName": "u",
                    "Password": "p"}}, "MissingElement", "SyncSetup/RegistrationInfo"),
    ({"SyncSetup": {"ProviderID": RESCO, "Entities": "account"}}, "InvalidElement",
     "SyncSetup/Entities"),
    ({"SyncSetup": {"ProviderID": DYNAMICS, "Url": "http://93.184.215.14/", "UserName": "u",
                    "Password": "p", "ClientId": "c", "ClientSecret": "s",
                    "RegistrationInfo": {"Email": "a@example.com", "Password": "pass-word-1"}}},
     "InvalidElement", "SyncSetup/ClientSecret"),
    ({"SyncSetup": {"ProviderID": DYNAMICS, "Url": "http://93.184.215.14/", "ClientSecret": "s",
                    "RegistrationInfo": {"Email": "a@example.com", "Password": "pass-word-1"}}},
     "MissingElement", "SyncSetup/ClientId"),
    ({"SyncSetup": {"ProviderID": DYNAMICS, "Url": "http://93.184.215.14/", "UserName": "u",
                    "Password": "p", "TenantId": "not a tenant/",
                    "RegistrationInfo": {"Email": "a@example.com", "Password": "pass-word-1"}}},
     "InvalidInput", "SyncSetup/TenantId"),
    ({"SyncSetup": {"ProviderID": SALESFORCE, "Url": "http://93.184.215.14/", "UserName": "u",
                    "Password": "p",
                    "RegistrationInfo": {"Email": "a@example.com", "Password": "pass-word-1"}}},
     "InvalidInput", "SyncSetup/ClientId"),
    ({"SyncSetup": {"ProviderID": SALESFORCE, "Url": "http://93.184.215.14/", "UserName": "u",
                    "Password": "p", "ClientId": "3MVG9", "SecurityToken": "T",
                    "RegistrationInfo": {"Email": "a@example.com", "Password": "pass-word-1"}}},
     "InvalidInput", "SyncSetup/ClientSecret"),
])
def test_connect_async_refuses_bad_json_and_creates_nothing(
        app: Flask, redis: Redis, document: Any, code: str, element: str) -> None:
    body = document if isinstance(document, str) else json.dumps(document)
    response = client_of(app).post("/rest/v1/sync/martin/ConnectAsync", data=body,
                                   headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    error = response.get_json()["Error"]
    assert (error["Code"], error.get("Element")) == (code, element), error
    nothing_created(app, redis)


def test_connect_async_refuses_an_oversize_body(app: Flask, redis: Redis) -> None:
    app.config["SERVICE_MAX_CONTENT_LENGTH"] = 10_000
    padding = "<!-- " + "x" * 20_000 + " -->"
    response = post_xml(client_of(app), "martin", GOOD.replace("</SyncSetup>",
                                                               padding + "</SyncSetup>"))
    assert response.status_code == 413
    assert xml_value(response.get_data(as_text=True), "Code") == "RequestEntityTooLarge"
    nothing_created(app, redis)


def test_connect_async_refuses_a_body_that_is_neither_xml_nor_json(app: Flask,
                                                                   redis: Redis) -> None:
    response = client_of(app).post("/rest/v1/sync/martin/ConnectAsync", data="hello",
                                   headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.get_json()["Error"]["Code"] == "UnsupportedMediaType"
    nothing_created(app, redis)


def test_connect_async_refuses_a_bad_org_name(app: Flask, redis: Redis) -> None:
    app.config["ALLOW_PRIVATE_SERVERS"] = True
    response = post_xml(client_of(app), "Bad_Name", GOOD)
    assert response.status_code == 400
    assert xml_value(response.get_data(as_text=True), "Element") == "{org}"
    nothing_created(app, redis)


def test_job_status_of_another_orgs_job_is_not_found(service_app: Flask, redis: Redis) -> None:
    client = client_of(service_app)
    first = post_xml(client, "martin", GOOD, Accept="application/json").get_json()
    token = urlsplit(first["StatusUrl"]).query
    assert client.get(f"/rest/v1/sync/martin/jobs/sync-999?{token}").status_code == 404
    assert client.get(f"/rest/v1/sync/martin/jobs/sync-1-999?{token}").status_code == 404
    assert client.get(f"/rest/v1/sync/martin/jobs/sync-999-1?{token}").status_code == 404
    assert client.get(f"/rest/v1/sync/martin/jobs/other-1-1?{token}").status_code == 404
    state = client.get(f"/rest/v1/sync/martin/jobs/{first['JobId']}?{token}",
                       headers={"Accept": "application/xml"})
    assert state.status_code == 200 and state.mimetype == "application/xml"
    assert xml_value(state.get_data(as_text=True), "JobStatus") == "queued"


def test_openapi_document_describes_the_service(client: FlaskClient) -> None:
    document = client.get("/rest/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/rest/v1/sync/{org}/ConnectAsync",
                                      "/rest/v1/sync/{org}/SyncAsync",
                                      "/rest/v1/sync/{org}/jobs/{job}",
                                      "/rest/v1/sync/{org}/Settings",
                                      "/rest/v1/sync/{org}/Entities",
                                      "/rest/v1/sync/{org}/Entities/{entity}/Filter",
                                      "/rest/v1/sync/{org}/Schedule"}
    assert DYNAMICS in json.dumps(document)


# --- the OpenAPI document, checked against the live service by schemathesis ----------

@pytest.mark.timeout(300)
def test_web_service_matches_its_openapi_document(tmp_path: Path, redis: Redis,
                                                  portal_process) -> None:
    """Generated requests to a live portal: no 5xx, every answer as the document says.

    Driven by hand (schemathesis' pytest plugin does not run under pytest 9), a
    bounded number of examples per operation. Private servers are allowed there
    so that generated URLs are never looked up in DNS; jobs are only queued (no
    worker runs), so no server is ever contacted.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    process = portal_process(tmp_path / "live", env={"PORTAL_ALLOW_PRIVATE_SERVERS": "true",
                                                     "PORTAL_RATELIMIT_ENABLED": "false"})
    schema = schemathesis.openapi.from_url(process.url + "/rest/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    seen: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            seen.append(case.operation.label)
            case.call_and_validate(checks=[
                checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance],
                timeout=30)

        call()
    # Every operation was called, with more than a handful of generated requests.
    assert {label.split()[0] for label in seen} == {"POST", "GET", "PATCH", "PUT", "DELETE"}
    assert len(seen) >= 90, len(seen)


def test_a_salesforce_connect_request_reads_the_connected_app() -> None:
    setup = {"ProviderID": SALESFORCE, "Url": "https://login.salesforce.com",
             "UserName": "u@example.com", "Password": "pw", "ClientId": "3MVG9",
             "ClientSecret": "s", "SecurityToken": "T"}
    server = parse_json(json.dumps({"SyncSetup": setup}).encode()).server()
    assert (server.username, server.password, server.options) == (
        "u@example.com", "pw", {"consumer_key": "3MVG9", "consumer_secret": "s",
                                "security_token": "T"})
    app_only = {k: setup[k] for k in ("ProviderID", "Url", "ClientId", "ClientSecret")}
    server = parse_json(json.dumps({"SyncSetup": app_only}).encode()).server()
    assert (server.username, server.password, server.options) == (
        "3MVG9", "s", {"auth": "client_credentials"})

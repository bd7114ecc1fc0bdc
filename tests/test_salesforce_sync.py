"""The sync engine against a Salesforce-shaped server, with simple-salesforce as the client.

The server (tests/salesforce_server.py, whose docstring says what it emulates
and what not) keeps records in memory; the client org is a real portal's org
file, the jobs run on a real RQ worker against a real Redis, and the backend
reaches the server over TLS (a test CA) through simple-salesforce, unchanged.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from portal.backends.salesforce_mapping import option_value
from portal.db import get_db
from portal.orgs import records, schema, sync_state, transactions
from portal.orgs.metadata import Attribute
from portal.sync import connections, runs
from tests.conftest import ADMIN_EMAIL
from tests.odata_helpers import basic
from tests.portal_process import Tls
from tests.salesforce_server import SalesforceServer
from tests.sync_helpers import Side

ROOT = Path(__file__).resolve().parent.parent
PASSWORD, TOKEN = "Sales-force-1", "SECURITYTOKEN"
APP = {"consumer_key": "3MVG9-test-app", "consumer_secret": "app-secret-1"}


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return Tls.make(tmp_path / "tls")


@pytest.fixture
def server(tls: Tls) -> Iterator[SalesforceServer]:
    """A Salesforce org: the portal admin as its user, a connected app."""
    org = SalesforceServer(tls).start()
    org.add_user(ADMIN_EMAIL, PASSWORD, TOKEN)
    org.add_app(APP["consumer_key"], APP["consumer_secret"])
    yield org
    org.stop()


@pytest.fixture
def client(tmp_path: Path, redis_url: str, tls: Tls, monkeypatch) -> Side:
    """Portal B's side with an empty org `cli`; its worker trusts the test CA."""
    return client_side(tmp_path / "b", redis_url, tls, monkeypatch)


def client_side(folder: Path, redis_url: str, tls: Tls, monkeypatch,
                page_size: int | None = None) -> Side:
    """A client portal's side (records per downloaded page, if given) with an empty org."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # the worker's requests
    side = Side(folder, redis_url, backend="salesforce",
                config={"SYNC_PAGE_SIZE": page_size} if page_size else None)
    side.create_org("cli", template=None)
    return side


def connect(client: Side, redis: Redis, server: SalesforceServer, *,
            policy: str = "server-wins", **options: str) -> int:
    """Connect `cli` (password with the security token appended) and run the connect job."""
    return client.connect_now(redis, "cli", server.url, policy=policy,
                              password=PASSWORD + TOKEN, options={**APP, **options})


def last_run(client: Side, connection_id: int) -> dict[str, Any]:
    with client.app.app_context():
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        return runs.list_runs(db, connection.org_id, limit=1)[0]


def client_id(client: Side, entity: str, key: str) -> str:
    """The client GUID of a Salesforce id."""
    with client.org("cli") as org:
        return sync_state.ids_for_keys(org.db, entity, [key])[key]


def client_rows(client: Side, entity: str) -> dict[str, dict[str, Any]]:
    with client.org("cli") as org:
        return {r["id"]: r for r in org.db.table(entity).rows}


def seed(server: SalesforceServer) -> dict[str, str]:
    """Two accounts, a contact of each, a lead, and tasks naming a contact and a lead."""
    keys = {"acme": server.insert("Account", {"Name": "Acme", "Industry": "Banking",
                                              "NumberOfEmployees": 12,
                                              "AnnualRevenue": 1234.5}),
            "globex": server.insert("Account", {"Name": "Globex"})}
    keys["smith"] = server.insert("Contact", {"LastName": "Smith", "FirstName": "Ann",
                                              "AccountId": keys["acme"]})
    keys["jones"] = server.insert("Contact", {"LastName": "Jones", "AccountId": keys["globex"]})
    keys["lead"] = server.insert("Lead", {"LastName": "Lee", "Company": "Initech"})
    keys["call"] = server.insert("Task", {"Subject": "Call", "WhoId": keys["smith"]})
    keys["visit"] = server.insert("Task", {"Subject": "Visit", "WhoId": keys["lead"]})
    return keys


def add_local(client: Side, entity: str, values: dict[str, Any]) -> str:
    """A record made on the client, as an offline transaction."""
    with client.org("cli") as org:
        return str(records.create_record(org, entity, values)["id"])


# --- connect and the first sync ----------------------------------------------


def test_connect_copies_the_synced_objects_and_their_records(client: Side, redis: Redis,
                                                            server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    with client.org("cli") as org:
        # AccountHistory is not replicateable; the client-id field is not the client's.
        assert sorted(org.entities()) == ["account", "contact", "lead", "task"]
        account = org.entity("account")
        assert account.attribute("crmsyncid__c") is None
        assert account.attribute("annualrevenue").type == "money"
        assert org.entity("task").attribute("whoid").targets == ["contact", "lead"]
        assert transactions.counts(org)["pending"] == 0
    accounts = client_rows(client, "account")
    acme = accounts[client_id(client, "account", keys["acme"])]
    assert (acme["name"], acme["industry"], acme["numberofemployees"], acme["annualrevenue"]) \
        == ("Acme", option_value("Banking"), 12, 1234.5)
    contacts = client_rows(client, "contact")
    smith = contacts[client_id(client, "contact", keys["smith"])]
    assert smith["accountid"] == acme["id"]  # the lookup is the account's client GUID
    tasks = {t["subject"]: t for t in client_rows(client, "task").values()}
    assert tasks["Call"]["whoid"] == smith["id"]  # polymorphic: a contact ...
    assert tasks["Visit"]["whoid"] == client_id(client, "lead", keys["lead"])  # ... or a lead
    assert last_run(client, connection_id)["status"] == "succeeded"


def test_first_read_goes_in_keyset_pages_sorted_by_systemmodstamp_and_id(
        tmp_path: Path, redis_url: str, tls: Tls, monkeypatch, redis: Redis,
        server: SalesforceServer) -> None:
    side = client_side(tmp_path / "paged", redis_url, tls, monkeypatch, page_size=3)
    made = {server.insert("Lead", {"LastName": f"Lead {n}", "Company": "C"}) for n in range(8)}
    side.connect_now(redis, "cli", server.url, password=PASSWORD + TOKEN, options=APP)
    with side.org("cli") as org:
        assert {r["lastname"] for r in org.db.table("lead").rows} == {
            f"Lead {n}" for n in range(8)}
        assert set(sync_state.keys_for_ids(org.db, "lead", [
            r["id"] for r in org.db.table("lead").rows]).values()) == made
    leads = [q for m, q in server.requests if m == "GET" and "queryAll" in q]
    assert len(leads) >= 3  # 8 records in pages of 3


# --- changes both ways --------------------------------------------------------


def test_changes_travel_both_ways_with_lookups_to_records_made_on_the_client(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    server.update("Account", keys["globex"], {"NumberOfEmployees": 99})
    made_there = server.insert("Contact", {"LastName": "New there", "AccountId": keys["acme"]})
    account = add_local(client, "account", {"name": "Made here",
                                            "industry": option_value("Retail")})
    contact = add_local(client, "contact", {"lastname": "Here too", "accountid": account})
    task = add_local(client, "task", {"subject": "Call", "whoid": contact})
    smith = client_id(client, "contact", keys["smith"])
    with client.org("cli") as org:
        records.update_record(org, "contact", smith, {"email": "ann@example.com"})

    client.sync_now(redis, connection_id)

    assert last_run(client, connection_id)["status"] == "succeeded"
    # Upload: the account by upsert on its External ID holding the client GUID; the
    # contact (a plain CrmSyncId__c) looked up first, then created; the task plainly.
    [made] = [r for r in server.live("Account").values() if r["Name"] == "Made here"]
    assert made["CrmSyncId__c"] == account and made["Industry"] == "Retail"
    [here] = [r for r in server.live("Contact").values() if r["LastName"] == "Here too"]
    assert here["AccountId"] == made["Id"] and here["CrmSyncId__c"] == contact
    [call] = [r for r in server.live("Task").values() if r["WhoId"] == here["Id"]]
    assert server.records["Contact"][keys["smith"]]["Email"] == "ann@example.com"
    with client.org("cli") as org:  # the client keeps its own GUIDs, now mapped to the keys
        assert sync_state.keys_for_ids(org.db, "account", [account]) == {account: made["Id"]}
        assert sync_state.keys_for_ids(org.db, "task", [task]) == {task: call["Id"]}
        assert transactions.counts(org)["pending"] == 0
    # Download: the server's changes, lookups as client GUIDs.
    accounts = client_rows(client, "account")
    assert accounts[client_id(client, "account", keys["globex"])]["numberofemployees"] == 99
    contacts = client_rows(client, "contact")
    there = contacts[client_id(client, "contact", made_there)]
    assert there["accountid"] == client_id(client, "account", keys["acme"])
    assert contacts[contact]["accountid"] == account

    # A later change on the server to a record made here arrives under the client's GUID.
    server.update("Contact", here["Id"], {"FirstName": "Hélène", "AccountId": keys["globex"]})
    client.sync_now(redis, connection_id)
    row = client_rows(client, "contact")[contact]
    assert row["firstname"] == "Hélène"
    assert row["accountid"] == client_id(client, "account", keys["globex"])
    assert len(client_rows(client, "contact")) == len(server.live("Contact"))


def test_a_session_that_expires_is_renewed(client: Side, redis: Redis,
                                           server: SalesforceServer) -> None:
    seed(server)
    connection_id = connect(client, redis, server)
    server.expire_sessions()
    server.insert("Lead", {"LastName": "After expiry", "Company": "C"})
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"
    assert "After expiry" in {r["lastname"] for r in client_rows(client, "lead").values()}
    tokens = [q for m, q in server.requests if q == "/services/oauth2/token"]
    assert len(tokens) >= 2


# --- deletions ------------------------------------------------------------------


def test_deletions_travel_both_ways(client: Side, redis: Redis,
                                    server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    server.delete("Task", keys["call"])  # to the Recycle Bin: an IsDeleted row of queryAll
    server.delete("Lead", keys["lead"])
    server.purge("Lead", keys["lead"])  # emptied: only getDeleted knows
    jones = client_id(client, "contact", keys["jones"])
    with client.org("cli") as org:
        records.delete_record(org, "contact", jones)

    client.sync_now(redis, connection_id)

    assert server.records["Contact"][keys["jones"]]["IsDeleted"] is True
    assert client_id(client, "task", keys["call"]) not in client_rows(client, "task")
    assert client_id(client, "lead", keys["lead"]) not in client_rows(client, "lead")
    assert jones not in client_rows(client, "contact")
    assert len(client_rows(client, "task")) == len(server.live("Task")) == 1


def test_beyond_the_getdeleted_window_ids_are_reconciled_and_it_is_logged(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    server.delete("Contact", keys["jones"])
    server.purge("Contact", keys["jones"])
    with client.org("cli") as org:  # the last read was 20 days ago
        point = sync_state.checkpoint(org, "contact")
        state = orjson.loads(point.link or "{}")
        state["deleted_since"] = "2026-01-01T00:00:00Z"
        with org.db.conn:
            sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
                "contact", orjson.dumps(state).decode(), True, None))
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"
    assert client_id(client, "contact", keys["jones"]) not in client_rows(client, "contact")
    with client.app.app_context():
        logged = [r["message"] for r in get_db().query("SELECT message FROM sync_logs")]
    assert any("beyond getDeleted's window" in m for m in logged)


# --- conflicts --------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "kind", "expected"), [
    ("server-wins", "update/update", "server"),
    ("client-wins", "update/update", "client"),
    ("server-wins", "update/delete", "deleted"),  # the client updated, the server deleted
    ("client-wins", "delete/update", "deleted"),  # the client deleted, the server updated
    ("server-wins", "delete/update", "server"),
])
def test_the_conflict_matrix(client: Side, redis: Redis, server: SalesforceServer,
                             policy: str, kind: str, expected: str) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server, policy=policy)
    smith = client_id(client, "contact", keys["smith"])
    mine, theirs = kind.split("/")
    with client.org("cli") as org:
        if mine == "update":
            records.update_record(org, "contact", smith, {"firstname": "Client"})
        else:
            records.delete_record(org, "contact", smith)
    if theirs == "update":
        server.update("Contact", keys["smith"], {"FirstName": "Server"})
    else:
        server.delete("Contact", keys["smith"])

    client.sync_now(redis, connection_id)

    on_server = server.records["Contact"][keys["smith"]]
    on_client = client_rows(client, "contact").get(smith)
    if expected == "deleted":
        assert on_server["IsDeleted"] is True and on_client is None
    else:
        assert not on_server["IsDeleted"] and on_client is not None
        assert on_server["FirstName"] == on_client["firstname"] == expected.capitalize()
    with client.app.app_context():
        logged = [r["message"] for r in get_db().query("SELECT message FROM sync_logs")]
    assert any("conflict on contact" in m for m in logged)


# --- lost answers, limits ---------------------------------------------------------


def test_lost_answers_to_creates_make_one_record(client: Side, redis: Redis,
                                                 server: SalesforceServer) -> None:
    seed(server)
    connection_id = connect(client, redis, server)
    # Account: an upsert on the External ID (PATCH), repeated by the transport.
    server.lose_answers["/services/data/v62.0/composite/sobjects/Account/CrmSyncId__c"] = 1
    # Contact: a plain create (POST) not repeated: the run fails, the next looks it up.
    server.lose_answers["/services/data/v62.0/composite/sobjects"] = 1
    account = add_local(client, "account", {"name": "Once"})
    contact = add_local(client, "contact", {"lastname": "Once", "accountid": account})

    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "failed"
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"

    assert [r["CrmSyncId__c"] for r in server.live("Account").values()
            if r["Name"] == "Once"] == [account]
    assert [r["CrmSyncId__c"] for r in server.live("Contact").values()
            if r["LastName"] == "Once"] == [contact]
    with client.org("cli") as org:
        assert transactions.counts(org)["pending"] == 0
        assert transactions.counts(org).get("error", 0) == 0


def test_reaching_the_api_limit_stops_the_run_as_limited_and_the_next_resumes(
        tmp_path: Path, redis_url: str, tls: Tls, monkeypatch, redis: Redis,
        server: SalesforceServer) -> None:
    side = client_side(tmp_path / "limited", redis_url, tls, monkeypatch, page_size=2)
    for n in range(10):
        server.insert("Lead", {"LastName": f"Lead {n}", "Company": "C"})
    server.daily_limit = 12  # enough for sign-in and metadata, not for every page
    connection_id = side.connect(side_org := "cli", server.url, password=PASSWORD + TOKEN,
                                 options={**APP, "api_budget": "100"})
    side.queue(redis, connection_id, "connect")
    side.work(redis)
    run = last_run(side, connection_id)
    assert run["status"] == "limited"
    assert "REQUEST_LIMIT_EXCEEDED" in (run["error"] or "")
    with side.org(side_org) as org:
        kept = org.db.table("lead").count if "lead" in org.entities() else 0
    server.daily_limit = 100_000  # a new day
    side.queue(redis, connection_id, "connect")
    side.work(redis)
    assert last_run(side, connection_id)["status"] == "succeeded"
    with side.org(side_org) as org:
        assert {r["lastname"] for r in org.db.table("lead").rows} == {
            f"Lead {n}" for n in range(10)}
    assert kept <= 10


def test_the_connections_budget_stops_the_run_before_the_org_limit(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    seed(server)
    connection_id = connect(client, redis, server, api_budget="50")
    server.used = server.daily_limit // 2  # other integrations used half the day's requests
    client.sync_now(redis, connection_id)
    run = last_run(client, connection_id)
    assert run["status"] == "limited"
    assert "budget is 50%" in (run["error"] or "")


def _logs(side: Side, connection_id: int) -> list[str]:
    with side.app.app_context():
        return [line["message"] for line in runs.list_logs(
            get_db(), side.connection(connection_id).org_id)]


def test_four_objects_at_once_one_when_little_of_the_budget_is_left_all_exact(
        tmp_path: Path, redis_url: str, tls: Tls, monkeypatch, redis: Redis,
        server: SalesforceServer) -> None:
    # Pages of 3 from four readers: every record once; near the connection's budget (50%
    # of the day's 100,000 here) the next run reads one object at a time, and still all.
    side = client_side(tmp_path / "streams", redis_url, tls, monkeypatch, page_size=3)
    keys = seed(server)
    for n in range(10):
        server.insert("Lead", {"LastName": f"Lead {n}", "Company": "C"})
        server.insert("Contact", {"LastName": f"Contact {n}", "AccountId": keys["acme"]})
    connection_id = connect(side, redis, server, api_budget="50")
    assert "4 entities at once (4 asked)" in _logs(side, connection_id)
    server.used = 40_000  # 10,000 of the budget's 50,000 left: a fifth
    for n in range(5):
        server.insert("Lead", {"LastName": f"Later {n}", "Company": "C"})
    side.sync_now(redis, connection_id)
    assert last_run(side, connection_id)["status"] == "succeeded"
    assert [line for line in _logs(side, connection_id)
            if line.startswith("1 entity at once (4 asked, capped: 99") and line.endswith(
                " of the API budget's 50000 requests are left today (under 25%))")], \
        _logs(side, connection_id)
    with side.org("cli") as org:
        assert sorted(r["lastname"] for r in org.db.table("lead").rows) == sorted(
            ["Lee", *(f"Lead {n}" for n in range(10)), *(f"Later {n}" for n in range(5))])
        assert org.db.table("contact").count == 12
        assert org.db.table("task").count == 2


# --- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(("password", "options", "message"), [
    (PASSWORD + "WRONGTOKEN", {}, "Salesforce refused: invalid_grant: authentication failure"),
    (PASSWORD, {"security_token": "WRONG"}, "invalid_grant: authentication failure"),
    (PASSWORD + TOKEN, {"consumer_secret": "nope"}, "invalid_client"),
])
def test_refused_sign_ins_fail_with_salesforces_error(client: Side, redis: Redis,
                                                      server: SalesforceServer, password: str,
                                                      options: dict[str, str],
                                                      message: str) -> None:
    connection_id = client.connect("cli", server.url, password=password,
                                   options={**APP, **options})
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "failed"
    assert message in (connection.error or "")
    with client.org("cli") as org:
        assert org.entities() == {}  # nothing half-made


def test_a_security_token_given_apart_is_appended(client: Side, redis: Redis,
                                                  server: SalesforceServer) -> None:
    seed(server)
    connection_id = client.connect_now(redis, "cli", server.url, password=PASSWORD,
                                       options={**APP, "security_token": TOKEN})
    with client.app.app_context():
        stored = get_db().execute("SELECT server_options FROM connections WHERE id = ?",
                                  [connection_id]).fetchone()[0]
    assert TOKEN not in stored and APP["consumer_secret"] not in stored  # encrypted


def test_an_expired_password_fails_with_salesforces_reason(client: Side, redis: Redis,
                                                           server: SalesforceServer) -> None:
    server.add_user(ADMIN_EMAIL, PASSWORD, TOKEN, expired=True)
    connection_id = client.connect("cli", server.url, password=PASSWORD + TOKEN,
                                   options=APP)
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "failed"
    assert "INVALID_OPERATION_WITH_EXPIRED_PASSWORD" in (connection.error or "")
    with client.org("cli") as org:
        assert org.entities() == {}


def test_an_object_no_longer_replicateable_fails_the_run_before_it_changes(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    server.update("Contact", keys["smith"], {"FirstName": "Changed"})
    server.objects["Contact"]["replicateable"] = False
    client.sync_now(redis, connection_id)
    run = last_run(client, connection_id)
    assert run["status"] == "failed"
    assert "contact cannot sync: it is not replicateable" in (run["error"] or "")
    smith = client_rows(client, "contact")[client_id(client, "contact", keys["smith"])]
    assert smith["firstname"] == "Ann"


def test_a_field_that_became_non_updateable_refuses_that_write_only(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    email = next(f for f in server.objects["Contact"]["fields"] if f["name"] == "Email")
    email["updateable"] = False
    smith = client_id(client, "contact", keys["smith"])
    jones = client_id(client, "contact", keys["jones"])
    with client.org("cli") as org:
        records.update_record(org, "contact", smith, {"email": "x@example.com",
                                                      "firstname": "Not half"})
        records.update_record(org, "contact", jones, {"firstname": "Fine"})
    client.sync_now(redis, connection_id)
    on_server = server.records["Contact"]
    assert on_server[keys["smith"]]["Email"] is None  # nothing of that write was sent
    assert on_server[keys["smith"]]["FirstName"] == "Ann"
    assert on_server[keys["jones"]]["FirstName"] == "Fine"
    with client.org("cli") as org:
        [failed] = [t for t in transactions.list_transactions(org) if t.status == "error"]
        assert failed.record_id == smith
        assert "field Email of Contact cannot be updated in Salesforce" in (failed.error or "")


# --- picklists ----------------------------------------------------------------------


PICKLIST = ("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='industry')/"
            "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
            "?$select=LogicalName&$expand=OptionSet($select=Options)")


def client_options(client: Side) -> dict[int, str]:
    """Account.Industry's options as the client's Org API shows them: value -> label."""
    answer = client.app.test_client().get("/odata/v4/cli/" + PICKLIST, headers=basic())
    assert answer.status_code == 200, answer.data
    return {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"]
            for o in answer.json["OptionSet"]["Options"]}


def industry_field(server: SalesforceServer) -> dict[str, Any]:
    return next(f for f in server.objects["Account"]["fields"] if f["name"] == "Industry")


def logged(client: Side) -> list[str]:
    with client.app.app_context():
        return [r["message"] for r in get_db().query("SELECT message FROM sync_logs")]


def test_a_picklist_syncs_as_options_with_salesforces_labels_both_ways(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    banking, retail = option_value("Banking"), option_value("Retail")
    assert client_options(client) == {banking: "Banking", retail: "Retail trade"}
    acme = client_id(client, "account", keys["acme"])
    assert client_rows(client, "account")[acme]["industry"] == banking
    with client.org("cli") as org:
        records.update_record(org, "account", acme, {"industry": retail})
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"
    assert server.records["Account"][keys["acme"]]["Industry"] == "Retail"  # the value, as text
    with client.org("cli") as org:
        assert transactions.counts(org)["pending"] == 0
    assert client_rows(client, "account")[acme]["industry"] == retail


def test_a_picklist_value_added_in_salesforce_arrives_after_update_client_metadata(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    before = client_options(client)
    industry_field(server)["picklistValues"].insert(
        0, {"value": "Energy", "label": "Energy and utilities", "active": True})
    industry_field(server)["picklistValues"][1]["active"] = False  # Banking retired
    server.update("Account", keys["acme"], {"Industry": "Energy", "NumberOfEmployees": 40})
    fresh = server.insert("Account", {"Name": "Initrode", "Industry": "Energy"})

    client.sync_now(redis, connection_id)  # the client has no option for Energy yet
    assert last_run(client, connection_id)["status"] == "succeeded"
    acme = client_id(client, "account", keys["acme"])
    initrode = client_id(client, "account", fresh)
    rows = client_rows(client, "account")
    # Not lost: the records are there, the value waits for its option.
    assert (rows[acme]["numberofemployees"], rows[acme]["industry"]) == (40, None)
    assert rows[initrode]["name"] == "Initrode" and rows[initrode]["industry"] is None
    assert any("2 record(s) hold picklist values the client's metadata has no option for yet "
               "(Industry 'Energy')" in m for m in logged(client))
    with client.org("cli") as org:  # a client change of a held record: only that field goes
        records.update_record(org, "account", acme, {"numberofemployees": 41})
    client.sync_now(redis, connection_id)
    assert server.records["Account"][keys["acme"]]["Industry"] == "Energy"
    assert server.records["Account"][keys["acme"]]["NumberOfEmployees"] == 41

    client.queue(redis, connection_id, "metadata")
    client.work(redis)
    energy = option_value("Energy")
    # The others keep their numbers; the retired value stays an option (old records read).
    assert client_options(client) == {**before, energy: "Energy and utilities"}
    with client.org("cli") as org:  # the next read starts after the held records' changes
        point = sync_state.checkpoint(org, "account")
        state = orjson.loads(point.link or "{}")
        assert len(state["held"]) == 2
        state["stamp"] = "2099-01-01T00:00:00Z"
        with org.db.conn:
            sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
                "account", orjson.dumps(state).decode(), True, None))
    client.sync_now(redis, connection_id)  # nothing changed in Salesforce: the held are re-read
    rows = client_rows(client, "account")
    assert rows[acme]["industry"] == rows[initrode]["industry"] == energy
    with client.org("cli") as org:
        held = orjson.loads(sync_state.checkpoint(org, "account").link or "{}")["held"]
    assert held == []
    client.sync_now(redis, connection_id)
    assert client_rows(client, "account")[acme]["industry"] == energy


def test_an_option_salesforce_has_no_value_for_fails_that_write_only(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server)
    # Retail deleted from the picklist in Salesforce; the client's metadata still offers it.
    industry_field(server)["picklistValues"] = [
        p for p in industry_field(server)["picklistValues"] if p["value"] != "Retail"]
    acme = client_id(client, "account", keys["acme"])
    globex = client_id(client, "account", keys["globex"])
    with client.org("cli") as org:
        records.update_record(org, "account", acme, {"industry": option_value("Retail"),
                                                     "numberofemployees": 13})
        records.update_record(org, "account", globex, {"numberofemployees": 7})
    client.sync_now(redis, connection_id)
    on_server = server.records["Account"]
    # Nothing of the refused write was sent; the other went.
    assert (on_server[keys["acme"]]["Industry"], on_server[keys["acme"]]["NumberOfEmployees"]) \
        == ("Banking", 12)
    assert on_server[keys["globex"]]["NumberOfEmployees"] == 7
    with client.org("cli") as org:
        [failed] = [t for t in transactions.list_transactions(org) if t.status == "error"]
    assert failed.record_id == acme
    assert (f"field Industry of Account: option {option_value('Retail')} is not a value of "
            "this picklist in Salesforce (its values: Banking)") in (failed.error or "")


def test_a_client_that_holds_a_picklist_as_text_keeps_text_both_ways(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    # A connection made before picklists were option sets: Update Client Metadata does
    # not turn its text into numbers, so the backend keeps to the client's definition.
    keys = seed(server)
    connection_id = connect(client, redis, server)
    with client.org("cli") as org:
        schema.remove_attribute(org, "account", "industry")
        schema.add_attribute(org, "account", Attribute("industry", "string", maxlength=255))
    server.update("Account", keys["acme"], {"Industry": "Retail"})
    client.sync_now(redis, connection_id)
    acme = client_id(client, "account", keys["acme"])
    assert client_rows(client, "account")[acme]["industry"] == "Retail"
    with client.org("cli") as org:
        records.update_record(org, "account", acme, {"industry": "Banking"})
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"
    assert server.records["Account"][keys["acme"]]["Industry"] == "Banking"


# --- lookups to objects that do not sync --------------------------------------------


def test_a_lookup_to_an_object_that_does_not_sync_is_empty_logged_and_kept_in_salesforce(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    keys = seed(server)
    connection_id = connect(client, redis, server, objects="Account,Contact,Task")
    with client.org("cli") as org:
        assert "lead" not in org.entities()
        assert org.entity("task").attribute("whoid").targets == ["contact"]
    tasks = client_rows(client, "task")
    visit = client_id(client, "task", keys["visit"])
    assert tasks[visit]["whoid"] is None  # a Lead: nothing on the client to point to
    assert tasks[client_id(client, "task", keys["call"])]["whoid"] == client_id(
        client, "contact", keys["smith"])
    assert any("Task: 1 record(s) point to objects that do not sync (WhoId -> Lead): those "
               "lookups are empty on the client" in m for m in logged(client))
    with client.org("cli") as org:  # a change of another field leaves the lookup alone
        records.update_record(org, "task", visit, {"subject": "Visit again"})
    client.sync_now(redis, connection_id)
    assert server.records["Task"][keys["visit"]]["Subject"] == "Visit again"
    assert server.records["Task"][keys["visit"]]["WhoId"] == keys["lead"]


def test_a_client_wins_resend_keeps_values_the_client_could_not_show(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    # The resend after a conflict carries the whole client record: its empty lookup to a
    # Lead stands for a value it never had. (The held account, known by no version, is
    # sent without a condition, only its changed field: its Industry stays too.)
    keys = seed(server)
    connection_id = connect(client, redis, server, policy="client-wins",
                            objects="Account,Contact,Task")
    industry_field(server)["picklistValues"].append(
        {"value": "Energy", "label": "Energy", "active": True})
    server.update("Account", keys["acme"], {"Industry": "Energy"})
    client.sync_now(redis, connection_id)  # acme held: its Industry waits for its option
    acme = client_id(client, "account", keys["acme"])
    visit = client_id(client, "task", keys["visit"])
    assert client_rows(client, "account")[acme]["industry"] is None
    server.update("Account", keys["acme"], {"Name": "Acme (server)"})
    server.update("Task", keys["visit"], {"Subject": "Server's visit"})
    with client.org("cli") as org:
        records.update_record(org, "account", acme, {"name": "Acme (client)"})
        records.update_record(org, "task", visit, {"subject": "Client's visit"})
    client.sync_now(redis, connection_id)
    assert last_run(client, connection_id)["status"] == "succeeded"
    on_server = server.records
    assert (on_server["Account"][keys["acme"]]["Name"],
            on_server["Account"][keys["acme"]]["Industry"]) == ("Acme (client)", "Energy")
    assert (on_server["Task"][keys["visit"]]["Subject"],
            on_server["Task"][keys["visit"]]["WhoId"]) == ("Client's visit", keys["lead"])
    assert any("conflict on task" in m and "client wins" in m for m in logged(client))


# --- killed runs --------------------------------------------------------------------


def killed_while_held(client: Side, server: SalesforceServer, job: str,
                      connection_id: int) -> None:
    """Run a job in its own process; SIGKILL it while the server holds an answer."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(client.instance),
           "REDIS_URL": client.redis_url, "PORTAL_ALLOW_PRIVATE_SERVERS": "true",
           "PORTAL_SYNC_PAGE_SIZE": "3"}
    process = subprocess.Popen([sys.executable, "-c", f"from jobs.sync import {job}; "
                                f"{job}({connection_id})"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert server.holding.wait(120), "the job never reached the held answer"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        server.release()


def test_a_run_killed_during_download_resumes_without_loss_or_duplicates(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    made = {server.insert("Lead", {"LastName": f"Lead {n}", "Company": "C"}) for n in range(10)}
    connection_id = client.connect("cli", server.url, password=PASSWORD + TOKEN, options=APP)
    server.hold = ("queryAll", 4)  # pages of 3: some leads are in, some not
    killed_while_held(client, server, "connect", connection_id)
    with client.org("cli") as org:
        partial = org.db.table("lead").count if org.db.table("lead").exists() else 0
    assert partial < 10
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    with client.org("cli") as org:
        rows = list(org.db.table("lead").rows)
        assert len(rows) == 10
        assert set(sync_state.keys_for_ids(org.db, "lead", [r["id"] for r in rows]).values()) \
            == made


def test_a_run_killed_while_its_creates_answer_is_held_makes_each_record_once(
        client: Side, redis: Redis, server: SalesforceServer) -> None:
    seed(server)
    connection_id = connect(client, redis, server)
    accounts = [add_local(client, "account", {"name": f"Killed {n}"}) for n in range(5)]
    server.hold = ("composite/sobjects/Account/CrmSyncId__c", 1)  # applied, answer held
    killed_while_held(client, server, "sync_run", connection_id)
    assert len([r for r in server.live("Account").values() if r["Name"].startswith("Killed")]) \
        == 5
    with client.app.app_context():  # the killed run's lock and status, as the dispatcher would
        get_db().execute("UPDATE sync_runs SET status = 'failed' WHERE status = 'running'")
    redis.flushdb()
    client.sync_now(redis, connection_id)
    assert sorted(r["CrmSyncId__c"] for r in server.live("Account").values()
                  if r["Name"].startswith("Killed")) == sorted(accounts)
    with client.org("cli") as org:
        assert transactions.counts(org)["pending"] == 0

"""The sync engine between two real portals over HTTP: portal A hosts the server org,
portal B the client org; jobs run on a real RQ worker against a real Redis."""

import time
from pathlib import Path

import pytest
from redis import Redis

from portal import crypto
from portal.orgs import records, sync_state, transactions
from portal.orgs.templates import sales
from portal.queue import connect_redis
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.sync_helpers import Side, assert_identical, checksums, seed_sales, snapshot

SALES = [e.logicalname for e in sales()]


@pytest.fixture(params=["resco", "dynamics"])
def pair(request, tmp_path: Path, redis_url: str, redis: Redis, portal_process,
         monkeypatch):
    """Portal A (a real gunicorn) with org `srv` from the sales template; portal B's side.

    Each test runs with both backends: `resco` through A's Org API, `dynamics`
    through A's Dataverse Web API root over TLS (a test CA), signing in with
    the org admin's e-mail and password through MSAL at A's own authority.
    """
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    if request.param == "resco":
        process = portal_process(tmp_path / "a")
        server.url = process.odata_root("srv")
    else:
        tls = dataverse_tls(tmp_path / "tls")
        process = portal_process(tmp_path / "a", tls=tls)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # the worker's requests
        server.url = f"{process.url}/dataverse/srv"
    client = Side(tmp_path / "b", redis_url, backend=request.param)
    return server, client


def dataverse_tls(folder: Path):
    """A TLS certificate for a portal serving the Dataverse root (issue 10's), or a skip."""
    import tests.portal_process as portal_process

    if not hasattr(portal_process, "Tls"):
        pytest.skip("needs the portal's Dataverse Web API root and TLS test portals (issue 10)")
    return portal_process.Tls.make(folder)


# For tests of one backend's own behaviour.
resco_only = pytest.mark.parametrize("pair", ["resco"], indirect=True)


def test_sync_connect_copies_metadata_and_5000_records(pair, redis: Redis) -> None:
    server, client = pair
    with server.org("srv") as org:
        seed_sales(org, accounts=2400, contacts_per_account=1)
        total = sum(org.db.table(n).count for n in SALES)
    assert total >= 4800
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]

    client.queue(redis, connection_id, "connect")
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "connected", connection.error
    assert connection.schedule_active
    with server.org("srv") as a, client.org("cli") as b:
        assert list(b.entities()) == list(a.entities())
        assert checksums(a, SALES) == checksums(b, SALES)
        assert transactions.is_client(b.db)
        assert transactions.counts(b)["pending"] == 0


def test_sync_connect_with_wrong_password_fails_with_the_servers_message(
        pair, redis: Redis) -> None:
    server, client = pair
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url, password="wrong-password1")  # type: ignore[arg-type]

    client.queue(redis, connection_id, "connect")
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "failed"
    assert "refused" in (connection.error or "")
    with client.org("cli") as b:
        assert list(b.entities()) == []
    assert ADMIN_PASSWORD not in (connection.error or "")


def _connect(server: Side, client: Side, redis: Redis, *, policy: str = "server-wins",
             accounts: int = 30) -> int:
    with server.org("srv") as org:
        seed_sales(org, accounts=accounts)
    client.create_org("cli", template=None)
    return client.connect_now(redis, "cli", server.url, policy=policy)  # type: ignore[arg-type]


def _same(server: Side, client: Side) -> None:
    with server.org("srv") as a, client.org("cli") as b:
        if client.backend != "dynamics":
            assert_identical(a, b, SALES)
            return
        # Dataverse gives an N:N row the client associated an id of its own; the client
        # keeps its row (mapped to the server's id): the same rows, each once, by content.
        links = [n for n in SALES if a.entity(n).isintersect]
        assert_identical(a, b, [n for n in SALES if n not in links])
        for name in links:
            pk = a.entity(name).primaryidattribute
            rows = [sorted(({k: v for k, v in r.items() if k != pk} for r in snapshot(
                side, [name])[name].values()), key=lambda r: sorted(r.items()))
                for side in (a, b)]
            assert rows[0] == rows[1], name


def test_sync_changes_and_deletions_both_ways(pair, redis: Redis) -> None:
    server, client = pair
    connection_id = _connect(server, client, redis)
    with server.org("srv") as a, client.org("cli") as b:
        server_accounts = [r["accountid"] for r in a.db.table("account").rows]
        # Server side: an update, a new account with a contact whose parent arrives in the
        # same run, a deletion, and an N:N row.
        records.update_record(a, "account", server_accounts[0], {"name": "Renamed on server"})
        parent = records.create_record(a, "account", {"name": "New on server"})
        records.create_record(a, "contact", {"lastname": "Child", "parentcustomerid":
                                             parent["accountid"]})
        records.delete_record(a, "account", server_accounts[1])
        lead = next(iter(a.db.table("lead").rows))["leadid"]
        competitor = next(iter(a.db.table("competitor").rows))["competitorid"]
        records.create_record(a, "leadcompetitor", {"leadid": lead, "competitorid": competitor})
        # Client side: an update, a new record, a deletion (all become offline transactions).
        records.update_record(b, "account", server_accounts[2], {"telephone1": "+421 900"})
        mine = records.create_record(b, "account", {"name": "New on client"})
        records.delete_record(b, "account", server_accounts[3])
        # A contact of the new account (a polymorphic lookup to a record of the same
        # round), and an N:N row made on the client.
        records.create_record(b, "contact", {"lastname": "Mine", "parentcustomerid":
                                             mine["accountid"]})
        other = list(b.db.table("competitor").rows)[1]["competitorid"]
        link = records.create_record(b, "leadcompetitor", {"leadid": lead,
                                                            "competitorid": other})
        assert transactions.counts(b)["pending"] == 5
    client.sync_now(redis, connection_id)
    _same(server, client)
    with server.org("srv") as a, client.org("cli") as b:
        assert records.get_record(a, "account", mine["accountid"])["name"] == "New on client"  # type: ignore[index]
        assert records.get_record(a, "account", server_accounts[3]) is None
        assert records.get_record(b, "account", server_accounts[1]) is None
        assert transactions.counts(b) == {"pending": 0, "processed": 5, "error": 0,
                                          "archived": 0}
        if client.backend == "dynamics":
            # Associated through $ref: the server's row has its own id, the client's maps to it.
            [server_link] = [r["leadcompetitorid"] for r in a.db.table("leadcompetitor").rows
                             if (r["leadid"], r["competitorid"]) == (lead, other)]
            assert server_link != link["leadcompetitorid"]
            assert sync_state.keys_for_ids(b.db, "leadcompetitor", [link["leadcompetitorid"]]
                                           ) == {link["leadcompetitorid"]: server_link}
        # Nothing that came from the server went back.
    # A second run with nothing new changes nothing and sends nothing.
    with server.org("srv") as a:
        version = a.db.execute("SELECT value FROM _org WHERE key='version'").fetchone()[0]
    client.sync_now(redis, connection_id)
    with server.org("srv") as a:
        assert a.db.execute("SELECT value FROM _org WHERE key='version'").fetchone()[0] == version
    _same(server, client)
    # The N:N row made on the client leaves both sides (disassociated by the server's id).
    with client.org("cli") as b:
        records.delete_record(b, "leadcompetitor", link["leadcompetitorid"])
    client.sync_now(redis, connection_id)
    with server.org("srv") as a, client.org("cli") as b:
        for org in (a, b):
            assert not [r for r in org.db.table("leadcompetitor").rows
                        if (r["leadid"], r["competitorid"]) == (lead, other)]
    _same(server, client)


@pytest.mark.parametrize("policy", ["server-wins", "client-wins", "newest-wins"])
def test_sync_conflict_matrix(pair, redis: Redis, policy: str) -> None:
    server, client = pair
    connection_id = _connect(server, client, redis, policy=policy)
    with server.org("srv") as a:
        ids = sorted(r["accountid"] for r in a.db.table("account").rows)[:4]
    uu, ud, du, dd = ids  # update/update, update/delete, delete/update, delete/delete
    with server.org("srv") as a:
        records.update_record(a, "account", uu, {"name": "server"})
        records.delete_record(a, "account", ud)
        records.update_record(a, "account", du, {"name": "server"})
        records.delete_record(a, "account", dd)
    time.sleep(1.1)  # modifiedon has seconds: the client's changes are newer
    with client.org("cli") as b:
        records.update_record(b, "account", uu, {"name": "client"})
        records.update_record(b, "account", ud, {"name": "client"})
        records.delete_record(b, "account", du)
        records.delete_record(b, "account", dd)
    client.sync_now(redis, connection_id)
    _same(server, client)
    with client.org("cli") as b:
        def name(record_id: str) -> str | None:
            record = records.get_record(b, "account", record_id)
            return None if record is None else record["name"]

        expected = {
            "server-wins": {uu: "server", ud: None, du: "server", dd: None},
            "client-wins": {uu: "client", ud: "client", du: None, dd: None},
            "newest-wins": {uu: "client", ud: None, du: None, dd: None},
        }[policy]
        assert {i: name(i) for i in ids} == expected
        assert transactions.counts(b)["pending"] == 0
    with client.app.app_context():
        from portal.db import get_db
        from portal.sync import runs

        db = get_db()
        org_id = client.connection(connection_id).org_id
        last = runs.list_runs(db, org_id)[0]
        assert last["status"] == "succeeded"
        assert last["counts"]["account"]["conflicts"] >= 2
        conflicts = [line for line in runs.list_logs(db, org_id) if line["level"] == "conflict"]
        assert len(conflicts) >= 2
        assert all("client:" in c["message"] and "server:" in c["message"] for c in conflicts)


def test_sync_filter_keeps_only_matching_records(pair, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import connections

    server, client = pair
    connection_id = _connect(server, client, redis, accounts=20)
    with client.app.app_context():
        connections.configure_entity(
            get_db(), connection_id, "account",
            filter_xml='<filter type="and"><condition attribute="creditonhold" operator="eq" '
                       'value="false"/></filter>')
    client.sync_now(redis, connection_id)
    with server.org("srv") as a, client.org("cli") as b:
        expected = {r["accountid"] for r in a.db.table("account").rows
                    if not r["creditonhold"]}
        assert {r["accountid"] for r in b.db.table("account").rows} == expected
        leaving = next(i for i in sorted(expected))
        records.update_record(a, "account", leaving, {"creditonhold": True})
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert records.get_record(b, "account", leaving) is None  # it stopped matching
        assert b.db.table("account").count == len(expected) - 1
        assert transactions.counts(b)["pending"] == 0  # leaving the client is not a deletion
    with server.org("srv") as a:
        assert records.get_record(a, "account", leaving) is not None


def test_sync_six_metadata_changes_reach_the_client_with_data_kept(pair, redis: Redis) -> None:
    from portal.db import get_db
    from portal.orgs import schema
    from portal.orgs.metadata import Attribute, Entity

    server, client = pair
    connection_id = _connect(server, client, redis, accounts=5)
    with server.org("srv") as a:
        schema.add_entity(a, Entity("visit", attributes=[Attribute("title", "string")]))  # 1
        schema.add_attribute(a, "account", Attribute("rating", "integer", "Rating"))  # 2
        schema.alter_attribute(a, "account", Attribute("numberofemployees", "bigint",  # 3
                                                       "Employees"))
        schema.remove_attribute(a, "account", "telephone1")  # 4
        schema.remove_entity(a, "competitor")  # 5 (and leadcompetitor's lookup with it)
        schema.update_entity(a, "contact", labels={"1033": "Person", "1031": "Person"})  # 6
    with client.org("cli") as b:
        accounts_before = {r["accountid"]: r["numberofemployees"]
                           for r in b.db.table("account").rows}
    client.queue(redis, connection_id, "metadata", "button")
    client.work(redis)
    with server.org("srv") as a, client.org("cli") as b:
        assert list(b.entities()) == list(a.entities())
        for name, entity in a.entities().items():
            assert b.entity(name).attributes == entity.attributes, name
            assert b.entity(name).labels == entity.labels
        assert {r["accountid"]: r["numberofemployees"]
                for r in b.db.table("account").rows} == accounts_before
    with client.app.app_context():
        from portal.sync import runs

        logged = [line["message"] for line in
                  runs.list_logs(get_db(), client.connection(connection_id).org_id)]
    for change in ("added entity visit", "added attribute account.rating",
                   "changed attribute account.numberofemployees",
                   "removed attribute account.telephone1", "removed entity competitor",
                   "updated labels of entity contact"):
        assert change in logged
    client.sync_now(redis, connection_id)
    _same_entities(server, client)


def _same_entities(server: Side, client: Side) -> None:
    with server.org("srv") as a, client.org("cli") as b:
        names = list(a.entities())
        assert snapshot(a, names) == snapshot(b, names)


@resco_only
def test_sync_chain_a_to_b_to_c_and_back(
        pair, redis: Redis, portal_process, tmp_path: Path) -> None:
    server, middle = pair
    a_to_b = _connect(server, middle, redis, accounts=10)
    b_process = portal_process(middle.instance)
    # Portal C numbers its connections and runs from 1, as B does: its own Redis
    # database keeps its job ids and locks apart from B's (README, Production).
    c_redis_url = _other_database(middle.redis_url)
    c_redis = connect_redis(c_redis_url)
    c_redis.flushdb()
    last = Side(tmp_path / "c", c_redis_url)
    last.create_org("end", template=None)
    b_to_c = last.connect_now(c_redis, "end", b_process.odata_root("cli"))
    hops = [(server, "srv", middle, "cli"), (middle, "cli", last, "end")]
    _chain_identical(hops)  # both connects ended identical, hop by hop
    with last.org("end") as c:
        made = records.create_record(c, "account", {"name": "made on C"})
    _synced(last, c_redis, b_to_c)  # C -> B (B records it as its own offline transaction)
    _synced(middle, redis, a_to_b)  # B -> A
    with server.org("srv") as a:
        assert records.get_record(a, "account", made["accountid"])["name"] == "made on C"  # type: ignore[index]
        records.update_record(a, "account", made["accountid"], {"name": "changed on A"})
    _synced(middle, redis, a_to_b)  # A -> B
    _synced(last, c_redis, b_to_c)  # B -> C
    with last.org("end") as c:
        assert records.get_record(c, "account", made["accountid"])["name"] == "changed on A"  # type: ignore[index]
    _chain_identical(hops)
    with server.org("srv") as a, last.org("end") as c:
        assert snapshot(a, SALES) == snapshot(c, SALES)


def _other_database(redis_url: str) -> str:
    """The same Redis server's database 1 (the tests' portals use database 0)."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    if parts.scheme == "unix":  # a socket's URL names its database in the query
        return f"unix://{parts.path}?db=1"
    return f"{parts.scheme}://{parts.netloc}/1"


def _synced(side: Side, redis: Redis, connection_id: int) -> None:
    """One sync run of the connection, which must succeed (a failed run is named, not hidden)."""
    from portal.db import get_db
    from portal.sync import runs

    side.sync_now(redis, connection_id)
    with side.app.app_context():
        newest = runs.list_runs(get_db(), side.connection(connection_id).org_id)[0]
    assert (newest["kind"], newest["status"]) == ("sync", "succeeded"), newest


def _chain_identical(hops: list[tuple[Side, str, Side, str]]) -> None:
    """Each server org and its client hold the same records: a difference names its hop."""
    for server, server_org, client, client_org in hops:
        with server.org(server_org) as s, client.org(client_org) as c:
            assert_identical(s, c, SALES)


@resco_only
def test_sync_two_schedulers_still_one_run_per_due_connection(pair, redis: Redis) -> None:
    import threading

    from portal.db import get_db
    from portal.sync import connections, runs

    server, client = pair
    connection_id = _connect(server, client, redis, accounts=3)
    with client.app.app_context():
        db = get_db()
        connections.set_schedule(db, connection_id, every_minutes=15)
        db.execute("UPDATE connections SET next_run_at = '2000-01-01T00:00:00Z' WHERE id = ?",
                   [connection_id])  # due now
    from jobs.sync import dispatch

    enqueued: list[list[int]] = []

    def scheduler() -> None:
        with client.app.app_context():
            enqueued.append(dispatch())

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(e) for e in enqueued) == [0, 1]  # one dispatcher enqueued, one found it done
    with client.app.app_context():  # and a second tick right after finds nothing due
        assert dispatch() == []
    client.work(redis)
    with client.app.app_context():
        sync_runs = [r for r in runs.list_runs(get_db(), client.connection(connection_id).org_id)
                     if r["kind"] == "sync"]
    assert [r["trigger"] for r in sync_runs] == ["schedule"]
    assert client.connection(connection_id).next_run_at > "2000-01-01T00:00:00Z"  # type: ignore[operator]


@resco_only
def test_sync_instant_mode_uploads_an_api_write_at_once(
        pair, redis: Redis, portal_process) -> None:
    import requests

    from portal.db import get_db
    from portal.sync import connections
    from tests.conftest import ADMIN_EMAIL

    server, client = pair
    connection_id = _connect(server, client, redis, accounts=3)
    with client.app.app_context():
        connections.update_settings(get_db(), connection_id, write_offline=False)
    b = portal_process(client.instance)
    auth = (ADMIN_EMAIL, ADMIN_PASSWORD)
    for i in range(3):  # three writes, coalesced into one queued upload
        answer = requests.post(b.odata_root("cli") + "accounts", json={"name": f"instant {i}"},
                               auth=auth, timeout=30)
        assert answer.status_code == 201, answer.text
    assert redis.llen("rq:queue:default") == 1
    client.work(redis)
    with server.org("srv") as a:
        names = {r["name"] for r in a.db.table("account").rows}
    assert {"instant 0", "instant 1", "instant 2"} <= names
    with client.org("cli") as c:
        assert transactions.counts(c)["processed"] == 3


def test_sync_error_transaction_set_to_pending_goes_through(pair, redis: Redis) -> None:
    from portal.orgs import schema
    from portal.orgs.metadata import Attribute

    server, client = pair
    connection_id = _connect(server, client, redis, accounts=3)
    with server.org("srv") as a:
        schema.remove_attribute(a, "account", "telephone1")  # the server refuses it now
    with client.org("cli") as b:
        record_id = next(iter(b.db.table("account").rows))["accountid"]
        records.update_record(b, "account", record_id, {"telephone1": "+421 1"})
        other = records.create_record(b, "account", {"name": "unrelated"})
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        failed = transactions.list_transactions(b, "error")
        assert [t.record_id for t in failed] == [record_id]
        assert "telephone1" in (failed[0].error or "")
        assert transactions.counts(b)["processed"] == 1  # the unrelated record was not blocked
        # A later change of the same record waits behind the error.
        records.update_record(b, "account", record_id, {"name": "renamed"})
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 1
    with server.org("srv") as a:
        assert records.get_record(a, "account", other["accountid"]) is not None
        schema.add_attribute(a, "account", Attribute("telephone1", "string", maxlength=50))
    with client.org("cli") as b:
        assert transactions.set_all_pending(b) == 1
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b)["processed"] == 3
    with server.org("srv") as a:
        stored = records.get_record(a, "account", record_id)
        assert stored["telephone1"] == "+421 1" and stored["name"] == "renamed"  # type: ignore[index]


@pytest.mark.parametrize("pair", ["dynamics"], indirect=True)
def test_sync_dynamics_as_an_application_user_and_refused_secrets_readably(
        pair, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import connections

    server, client = pair
    application_users = pytest.importorskip("portal.orgs.application_users")
    with server.app.app_context():
        app_user, secret = application_users.create_application_user(
            get_db(), "srv", "CRM Sync", admin=True)
    with server.org("srv") as org:
        seed_sales(org, accounts=8)
    client.create_org("cli", template=None)
    with client.app.app_context():
        db = get_db()
        org_id = db.execute("SELECT id FROM orgs WHERE name = 'cli'").fetchone()[0]
        key = crypto.load_key(client.instance)
        connection = connections.create_connection(
            db, key, org_id, backend="dynamics", url=server.url,
            username=app_user["client_id"], password=secret + "-wrong",
            server_options={"auth": "client_credentials"})
        client.queue(redis, connection.id, "connect")
    client.work(redis)
    failed = client.connection(connection.id)
    assert failed.status == "failed"
    assert "refused the sign-in: AADSTS" in (failed.error or ""), failed.error
    assert "Traceback" not in (failed.error or "")
    with client.org("cli") as b:
        assert list(b.entities()) == []  # nothing half-made
    with client.app.app_context():
        connections.update_server(get_db(), key, connection.id, backend="dynamics",
                                  url=server.url, username=app_user["client_id"],
                                  password=secret,
                                  server_options={"auth": "client_credentials"})
        client.queue(redis, connection.id, "connect")
    client.work(redis)
    assert client.connection(connection.id).status == "connected"
    _same(server, client)


def _dataverse_server(tmp_path: Path, redis_url: str, portal_process, monkeypatch,
                      accounts: int, env: dict[str, str]):
    """Server org `srv` seeded with `accounts`, on a TLS portal with `env`; the worker trusts it."""
    tls = dataverse_tls(tmp_path / "tls")
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=accounts)
    process = portal_process(tmp_path / "a", tls=tls, env=env)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    return server, process, tls


def test_sync_dynamics_through_a_429_storm_waits_as_told_and_ends_identical(
        tmp_path: Path, redis_url: str, redis: Redis, portal_process, monkeypatch) -> None:
    # The server's Dataverse root with service protection on and a small budget: the
    # connect job meets 429s with Retry-After and waits them out; nothing is lost.
    server, process, _ = _dataverse_server(tmp_path, redis_url, portal_process, monkeypatch,
                                           30, {"PORTAL_DATAVERSE_SERVICE_PROTECTION": "true",
                                                "PORTAL_DATAVERSE_LIMIT_REQUESTS": "25",
                                                "PORTAL_DATAVERSE_LIMIT_WINDOW_S": "2"})
    server.url = f"{process.url}/dataverse/srv"
    client = Side(tmp_path / "b", redis_url, backend="dynamics",
                  config={"SYNC_PAGE_SIZE": 10, "SYNC_HTTP_RETRIES": 20})
    client.create_org("cli", template=None)
    client.connect_now(redis, "cli", server.url)
    _same(server, client)


dynamics_only = pytest.mark.parametrize("pair", ["dynamics"], indirect=True)


def _logs(client: Side, connection_id: int) -> list[str]:
    from portal.db import get_db
    from portal.sync import runs

    with client.app.app_context():
        return [line["message"] for line in
                runs.list_logs(get_db(), client.connection(connection_id).org_id)]


@dynamics_only
def test_sync_dynamics_expired_delta_token_reads_again_in_full_nothing_lost_or_doubled(
        pair, redis: Redis) -> None:
    from portal.orgs import changes

    server, client = pair
    connection_id = _connect(server, client, redis)
    with server.org("srv") as a:
        ids = sorted(r["accountid"] for r in a.db.table("account").rows)
        records.delete_record(a, "account", ids[0])
        records.delete_record(a, "account", ids[1])
        records.update_record(a, "account", ids[2], {"name": "changed while the token aged"})
        records.create_record(a, "account", {"name": "made while the token aged"})
        # The org's change history is pruned (as Dataverse's change-tracking window ends):
        # the connection's delta tokens are older than the feed, so the server refuses
        # them with ExpiredVersionStamp (0x80044352), and the deletions are not reported.
        assert changes.forget_tombstones(a, "9999-12-31T00:00:00Z") >= 2
    with client.org("cli") as b:
        records.update_record(b, "account", ids[3], {"telephone1": "+421 2 000"})
        mine = records.create_record(b, "account", {"name": "made on the client meanwhile"})
    before = _version(server)
    client.sync_now(redis, connection_id)
    _same(server, client)
    assert _version(server) - before == 2  # the client's two writes, each once
    with client.org("cli") as b:
        assert records.get_record(b, "account", ids[0]) is None
        assert records.get_record(b, "account", ids[1]) is None
        assert records.get_record(b, "account", mine["accountid"]) is not None
        assert transactions.counts(b) == {"pending": 0, "processed": 2, "error": 0,
                                          "archived": 0}
    logged = _logs(client, connection_id)
    started_over = [m for m in logged if "reading account again in full" in m]
    assert len(started_over) == 1, logged[:10]
    assert "Version stamp associated with the client has expired" in started_over[0]
    assert any(m.startswith("downloaded ") and "deleted 2 " in m for m in logged), logged[:10]
    # The full read left a new delta link: the next run reads changes again, not all.
    client.sync_now(redis, connection_id)
    assert len([m for m in _logs(client, connection_id) if "again in full" in m]) == 1
    assert _version(server) - before == 2
    _same(server, client)


def test_sync_dynamics_sends_the_filter_as_odata_filter_on_an_untracked_table(
        tmp_path: Path, redis_url: str, redis: Redis, portal_process, monkeypatch) -> None:
    from portal.db import get_db
    from portal.sync import connections
    from tests.fault_proxy import FaultProxy

    # account without change tracking on the server: read by a modifiedon watermark, where
    # Dataverse takes $filter. A proxy counts the records that cross the wire.
    server, process, tls = _dataverse_server(tmp_path, redis_url, portal_process, monkeypatch,
                                             40, {"PORTAL_DATAVERSE_UNTRACKED_TABLES": "account"})
    proxy = FaultProxy(process.url, tls=tls)
    try:
        server.url = f"{proxy.url}/dataverse/srv"
        client = Side(tmp_path / "b", redis_url, backend="dynamics")
        client.create_org("cli", template=None)
        connection_id = client.connect_now(redis, "cli", server.url)
        assert proxy.served["accounts"] == 2 * 40  # read, then listed (reconciliation)

        def filtered(xml: str) -> tuple[int, set[str]]:
            with client.app.app_context():
                connections.configure_entity(get_db(), connection_id, "account",
                                             filter_xml=xml)
            before = proxy.served["accounts"]
            client.sync_now(redis, connection_id)
            with client.org("cli") as b:
                return proxy.served["accounts"] - before, {
                    r["accountid"] for r in b.db.table("account").rows}

        def server_accounts(keep) -> dict[str, dict]:  # type: ignore[type-arg]
            with server.org("srv") as a:
                return {i: r for i, r in snapshot(a, ["account"])["account"].items()
                        if keep(r)}

        def client_accounts() -> dict[str, dict]:  # type: ignore[type-arg]
            with client.org("cli") as b:
                return snapshot(b, ["account"])["account"]

        served, kept = filtered('<filter type="and"><condition attribute="creditonhold" '
                                'operator="eq" value="false"/></filter>')
        expected = server_accounts(lambda r: not r["creditonhold"])
        assert 0 < len(expected) < 40
        assert client_accounts() == expected  # the same records and values as the engine's
        # Only the matching records crossed the wire: one read and one listing of them.
        assert served == 2 * len(expected)
        leaving, renamed = sorted(expected)[:2]
        with server.org("srv") as a:
            records.update_record(a, "account", leaving, {"creditonhold": True})
            records.update_record(a, "account", renamed, {"name": "renamed on the server"})
        client.sync_now(redis, connection_id)
        # The record that stopped matching is not sent, and leaves by the filtered listing.
        expected = server_accounts(lambda r: not r["creditonhold"])
        assert leaving not in expected and client_accounts() == expected
        with client.org("cli") as b:
            assert transactions.counts(b)["pending"] == 0  # leaving is not a deletion
        # A like pattern OData cannot say: the engine's filter alone, every record read.
        served, kept = filtered('<filter><condition attribute="name" operator="like" '
                                'value="Account 1%5"/></filter>')
        assert served == 2 * 40
        expected = server_accounts(lambda r: r["name"].startswith("Account 1")
                                   and r["name"].endswith("5"))
        assert set(expected) == {r for r in kept} and client_accounts() == expected
        _same_entities_but(server, client, "account")
    finally:
        proxy.stop()


def _same_entities_but(server: Side, client: Side, filtered: str) -> None:
    with server.org("srv") as a, client.org("cli") as b:
        names = [n for n in SALES if n != filtered]
        assert snapshot(a, names) == snapshot(b, names)


@dynamics_only
def test_sync_dynamics_bad_server_values_fail_clearly_make_nothing_and_can_be_fixed(
        pair, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import connections

    server, client = pair
    with server.org("srv") as org:
        seed_sales(org, accounts=5)
    portal = server.url.removesuffix("/dataverse/srv")  # type: ignore[union-attr]
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]
    key = crypto.load_key(client.instance)
    bad = [
        # The org's OData root is no Dataverse environment: no Bearer challenge there.
        (f"{portal}/odata/v4/srv/", {}, "is not a Dataverse environment"),
        # A tenant (the hosted portal's authority of an org) that does not exist.
        (server.url, {"authority": f"{portal}/dataverse/no-such-org"}, "AADSTS"),
    ]
    for url, options, said in bad:
        with client.app.app_context():
            connections.update_server(get_db(), key, connection_id, backend="dynamics",
                                      url=url, username=ADMIN_EMAIL, password=ADMIN_PASSWORD,
                                      server_options=options)
        client.queue(redis, connection_id, "connect")
        client.work(redis)
        failed = client.connection(connection_id)
        assert failed.status == "failed", url
        assert said in (failed.error or ""), failed.error
        assert "Traceback" not in (failed.error or "")
        with client.org("cli") as b:
            assert list(b.entities()) == []  # nothing half-made
    # The way on: the right values, connected, the same data on both sides.
    with client.app.app_context():
        connections.update_server(get_db(), key, connection_id, backend="dynamics",
                                  url=server.url, username=ADMIN_EMAIL,  # type: ignore[arg-type]
                                  password=ADMIN_PASSWORD)
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _same(server, client)


def _version(side: Side) -> int:
    from portal.orgs import store

    with side.org("srv") as a:
        return store.current_version(a.db)


@resco_only
def test_sync_backend_counts_records_for_progress(pair) -> None:
    from portal.backends.resco import RescoBackend
    from portal.sync.engine import count_records
    from tests.conftest import ADMIN_EMAIL

    server, _ = pair
    with server.org("srv") as a:
        seed_sales(a, accounts=12)
        entities = [a.entity("account"), a.entity("contact"), a.entity("lead")]
    backend = RescoBackend(server.url, ADMIN_EMAIL, ADMIN_PASSWORD, allow_private=True)  # type: ignore[arg-type]
    try:
        assert count_records(backend, entities) == {"account": 12, "contact": 12, "lead": 20}
    finally:
        backend.close()


@resco_only
def test_sync_job_refuses_a_private_server_unless_the_operator_allows_it(
        pair, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import runs

    server, client = pair
    connection_id = _connect(server, client, redis)
    with client.org("cli") as b:
        records.create_record(b, "account", {"name": "waits for an allowed server"})
    # The operator turns private servers off: the job checks the URL again, in the backend.
    strict = Side(client.instance, client.redis_url, config={"ALLOW_PRIVATE_SERVERS": False})
    strict.sync_now(redis, connection_id)
    with strict.app.app_context():
        last = runs.list_runs(get_db(), strict.connection(connection_id).org_id)[0]
    assert last["status"] == "failed"
    assert "loopback" in last["error"] and "PORTAL_ALLOW_PRIVATE_SERVERS" in last["error"]
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 1


@pytest.mark.parametrize("asked", [1, 4])
def test_sync_connections_streams_reach_the_run_and_one_or_four_sync_exactly(
        pair, redis: Redis, asked: int) -> None:
    # The connection's own setting (not SYNC_STREAMS, 2 here) decides how many entities the
    # runs read at once, capped by the backend; pages of 40 interleave the entities' pages.
    from portal.db import get_db
    from portal.sync import connections

    server, client = pair
    client = Side(client.instance, client.redis_url, backend=client.backend,
                  config={"SYNC_PAGE_SIZE": 40, "SYNC_STREAMS": 2})
    with server.org("srv") as org:
        seed_sales(org, accounts=150)
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]
    with client.app.app_context():
        connections.update_settings(get_db(), connection_id, streams=asked)
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _same(server, client)
    with server.org("srv") as a:
        ids = [r["accountid"] for r in a.db.table("account").rows]
        for record_id in ids[:60]:
            records.update_record(a, "account", record_id, {"name": f"Renamed {record_id}"})
        for record_id in ids[60:70]:
            records.delete_record(a, "account", record_id)
        for n in range(50):
            records.create_record(a, "contact", {"lastname": f"New {n}"})
    client.sync_now(redis, connection_id)
    _same(server, client)
    # The hosted Dataverse root recommends 2 (DATAVERSE_DOP_HINT's default).
    used, cap = (asked, "") if client.backend == "resco" or asked == 1 else \
        (2, ", capped: the server's x-ms-dop-hint is 2")
    line = f"{used} {'entity' if used == 1 else 'entities'} at once ({asked} asked{cap})"
    assert _logs(client, connection_id).count(line) == 2, _logs(client, connection_id)


def test_sync_dynamics_reads_four_entities_at_once_where_the_server_recommends_more(
        tmp_path: Path, redis_url: str, redis: Redis, portal_process, monkeypatch) -> None:
    # x-ms-dop-hint 8: the backend's own limit (4) decides; four readers share the token,
    # the definitions and one session, and the client ends identical, twice.
    from portal.db import get_db
    from portal.sync import connections

    server, process, _ = _dataverse_server(tmp_path, redis_url, portal_process, monkeypatch,
                                           150, {"PORTAL_DATAVERSE_DOP_HINT": "8"})
    server.url = f"{process.url}/dataverse/srv"
    client = Side(tmp_path / "b", redis_url, backend="dynamics", config={"SYNC_PAGE_SIZE": 30})
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url)
    with client.app.app_context():
        connections.update_settings(get_db(), connection_id, streams=16)
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _same(server, client)
    with server.org("srv") as a:
        for row in list(a.db.table("contact").rows)[:40]:
            records.update_record(a, "contact", row["contactid"], {"lastname": "Changed"})
    client.sync_now(redis, connection_id)
    _same(server, client)
    line = "4 entities at once (16 asked, capped: the dynamics backend allows 4)"
    assert _logs(client, connection_id).count(line) == 2, _logs(client, connection_id)

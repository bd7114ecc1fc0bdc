"""The sync engine between two real portals over HTTP: portal A hosts the server org,
portal B the client org; jobs run on a real RQ worker against a real Redis."""

import time
from pathlib import Path

import pytest
from redis import Redis

from portal.orgs import records, transactions
from portal.orgs.templates import sales
from portal.queue import enqueue_connect, enqueue_sync
from tests.conftest import ADMIN_PASSWORD
from tests.sync_helpers import Side, checksums, seed_sales, snapshot

SALES = [e.logicalname for e in sales()]


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis: Redis, portal_process):  # type: ignore[no-untyped-def]
    """Portal A (a real gunicorn) with org `srv` from the sales template; portal B's side."""
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    process = portal_process(tmp_path / "a")
    server.url = process.odata_root("srv")
    client = Side(tmp_path / "b", redis_url)
    return server, client


def test_sync_connect_copies_metadata_and_5000_records(pair, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    with server.org("srv") as org:
        seed_sales(org, accounts=2400, contacts_per_account=1)
        total = sum(org.db.table(n).count for n in SALES)
    assert total >= 4800
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]

    with client.app.app_context():
        enqueue_connect(redis, connection_id)
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "connected", connection.error
    assert connection.schedule_active
    with server.org("srv") as a, client.org("cli") as b:
        assert list(b.entities()) == list(a.entities())
        assert checksums(a, SALES) == checksums(b, SALES)
        assert transactions.is_client(b.db)
        assert transactions.counts(b)["pending"] == 0


def test_sync_connect_with_wrong_password_fails_with_the_servers_message(  # type: ignore[no-untyped-def]
        pair, redis: Redis) -> None:
    server, client = pair
    client.create_org("cli", template=None)
    connection_id = client.connect("cli", server.url, password="wrong-password1")  # type: ignore[arg-type]

    with client.app.app_context():
        enqueue_connect(redis, connection_id)
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
    connection_id = client.connect("cli", server.url, policy=policy)  # type: ignore[arg-type]
    with client.app.app_context():
        enqueue_connect(redis, connection_id)
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    return connection_id


def _run(client: Side, redis: Redis, connection_id: int) -> None:
    with client.app.app_context():
        enqueue_sync(redis, connection_id, "cli")
    client.work(redis)


def _same(server: Side, client: Side) -> None:
    with server.org("srv") as a, client.org("cli") as b:
        theirs, ours = snapshot(a, SALES), snapshot(b, SALES)
    for name in SALES:
        differ = {i: (theirs[name].get(i), ours[name].get(i))
                  for i in set(theirs[name]) | set(ours[name])
                  if theirs[name].get(i) != ours[name].get(i)}
        assert not differ, f"{name} differs (server, client): {differ}"


def test_sync_changes_and_deletions_both_ways(pair, redis: Redis) -> None:  # type: ignore[no-untyped-def]
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
        assert transactions.counts(b)["pending"] == 3
    _run(client, redis, connection_id)
    _same(server, client)
    with server.org("srv") as a, client.org("cli") as b:
        assert records.get_record(a, "account", mine["accountid"])["name"] == "New on client"  # type: ignore[index]
        assert records.get_record(a, "account", server_accounts[3]) is None
        assert records.get_record(b, "account", server_accounts[1]) is None
        assert transactions.counts(b) == {"pending": 0, "processed": 3, "error": 0,
                                          "archived": 0}
        # Nothing that came from the server went back: the server saw exactly 3 writes
        # from the client (its version grew by 3 after our own 5 changes).
    # A second run with nothing new changes nothing and sends nothing.
    with server.org("srv") as a:
        version = a.db.execute("SELECT value FROM _org WHERE key='version'").fetchone()[0]
    _run(client, redis, connection_id)
    with server.org("srv") as a:
        assert a.db.execute("SELECT value FROM _org WHERE key='version'").fetchone()[0] == version
    _same(server, client)


@pytest.mark.parametrize("policy", ["server-wins", "client-wins", "newest-wins"])
def test_sync_conflict_matrix(pair, redis: Redis, policy: str) -> None:  # type: ignore[no-untyped-def]
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
    _run(client, redis, connection_id)
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

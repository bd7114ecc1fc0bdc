"""Reconnecting a failed connection: the same server resumes, another server starts fresh.

Portal A (a real gunicorn) hosts two server orgs, `srva` behind a loopback proxy
that counts what it serves and `srvb` reached directly; the client side's
connect job runs in its own process, killed with SIGKILL half-way.
"""

from pathlib import Path

import pytest
from redis import Redis

from portal import crypto
from portal.db import get_db
from portal.errors import InvalidInput
from portal.orgs import records, sync_state, transactions
from portal.orgs.templates import sales
from portal.sync import connections, registration, runs
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.fault_proxy import FaultProxy
from tests.sync_helpers import Side, assert_identical, seed_sales, snapshot
from tests.test_sync_faults import FAST, _job_in_process, _kill_when, _wait_for

SALES = [e.logicalname for e in sales()]
SERVER = "http://127.0.0.1:9/odata/v4/srv/"  # never reached: no job runs


@pytest.fixture
def two_servers(tmp_path: Path, redis_url: str, portal_process):
    """Server orgs srva (behind a counting proxy) and srvb on one portal; client side cli."""
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srva")
    server.create_org("srvb")
    with server.org("srva") as a:
        seed_sales(a, accounts=400, seed=7)
    with server.org("srvb") as b:
        seed_sales(b, accounts=150, seed=11)
    process = portal_process(tmp_path / "a")
    proxy = FaultProxy(process.url)
    client = Side(tmp_path / "b", redis_url, config=FAST)
    client.create_org("cli", template=None)
    yield server, client, proxy, (proxy.url + "/odata/v4/srva/", process.url + "/odata/v4/srvb/")
    proxy.stop()


def _accounts(client: Side) -> int:
    try:
        with client.org("cli") as o:
            return o.db.table("account").count if o.db.table("account").exists() else 0
    except Exception:  # the org file may not have its tables yet
        return 0


def _resuming(client: Side, connection_id: int) -> bool:
    with client.app.app_context():
        return runs.resuming(get_db(), client.orgs_dir, connection_id, "cli")


def _reconnect(client: Side, connection_id: int, url: str, password: str = ADMIN_PASSWORD):
    with client.app.app_context():
        db = get_db()
        return registration.reconnect(
            db, client.orgs_dir, crypto.load_key(client.instance),
            connections.get_connection(db, connection_id), backend="resco", url=url,
            username=ADMIN_EMAIL, password=password, allow_private=True)


def test_reconnect_to_another_server_after_a_kill_starts_fresh(two_servers,
                                                                redis: Redis) -> None:
    server, client, proxy, (url_a, url_b) = two_servers
    connection_id = client.connect("cli", url_a)
    proxy.hold_page = ("accounts", 3)  # two pages of A's accounts committed, the third held
    job = _job_in_process(client, "connect", connection_id)
    _kill_when(job, lambda: proxy.holding.is_set() and _accounts(client) == 100)  # SIGKILL
    proxy.hold_page = None
    proxy.release()
    with client.org("cli") as c:
        a_ids = set(snapshot(c, ["account"])["account"])
        assert len(a_ids) == 100 and sync_state.checkpoint(c, "account").link
        # The client's own offline work while it waits: a new account, a change of A's.
        mine = records.create_record(c, "account", {"name": "Made on the client"})["accountid"]
        records.update_record(c, "account", sorted(a_ids)[0], {"name": "Changed on the client"})
        assert transactions.counts(c)["pending"] == 2

    # The killed job's lock expires; the dispatcher records the run abandoned and
    # queues the connect again (to resume A) — then the admin points it at B.
    _wait_for(lambda: not redis.exists(f"portal:lock:connection:{connection_id}"),
              "the connection lock to expire")
    with client.app.app_context():
        from jobs.sync import recover
        from portal.queue import get_redis

        assert any("resumed" in line for line in recover(get_db(), get_redis()))
    assert client.connection(connection_id).status == "failed"
    assert _resuming(client, connection_id)  # the queued connect would go on from A's pages
    served_by_a = proxy.served.copy()
    moved = _reconnect(client, connection_id, url_b)
    assert (moved.url, moved.status) == (url_b, "pending")
    assert not _resuming(client, connection_id)  # a fresh start on B
    with client.org("cli") as c:
        # Dropped with the reconnect: A's records, versions, keys and checkpoints.
        assert set(snapshot(c, ["account"])["account"]) == {mine}
        assert c.db.execute("SELECT count(*) FROM _server_versions").fetchone()[0] == 0
        assert c.db.execute("SELECT count(*) FROM _sync_state").fetchone()[0] == 0
        archived = transactions.list_transactions(c, "archived")
        assert [(t.record_id, t.operation) for t in archived] == [(sorted(a_ids)[0], "update")]
        assert "was the old server's" in (archived[0].error or "")
        assert [t.record_id for t in transactions.list_transactions(c, "pending")] == [mine]

    client.work(redis)  # the queued connect runs, now against B
    connection = client.connection(connection_id)
    assert connection.status == "connected", connection.error
    assert proxy.served == served_by_a  # nothing more was read from A
    with server.org("srvb") as b, client.org("cli") as c:
        ours, theirs = snapshot(c, SALES), snapshot(b, SALES)
        assert set(ours["account"]) == set(theirs["account"]) | {mine}
        assert not a_ids & set(ours["account"])
    # The first sync run sends the client's own new account to B; then both are equal.
    client.sync_now(redis, connection_id)
    with server.org("srvb") as b, client.org("cli") as c:
        assert mine in snapshot(b, ["account"])["account"]
        assert_identical(b, c, SALES)
        assert transactions.counts(c)["pending"] == 0


def test_reconnect_to_the_same_server_keeps_where_the_download_stands(
        redis_url: str, tmp_path: Path) -> None:
    side = Side(tmp_path / "c", redis_url)
    side.create_org("cli", template="sales")
    connection_id = side.connect("cli", SERVER)
    with side.org("cli") as c, c.db.conn:
        sync_state.save_checkpoint(c.db, sync_state.Checkpoint(
            "account", SERVER + "accounts?$skiptoken=9", False, None))
        sync_state.save_server_versions(c.db, "account",
                                        {"11111111-1111-4111-8111-111111111111": "5"})
    with side.app.app_context():
        connections.set_status(get_db(), connection_id, connections.ConnectionStatus.FAILED,
                               error="boom")
    # The same server, without its trailing slash, a new password.
    _reconnect(side, connection_id, "http://127.0.0.1:9/odata/v4/srv", password="new-one")
    with side.org("cli") as c:
        assert sync_state.checkpoint(c, "account").link.endswith("$skiptoken=9")
        assert c.db.execute("SELECT count(*) FROM _server_versions").fetchone()[0] == 1
    # Another server org on the same host starts fresh.
    _reconnect(side, connection_id, "http://127.0.0.1:9/odata/v4/other/")
    with side.org("cli") as c:
        assert sync_state.checkpoint(c, "account").link is None
        assert c.db.execute("SELECT count(*) FROM _server_versions").fetchone()[0] == 0


def test_reconnect_is_refused_while_a_job_works_on_the_connection(
        redis_url: str, tmp_path: Path) -> None:
    side = Side(tmp_path / "c", redis_url)
    side.create_org("cli", template="sales")
    connection_id = side.connect("cli", SERVER)
    with side.app.app_context():
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        runs.start_run(db, connection_id, connection.org_id, "connect", "connect", None)
    with side.org("cli") as c, c.db.conn:
        sync_state.save_checkpoint(c.db, sync_state.Checkpoint("account", "x", False, None))
    with pytest.raises(InvalidInput, match="a job is working"):
        _reconnect(side, connection_id, "http://127.0.0.2:9/odata/v4/srv/")
    assert side.connection(connection_id).url == SERVER
    with side.org("cli") as c:
        assert sync_state.checkpoint(c, "account").link == "x"

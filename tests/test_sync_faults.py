"""Exactness under faults: killed workers, lost answers, a server that is down.

Portal A (a real gunicorn) hosts the server org behind a loopback proxy that can
cut connections; portal B's jobs run on a real RQ worker, or in a process that
the test kills with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from portal.orgs import records, store, transactions
from portal.orgs.templates import sales
from portal.queue import enqueue_connect
from tests.fault_proxy import FaultProxy
from tests.sync_helpers import Side, assert_identical, seed_sales

ROOT = Path(__file__).resolve().parent.parent
SALES = [e.logicalname for e in sales()]
FAST = {"SYNC_HTTP_RETRIES": 1, "SYNC_PAGE_SIZE": 50, "SYNC_UPLOAD_BATCH": 20}


@pytest.fixture
def faulty(tmp_path: Path, redis_url: str, redis: Redis, portal_process):  # type: ignore[no-untyped-def]
    """Server portal A behind a fault proxy, and client side B (not yet connected)."""
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    process = portal_process(tmp_path / "a")
    proxy = FaultProxy(process.url)
    server.url = proxy.url + "/odata/v4/srv/"
    client = Side(tmp_path / "b", redis_url, config=FAST)
    client.create_org("cli", template=None)
    yield server, client, proxy
    proxy.stop()


def _version(side: Side, org: str) -> int:
    with side.org(org) as o:
        return store.current_version(o.db)


def _assert_identical(server: Side, client: Side) -> None:
    with server.org("srv") as a, client.org("cli") as b:
        assert_identical(a, b, SALES)


def _connected(server: Side, client: Side, redis: Redis, accounts: int) -> tuple[int, list[str]]:
    """Seed the server org, connect the client; the connection and the accounts' ids."""
    with server.org("srv") as a:
        seed_sales(a, accounts=accounts)
    connection_id = client.connect_now(redis, "cli", server.url)
    with client.org("cli") as b:
        return connection_id, sorted(r["accountid"] for r in b.db.table("account").rows)


def _job_in_process(client: Side, job: str, connection_id: int) -> subprocess.Popen[bytes]:
    """Run a sync job in its own process (as a worker would), to be killed."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(client.instance),
           "REDIS_URL": client.redis_url, "PORTAL_ALLOW_PRIVATE_SERVERS": "true",
           **{f"PORTAL_{k}": str(v) for k, v in FAST.items()}}
    code = f"from jobs.sync import {job}; {job}({connection_id})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen[bytes], condition, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the job ended before it could be killed: "
                                 + (process.stderr.read().decode() if process.stderr else ""))
        try:
            if condition():
                break
        except Exception:  # the org file may not have its tables yet
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    if process.stderr:
        process.stderr.close()


def test_sync_lost_batch_answer_is_applied_once(faulty, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server, client, proxy = faulty
    connection_id, ids = _connected(server, client, redis, accounts=20)
    with client.org("cli") as b:
        records.create_record(b, "account", {"name": "created on the client"})
        records.update_record(b, "account", ids[0], {"name": "updated on the client"})
        records.delete_record(b, "account", ids[1])
    before = _version(server, "srv")
    proxy.drop_batch_answers = 1
    client.sync_now(redis, connection_id)
    assert proxy.dropped == 1 and proxy.batches >= 2
    # Each of the three writes changed the server exactly once.
    assert _version(server, "srv") - before == 3
    with client.org("cli") as b:
        assert transactions.counts(b)["processed"] == 3
    _assert_identical(server, client)


def test_sync_server_down_keeps_transactions_pending_then_goes_through(  # type: ignore[no-untyped-def]
        faulty, redis: Redis) -> None:
    server, client, proxy = faulty
    connection_id, _ = _connected(server, client, redis, accounts=10)
    with client.org("cli") as b:
        records.create_record(b, "account", {"name": "made while the server was down"})
    proxy.down = True
    client.sync_now(redis, connection_id)
    with client.app.app_context():
        from portal.db import get_db
        from portal.sync import runs

        last = runs.list_runs(get_db(), client.connection(connection_id).org_id)[0]
    assert last["status"] == "failed"
    assert "cannot be reached" in last["error"]
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 1
    proxy.down = False
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b) == {"pending": 0, "processed": 1, "error": 0,
                                          "archived": 0}
    _assert_identical(server, client)


def test_sync_worker_killed_during_download_resumes_without_loss(faulty, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server, client, _ = faulty
    with server.org("srv") as a:
        seed_sales(a, accounts=1500)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]
    path = store.org_file(client.orgs_dir, "cli")

    def some_pages_in() -> bool:
        with store.open_org(client.orgs_dir, "cli") as b:
            return b.db.table("account").exists() and 300 < b.db.table("account").count < 1400

    for _ in range(2):  # killed twice at different points
        _kill_when(_job_in_process(client, "connect", connection_id), some_pages_in)
        assert path.exists()
    with client.org("cli") as b:
        partial = b.db.table("account").count
    assert 0 < partial < 1500
    with client.app.app_context():
        enqueue_connect(redis, connection_id)
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _assert_identical(server, client)


@pytest.mark.parametrize("kill_at", ["first batch applied, answer not yet back",
                                     "fourth batch applied, answer not yet back",
                                     "between batches"])
def test_sync_worker_killed_during_upload_resumes_without_duplicates(  # type: ignore[no-untyped-def]
        faulty, redis: Redis, kill_at: str) -> None:
    server, client, proxy = faulty
    connection_id, existing = _connected(server, client, redis, accounts=40)
    with client.org("cli") as b:
        # Creates, updates and deletes mixed, so every batch of 20 holds each kind.
        for i in range(150):
            records.create_record(b, "account", {"name": f"offline {i}"})
            if i % 5 == 0:
                records.update_record(b, "account", existing[i // 5], {"name": f"changed {i}"})
            if i % 15 == 0:
                records.delete_record(b, "account", existing[30 + i // 15])
        writes = transactions.counts(b)["pending"]
    assert writes == 150 + 30 + 10
    before = _version(server, "srv")

    job = _job_in_process(client, "sync_run", connection_id)
    if kill_at == "between batches":
        def some_uploaded() -> bool:
            with store.open_org(client.orgs_dir, "cli") as b:
                return transactions.counts(b)["processed"] >= 60

        _kill_when(job, some_uploaded)
    else:
        # The server has applied the batch; its answer waits in the proxy while the
        # worker dies, so the client never learns which writes went through.
        proxy.hold_batch = proxy.batches + (1 if kill_at.startswith("first") else 4)
        _kill_when(job, proxy.holding.is_set)
        proxy.release()
        assert _version(server, "srv") > before
    with client.org("cli") as b:
        # Some writes are on the server, and the client still has them all or some pending.
        assert 0 < transactions.counts(b)["pending"] <= writes
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b) == {"pending": 0, "processed": writes, "error": 0,
                                          "archived": 0}
    with server.org("srv") as a:
        assert a.db.table("account").count == 40 + 150 - 10
    # Every write reached the server once: a repeated create is refused as create-only,
    # a repeated update or delete by its If-Match, and recognised as our own.
    assert _version(server, "srv") - before == writes
    _assert_identical(server, client)

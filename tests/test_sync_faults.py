"""Exactness under faults: killed workers, lost answers, a server that is down.

Portal A (a real gunicorn) hosts the server org behind a loopback proxy that can
cut connections; portal B's jobs run on a real RQ worker, or in a process that
the test kills with SIGKILL.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from portal.orgs import records, store, transactions
from portal.orgs.templates import sales
from portal.queue import connect_redis
from tests.fault_proxy import FaultProxy
from tests.redis_server import RedisServer
from tests.sync_helpers import Side, assert_identical, seed_sales, snapshot
from tests.test_sync import dataverse_tls

ROOT = Path(__file__).resolve().parent.parent
SALES = [e.logicalname for e in sales()]
FAST = {"SYNC_HTTP_RETRIES": 1, "SYNC_PAGE_SIZE": 50, "SYNC_UPLOAD_BATCH": 20}


@pytest.fixture(params=["resco", "dynamics"])
def faulty(request, tmp_path: Path, redis_url: str, redis: Redis, portal_process,
           monkeypatch):
    """Server portal A behind a fault proxy, and client side B (not yet connected).

    As the sync tests' `pair`: `resco` through A's Org API, `dynamics` through A's
    Dataverse root over TLS (the proxy speaking TLS on both sides with A's test
    certificate), signing in through MSAL at A's authority, reached through the proxy.
    """
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    if request.param == "resco":
        proxy = FaultProxy(portal_process(tmp_path / "a").url)
        server.url = proxy.url + "/odata/v4/srv/"
    else:
        tls = dataverse_tls(tmp_path / "tls")
        proxy = FaultProxy(portal_process(tmp_path / "a", tls=tls).url, tls=tls)
        # The CA of the worker's requests (and of the job processes the tests start).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        server.url = proxy.url + "/dataverse/srv"
    client = Side(tmp_path / "b", redis_url, config=FAST, backend=request.param)
    client.create_org("cli", template=None)
    yield server, client, proxy
    proxy.stop()


# Faults of the client's own side (its Redis, its org file): one backend shows them.
resco_only = pytest.mark.parametrize("faulty", ["resco"], indirect=True)


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


def _job_in_process(client: Side, job: str, connection_id: int,
                    config: dict[str, int] | None = None) -> subprocess.Popen[bytes]:
    """Run a sync job in its own process (as a worker would), to be killed."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(client.instance),
           "REDIS_URL": client.redis_url, "PORTAL_ALLOW_PRIVATE_SERVERS": "true",
           **{f"PORTAL_{k}": str(v) for k, v in (config or FAST).items()}}
    code = f"from jobs.sync import {job}; {job}({connection_id})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen[bytes], condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = process.stderr.read().decode() if process.stderr else ""
            if process.stderr:
                process.stderr.close()  # not left for the garbage collector to warn about
            raise AssertionError("the job ended before it could be killed: " + said)
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


def test_sync_lost_batch_answer_is_applied_once(faulty, redis: Redis) -> None:
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


def test_sync_server_down_keeps_transactions_pending_then_goes_through(
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


def test_sync_worker_killed_during_download_resumes_without_loss(faulty, redis: Redis) -> None:
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
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _assert_identical(server, client)


@pytest.mark.parametrize("kill_at", ["first batch applied, answer not yet back",
                                     "fourth batch applied, answer not yet back",
                                     "between batches"])
def test_sync_worker_killed_during_upload_resumes_without_duplicates(
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


# --- abandoned work: real RQ workers killed with SIGKILL ---------------------------

def _worker_process(client: Side, burst: bool = True) -> subprocess.Popen[bytes]:
    """A real `rq worker` (the Procfile's, forking a work horse per job) for the client side."""
    env = {**os.environ, "PORTAL_INSTANCE_PATH": str(client.instance),
           "REDIS_URL": client.redis_url, "PORTAL_ALLOW_PRIVATE_SERVERS": "true",
           **{f"PORTAL_{k}": str(v) for k, v in FAST.items()}}
    rq = str(Path(sys.executable).parent / "rq")
    return subprocess.Popen([rq, "worker", "-w", "jobs.worker.Worker",
                             *(["--burst"] if burst else []), "--url",
                             client.redis_url, "default"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _horses(worker: subprocess.Popen[bytes]) -> list[int]:
    """The work horses (children) of a worker process, from /proc."""
    path = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _kill_all(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its work horse at once, as an OOM kill or a power cut would."""
    for pid in [*_horses(worker), worker.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(10)


def _runs(client: Side, connection_id: int) -> list[dict]:  # type: ignore[type-arg]
    with client.app.app_context():
        from portal.db import get_db
        from portal.sync import runs

        return runs.list_runs(get_db(), client.connection(connection_id).org_id)


def _committed(side: Side, org: str) -> dict[str, int]:
    """Records per entity set in an org."""
    with side.org(org) as o:
        return {e.entitysetname: o.db.table(name).count if o.db.table(name).exists() else 0
                for name, e in o.entities().items()}


def _seed_users(server: Side, count: int) -> None:
    with server.org("srv") as a:
        records.save_records(a, "systemuser", [
            {"systemuserid": f"00000000-0000-4000-8000-{i:012d}", "fullname": f"User {i}",
             "lastname": f"User {i}", "isdisabled": i % 2 == 0} for i in range(count)])


@pytest.mark.parametrize("kill_at, hold", [
    ("the first page", ("accounts", 2)),          # page 1 committed, page 2 in flight
    ("mid-way", ("contacts", 12)),                # accounts done, 11 pages of contacts in
    ("the last entity", ("systemusers", 3)),      # all but 2 pages of the last entity in
])
def test_connect_killed_resumes_from_its_last_committed_page(
        faulty, redis: Redis, kill_at: str, hold: tuple[str, int]) -> None:
    server, client, proxy = faulty
    with server.org("srv") as a:
        seed_sales(a, accounts=1000)
    _seed_users(server, 400)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]
    client.queue(redis, connection_id, "connect")
    proxy.hold_page = hold
    worker = _worker_process(client)
    page = FAST["SYNC_PAGE_SIZE"]

    def pages_before_hold_committed() -> bool:
        try:
            return proxy.holding.is_set() and \
                _committed(client, "cli").get(hold[0], 0) == (hold[1] - 1) * page
        except Exception:  # the org file may not have its tables yet
            return False

    _wait_for(pages_before_hold_committed, f"{kill_at} to be committed")
    _kill_all(worker)
    committed = _committed(client, "cli")
    served_before = proxy.served.copy()
    proxy.hold_page = None
    proxy.release()
    assert client.connection(connection_id).status == "connecting"
    assert _runs(client, connection_id)[0]["status"] == "running"

    # The lock's keeper died with the work horse: once its TTL is out, the
    # dispatcher's pass recognises the run as abandoned and resumes the connect.
    _wait_for(lambda: not redis.exists(f"portal:lock:connection:{connection_id}"),
              "the connection lock to expire")
    with client.app.app_context():
        from jobs.sync import dispatch

        dispatch()
    killed = _runs(client, connection_id)[1]
    assert killed["status"] == "failed"
    assert killed["error"].startswith("abandoned: the worker stopped")
    assert _runs(client, connection_id)[0]["status"] == "queued"  # the resumed connect
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "connected", connection.error
    _assert_identical(server, client)
    assert [r["status"] for r in _runs(client, connection_id)[:2]] == ["succeeded", "failed"]
    # Nothing committed before the kill was read again: after it, each entity set
    # served exactly the records the client did not have yet.
    on_server = _committed(server, "srv")
    served_after = {s: proxy.served[s] - served_before[s] for s in on_server}
    assert served_after == {s: on_server[s] - committed[s] for s in on_server}
    assert committed[hold[0]] == (hold[1] - 1) * page > 0


def test_connect_work_horse_killed_is_recorded_by_rqs_failure_callback(
        faulty, redis: Redis) -> None:
    server, client, proxy = faulty
    with server.org("srv") as a:
        seed_sales(a, accounts=300)
    connection_id = client.connect("cli", server.url)  # type: ignore[arg-type]
    client.queue(redis, connection_id, "connect")
    proxy.hold_page = ("accounts", 3)
    worker = _worker_process(client)
    _wait_for(proxy.holding.is_set, "the third page of accounts")
    horses = _horses(worker)
    assert len(horses) == 1
    os.kill(horses[0], signal.SIGKILL)  # the worker lives on and sees its horse die
    worker.wait(60)
    proxy.hold_page = None
    proxy.release()
    killed = _runs(client, connection_id)[0]
    assert killed["status"] == "failed"
    assert killed["error"] == ("abandoned: the worker stopped (RQ: AbandonedJobError: "
                               "its work horse was killed by signal 9)")
    connection = client.connection(connection_id)
    assert connection.status == "failed" and connection.error == killed["error"]
    assert connection.progress["ended"] == "failed"
    # The dispatcher resumes it (the CLI's `sync resume` or the status page's Resume
    # would do the same).
    with client.app.app_context():
        from jobs.sync import dispatch

        dispatch()
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    _assert_identical(server, client)


def test_sync_run_killed_is_recorded_failed_and_the_next_run_converges(
        faulty, redis: Redis) -> None:
    server, client, proxy = faulty
    connection_id, ids = _connected(server, client, redis, accounts=300)
    with server.org("srv") as a:
        for record_id in ids[:200]:
            records.update_record(a, "account", record_id, {"name": f"changed {record_id}"})
    client.queue(redis, connection_id, "sync")
    proxy.hold_page = ("accounts", proxy.pages["accounts"] + 2)
    worker = _worker_process(client)
    _wait_for(proxy.holding.is_set, "the sync run's second page")
    _kill_all(worker)
    proxy.hold_page = None
    proxy.release()
    assert _runs(client, connection_id)[0]["status"] == "running"
    _wait_for(lambda: not redis.exists(f"portal:lock:connection:{connection_id}"),
              "the connection lock to expire")
    with client.app.app_context():
        from jobs.sync import dispatch

        dispatch()
    killed = _runs(client, connection_id)[0]
    assert killed["kind"] == "sync" and killed["status"] == "failed"
    assert killed["error"] == "abandoned: the worker stopped (its lock expired)"
    assert client.connection(connection_id).status == "connected"
    client.sync_now(redis, connection_id)
    assert _runs(client, connection_id)[0]["status"] == "succeeded"
    _assert_identical(server, client)


def test_sync_run_stopped_by_the_servers_limit_is_reported_limited_then_resumes(
        faulty, redis: Redis) -> None:
    server, client, proxy = faulty
    connection_id, ids = _connected(server, client, redis, accounts=20)
    with server.org("srv") as a:
        records.update_record(a, "account", ids[0], {"name": "changed on the server"})
    with client.org("cli") as b:
        records.create_record(b, "account", {"name": "made on the client"})
    proxy.limited = True
    client.sync_now(redis, connection_id)
    stopped = _runs(client, connection_id)[0]
    assert stopped["status"] == "limited"
    assert stopped["error"].startswith("stopped by the server's limit:") and "429" in \
        stopped["error"]
    assert client.connection(connection_id).progress["ended"] == "limited"
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 1  # kept for the next run
    proxy.limited = False
    client.sync_now(redis, connection_id)
    assert _runs(client, connection_id)[0]["status"] == "succeeded"
    _assert_identical(server, client)


def test_redis_restarted_mid_run_fails_the_run_readably_and_loses_nothing(
        tmp_path: Path, redis_url: str, portal_process) -> None:
    own = RedisServer()  # the client side's Redis, killed and started empty mid-run
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    proxy = FaultProxy(portal_process(tmp_path / "a").url)
    server.url = proxy.url + "/odata/v4/srv/"
    client = Side(tmp_path / "b", own.url, config=FAST)
    client.create_org("cli", template=None)
    redis = connect_redis(own.url)
    worker = None
    try:
        connection_id, ids = _connected(server, client, redis, accounts=300)
        with server.org("srv") as a:
            for record_id in ids[:200]:
                records.update_record(a, "account", record_id, {"name": f"changed {record_id}"})
        with client.org("cli") as b:
            for i in range(30):
                records.create_record(b, "account", {"name": f"offline {i}"})
        before = _version(server, "srv")
        client.queue(redis, connection_id, "sync")
        client.queue(redis, connection_id, "metadata")  # waits in the queue: lost with Redis
        proxy.hold_page = ("accounts", proxy.pages["accounts"] + 2)
        worker = _worker_process(client, burst=False)
        _wait_for(proxy.holding.is_set, "the sync run's second page")
        own.restart()
        proxy.hold_page = None
        proxy.release()

        # The run in flight finds its lock gone and stops at its next page, readably.
        _wait_for(lambda: _runs(client, connection_id)[1]["status"] != "running",
                  "the run in flight to stop")
        stopped = _runs(client, connection_id)[1]
        assert stopped["kind"] == "sync" and stopped["status"] == "failed"
        assert "lock in Redis was lost" in stopped["error"]
        assert _runs(client, connection_id)[0]["status"] == "queued"  # the metadata run
        # The dispatcher enqueues again what Redis lost; the same worker, reconnected,
        # runs it; a due schedule is enqueued as ever.
        with client.app.app_context():
            from jobs.sync import dispatch
            from portal.db import get_db

            get_db().execute("UPDATE connections SET next_run_at = '2000-01-01T00:00:00Z'")
            get_db().conn.commit()
            assert dispatch() == [connection_id]
        _wait_for(lambda: [r["status"] for r in _runs(client, connection_id)[:2]] ==
                  ["succeeded", "succeeded"], "the metadata and the scheduled sync run")
        assert worker.poll() is None
        assert [r["kind"] for r in _runs(client, connection_id)[:3]] == ["sync", "metadata",
                                                                         "sync"]
        with client.org("cli") as b:
            assert transactions.counts(b)["pending"] == 0
        assert _version(server, "srv") - before == 30  # each offline write applied once
        _assert_identical(server, client)
    finally:
        if worker is not None:
            _kill_all(worker)
        redis.close()
        proxy.stop()
        own.stop()


# --- the client org's file: locked by another writer, or the disk full --------------

def _snapshot(side: Side, org: str) -> dict:  # type: ignore[type-arg]
    with side.org(org) as o:
        return {"records": snapshot(o, SALES), "state": list(o.db.query(
            "SELECT entity, checkpoint, complete FROM _sync_state ORDER BY entity"))}


@resco_only
def test_sync_page_write_on_a_locked_org_file_fails_readably_and_the_next_run_converges(
        faulty, redis: Redis) -> None:
    server, client, _ = faulty
    connection_id, ids = _connected(server, client, redis, accounts=100)
    with server.org("srv") as a:
        for record_id in ids[:60]:
            records.update_record(a, "account", record_id, {"name": f"changed {record_id}"})
    before = _snapshot(client, "cli")
    holder = sqlite3.connect(store.org_file(client.orgs_dir, "cli"))
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock
    try:
        client.sync_now(redis, connection_id)
    finally:
        holder.rollback()
        holder.close()
    failed = _runs(client, connection_id)[0]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("the client org's file is locked by another writer: "
                                      "the page being written was not kept")
    assert _snapshot(client, "cli") == before  # not a record of the page, nor its checkpoint
    client.sync_now(redis, connection_id)
    assert _runs(client, connection_id)[0]["status"] == "succeeded"
    _assert_identical(server, client)


@pytest.fixture
def small_disk(tmp_path: Path):
    """The client's orgs folder on a tmpfs of 16 MB (mounting needs root: else skipped)."""
    folder = tmp_path / "b" / "orgs"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small filesystem cannot be mounted here: {mounted.stderr.decode()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@resco_only
def test_sync_page_write_on_a_full_disk_fails_readably_and_the_next_run_converges(
        small_disk: Path, faulty, redis: Redis) -> None:
    server, client, _ = faulty
    connection_id, ids = _connected(server, client, redis, accounts=1000)
    with server.org("srv") as a:
        for record_id in ids:  # ~2 MB more: the WAL and the file must grow
            records.update_record(a, "account", record_id,
                                  {"name": f"changed {record_id}", "description": "x" * 2000})
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to its last block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    client.sync_now(redis, connection_id)
    failed = _runs(client, connection_id)[0]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("the disk is full (the client org's file could not "
                                      "grow): the page being written was not kept")
    filler.unlink()
    with client.org("cli") as b:
        changed = b.db.execute("SELECT count(*) FROM account WHERE name LIKE 'changed %'"
                               ).fetchone()[0]
        described = b.db.execute("SELECT count(*) FROM account WHERE description = ?",
                                 ["x" * 2000]).fetchone()[0]
    # Whole pages only: every committed page brought both values of its 50 records.
    assert changed == described and changed % FAST["SYNC_PAGE_SIZE"] == 0 and changed < 1000
    client.sync_now(redis, connection_id)
    assert _runs(client, connection_id)[0]["status"] == "succeeded"
    _assert_identical(server, client)


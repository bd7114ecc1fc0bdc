"""Several client orgs syncing one server org at once (issue 16): real gunicorn, real RQ
workers (one process each), each run reading several entities at once. Nothing may fail,
and every client must end with exactly the server's data."""

from pathlib import Path

from redis import Redis

from portal.db import get_db
from portal.orgs.templates import sales
from portal.sync import runs
from tests.sync_helpers import Side, assert_identical, seed_sales
from tests.test_sync_faults import FAST, _worker_process

SALES = [e.logicalname for e in sales()]
CLIENTS = 3


def test_clients_syncing_one_server_org_at_once_end_identical_without_errors(
        tmp_path: Path, redis_url: str, redis: Redis, portal_process) -> None:
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    with server.org("srv") as org:
        seed_sales(org, accounts=400, contacts_per_account=2)  # pages of 50: many per entity
    server.url = portal_process(tmp_path / "a").odata_root("srv")
    client = Side(tmp_path / "b", redis_url, config=FAST)
    connection_ids = []
    for n in range(CLIENTS):
        client.create_org(f"cli{n}", template=None)
        connection_ids.append(client.connect(f"cli{n}", server.url))  # type: ignore[arg-type]
        client.queue(redis, connection_ids[-1], "connect")
    workers = [_worker_process(client) for _ in range(CLIENTS)]  # all at once, until done
    for worker in workers:
        assert worker.wait(600) == 0
    for n, connection_id in enumerate(connection_ids):
        connection = client.connection(connection_id)
        assert connection.status == "connected", connection.error
        with client.app.app_context():
            run = runs.list_runs(get_db(), connection.org_id)[0]
        assert run["status"] == "succeeded" and run["error"] is None, run
        with server.org("srv") as a, client.org(f"cli{n}") as b:
            assert_identical(a, b, SALES)

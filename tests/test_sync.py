"""The sync engine between two real portals over HTTP: portal A hosts the server org,
portal B the client org; jobs run on a real RQ worker against a real Redis."""

from pathlib import Path

import pytest
from redis import Redis

from portal.orgs import transactions
from portal.orgs.templates import sales
from tests.conftest import ADMIN_PASSWORD
from tests.sync_helpers import Side, checksums, seed_sales

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
    from portal.queue import enqueue_connect

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
    from portal.queue import enqueue_connect

    with client.app.app_context():
        enqueue_connect(redis, connection_id)
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "failed"
    assert "refused" in (connection.error or "")
    with client.org("cli") as b:
        assert list(b.entities()) == []
    assert ADMIN_PASSWORD not in (connection.error or "")

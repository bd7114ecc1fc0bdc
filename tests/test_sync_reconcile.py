"""Deletions from a server that cannot track them: the engine compares ids.

Portal A (a real gunicorn) hosts the server org; the client org is a file of
this process, synced by the engine over HTTP with change tracking switched off
in the backend, so every run reads the whole entity sets and deletions are
found by `reconcile_deletions`.
"""

from pathlib import Path

import pytest

from portal.backends.resco import RescoBackend
from portal.orgs import records, transactions
from portal.orgs.store import OrgDb
from portal.orgs.templates import sales
from portal.sync import engine, metadata
from portal.sync.connections import EntitySettings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.sync_helpers import Side, assert_identical, seed_sales

SALES = [e.logicalname for e in sales()]


@pytest.fixture
def untracked(tmp_path: Path, redis_url: str, portal_process):
    """Server org `srv` on portal A with 30 accounts; client org `cli`; an untracked backend."""
    server = Side(tmp_path / "a", redis_url)
    server.create_org("srv")
    with server.org("srv") as a:
        seed_sales(a, accounts=30)
    server.url = portal_process(tmp_path / "a").odata_root("srv")
    client = Side(tmp_path / "b", redis_url)
    client.create_org("cli", template=None)
    backend = RescoBackend(server.url, ADMIN_EMAIL, ADMIN_PASSWORD, allow_private=True,
                           track_changes=False)
    with client.org("cli") as b:
        metadata.update_client_metadata(b, backend.read_metadata(), set())
        transactions.set_client(b, True)
    yield server, client, backend
    backend.close()


def _run(org: OrgDb, backend: RescoBackend, *, keep_deleted: str = "") -> engine.RunResult:
    plan = engine.Plan([EntitySettings(n, True, n != keep_deleted, None) for n in SALES],
                       page_size=7)
    return engine.sync(engine.Run(org, backend, plan))


def _server_version(server: Side) -> int:
    with server.org("srv") as a:
        return int(a.db.execute("SELECT value FROM _org WHERE key='version'").fetchone()[0])


def test_untracked_server_deletions_reach_the_client_by_id_comparison(untracked) -> None:
    server, client, backend = untracked
    with client.org("cli") as b:
        first = _run(b, backend)
    assert first.total("downloaded") > 30 and first.total("deleted") == 0
    with server.org("srv") as a, client.org("cli") as b:
        assert_identical(a, b, SALES)
        gone = [r["accountid"] for r in a.db.table("account").rows][:3]
        for record_id in gone:
            records.delete_record(a, "account", record_id)
        # A whole read again finds nothing new: nothing written, nothing sent.
    version = _server_version(server)
    with client.org("cli") as b:
        second = _run(b, backend)
        assert second.of("account").deleted == 3
        assert second.total("downloaded") == 0 and second.total("uploaded") == 0
        assert all(records.get_record(b, "account", i) is None for i in gone)
    with server.org("srv") as a, client.org("cli") as b:
        assert_identical(a, b, SALES)
    assert _server_version(server) == version


def test_untracked_reconciliation_keeps_client_records_the_server_never_had(untracked) -> None:
    server, client, backend = untracked
    with client.org("cli") as b:
        _run(b, backend)
        # Created here and not uploaded yet (only a download runs): the server never had it.
        mine = records.create_record(b, "account", {"name": "Only on the client so far"})
        # Changed here and deleted on the server: kept for the upload's conflict policy.
        changed = next(iter(b.db.table("account").rows))["accountid"]
        records.update_record(b, "account", changed, {"name": "changed on the client"})
        with server.org("srv") as a:
            records.delete_record(a, "account", changed)
        plan = engine.Plan([EntitySettings(n, True, True, None) for n in SALES])
        engine.download(engine.Run(b, backend, plan))
        assert records.get_record(b, "account", mine["accountid"]) is not None
        assert records.get_record(b, "account", changed)["name"] == "changed on the client"  # type: ignore[index]
        # Once uploaded it is the server's too, and stays through later runs; the
        # update/delete conflict goes the server's way (server-wins).
        assert _run(b, backend).of("account").conflicts == 1
        _run(b, backend)
        assert records.get_record(b, "account", mine["accountid"]) is not None
        assert records.get_record(b, "account", changed) is None
    with server.org("srv") as a, client.org("cli") as b:
        assert records.get_record(a, "account", mine["accountid"]) is not None
        assert_identical(a, b, SALES)


def test_untracked_deletions_stay_on_the_client_without_sync_deletion(untracked) -> None:
    server, client, backend = untracked
    with client.org("cli") as b:
        _run(b, backend)
    with server.org("srv") as a:
        contact = next(iter(a.db.table("contact").rows))["contactid"]
        account = next(iter(a.db.table("account").rows))["accountid"]
        records.delete_record(a, "contact", contact)
        records.delete_record(a, "account", account)
    with client.org("cli") as b:
        result = _run(b, backend, keep_deleted="contact")
        assert result.of("contact").deleted == 0 and result.of("account").deleted == 1
        assert records.get_record(b, "contact", contact) is not None
        assert records.get_record(b, "account", account) is None

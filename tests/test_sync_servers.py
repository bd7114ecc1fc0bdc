"""The sync engine against real servers that are not hosted orgs, through the `odata` backend.

Each test runs once per server (`tests/server_sides.py`): odatapy's service with
change tracking (delta links, tombstones as URLs), the same service without it
(the modifiedAt watermark and id reconciliation). The client is portal B's org;
jobs run on a real RQ worker against a real Redis.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from portal.orgs import records, transactions
from tests.server_sides import (
    OdatapySide,
    ServerSide,
    assert_same,
    odatapy_side,
    salesforce_side,
)
from tests.sync_helpers import Side

SERVERS = ["odatapy", "odatapy-watermark"]
# The servers of the generic scenarios (sides with `roles`): these and Salesforce's.
ANY_SERVERS = [*SERVERS, "salesforce"]


@pytest.fixture(params=SERVERS)
def server(request) -> Iterator[ServerSide]:
    """The server side of the test, started for it and stopped after."""
    if request.param.startswith("odatapy"):
        with odatapy_side(tracked=request.param == "odatapy") as side:
            yield side
    else:  # pragma: no cover - a param without a side
        raise AssertionError(request.param)


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Side:
    """Portal B's side, with an empty org `cli`."""
    side = Side(tmp_path / "b", redis_url, backend="odata",
                config={"SYNC_PAGE_SIZE": 5, "SYNC_UPLOAD_BATCH": 4})
    side.create_org("cli", template=None)
    return side


def _connect(server: ServerSide, client: Side, redis: Redis, policy: str = "server-wins") -> int:
    return client.connect_now(redis, "cli", server.url, policy=policy, username=server.username,
                              password=server.password, options=server.options)


def test_servers_connect_copies_entities_and_records(server: ServerSide, client: Side,
                                                     redis: Redis) -> None:
    server.seed(accounts=12, contacts_per_account=2)
    server.create("tickets", {"title": "Printer", "clientId": None})
    server.create("countries", {"code": "SK", "name": "Slovakia"})

    _connect(server, client, redis)

    with client.org("cli") as b:
        assert set(server.entities()) <= set(b.entities())
        contacts = b.entity("contacts")
        lookup = contacts.attribute("account_id")
        assert lookup is not None and lookup.type == "lookup" and lookup.targets == ["accounts"]
        assert b.entity("contacts").attribute("priority").type == "picklist"  # type: ignore[union-attr]
        assert_same(server, b)
        assert transactions.counts(b)["pending"] == 0


def test_servers_changes_and_deletions_both_ways(server: ServerSide, client: Side,
                                                 redis: Redis) -> None:
    server.seed(accounts=6)
    connection_id = _connect(server, client, redis)
    accounts = sorted(server.snapshot("accounts"))
    ticket = server.create("tickets", {"title": "On the server"})
    # Server side: an update, a new record with a lookup, a deletion.
    server.update("accounts", accounts[0], {"name": "Renamed on server"})
    new = server.create("accounts", {"name": "New on server"})
    server.create("contacts", {"lastName": "Child", "account_ID": new})
    server.delete("accounts", accounts[1])
    with client.org("cli") as b:
        # Client side: an update, new records (GUID key, server key, client-chosen key),
        # a deletion.
        records.update_record(b, "accounts", accounts[2], {"name": "Renamed on client"})
        made = records.create_record(b, "accounts", {"name": "New on client", "employees": 3})
        records.create_record(b, "contacts", {"lastname": "Client child",
                                              "account_id": made["id"]})
        records.create_record(b, "tickets", {"title": "From the client"})
        records.create_record(b, "countries", {"code": "CZ", "name": "Czechia"})
        records.delete_record(b, "accounts", accounts[3])

    client.sync_now(redis, connection_id)

    names = {v["name"] for v in server.snapshot("accounts").values()}
    assert {"Renamed on server", "New on server", "Renamed on client", "New on client"} <= names
    assert accounts[1] not in server.snapshot("accounts")
    assert accounts[3] not in server.snapshot("accounts")
    assert {v["title"] for v in server.snapshot("tickets").values()} == {
        "On the server", "From the client"}
    assert "CZ" in server.snapshot("countries")
    with client.org("cli") as b:
        assert_same(server, b)
        assert transactions.counts(b)["pending"] == 0
    assert ticket in server.snapshot("tickets")

    # Once more: nothing changes, nothing doubles.
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert_same(server, b)


def test_servers_many_records_sharing_one_modified_at_all_arrive(
        server: ServerSide, client: Side, redis: Redis) -> None:
    assert isinstance(server, OdatapySide)
    connection_id = _connect(server, client, redis)
    server.freeze_clock("2026-12-01T10:00:00.000+00:00")
    for i in range(23):  # more than four pages of 5, all of one modifiedAt
        server.create("countries", {"code": f"C{i:02}", "name": f"Country {i}"})
    client.sync_now(redis, connection_id)
    server.update("countries", "C03", {"name": "Changed at the same time"})
    client.sync_now(redis, connection_id)

    with client.org("cli") as b:
        assert len(client_rows := list(b.db.table("countries").rows)) == 23
        assert "Changed at the same time" in {r["name"] for r in client_rows}
        assert_same(server, b)


# --- generic scenarios: every side with `roles` ---------------------------------


@pytest.fixture(params=ANY_SERVERS)
def any_server(request, tmp_path: Path) -> Iterator[ServerSide]:
    """A server side with parent/child roles (odatapy's, Salesforce's)."""
    if request.param == "salesforce":
        with salesforce_side(tmp_path / "tls") as side:
            yield side
    else:
        with odatapy_side(tracked=request.param == "odatapy") as side:
            yield side


@pytest.fixture
def any_client(any_server: ServerSide, tmp_path: Path, redis_url: str, monkeypatch) -> Side:
    """Portal B's side for `any_server`'s backend type, with an empty org `cli`."""
    ca_file = getattr(any_server, "ca_file", None)
    if ca_file is not None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))  # the worker's requests
    side = Side(tmp_path / "b", redis_url, backend=any_server.kind,
                config={"SYNC_PAGE_SIZE": 5, "SYNC_UPLOAD_BATCH": 4})
    side.create_org("cli", template=None)
    return side


def test_any_server_parents_and_children_both_ways(any_server: ServerSide, any_client: Side,
                                                   redis: Redis) -> None:
    server, client = any_server, any_client
    roles = server.roles  # type: ignore[attr-defined]
    parent, child = server.specs[roles.parent], server.specs[roles.child]
    name_of = {s: c for s, c in parent.fields.items()}
    child_of = {s: c for s, c in child.fields.items()}
    server.seed(accounts=7, contacts_per_account=2)
    connection_id = _connect(server, client, redis)
    with client.org("cli") as b:
        assert_same(server, b, [roles.parent, roles.child])

    parents = {v[roles.parent_name]: k for k, v in server.snapshot(roles.parent).items()}
    server.update(roles.parent, parents["Account 0"], {roles.parent_name: "Renamed there"})
    new = server.create(roles.parent, {roles.parent_name: "Made there"})
    server.create(roles.child, {roles.child_name: "Child there", roles.child_parent: new})
    server.delete(roles.parent, parents["Account 1"])
    with client.org("cli") as b:
        pk = b.entity(roles.parent).primaryidattribute
        rows = {r[name_of[roles.parent_name]]: r[pk] for r in b.db.table(roles.parent).rows}
        records.update_record(b, roles.parent, rows["Account 2"],
                              {name_of[roles.parent_name]: "Renamed here"})
        made = records.create_record(b, roles.parent, {name_of[roles.parent_name]: "Made here"})
        records.create_record(b, roles.child, {child_of[roles.child_name]: "Child here",
                                               child_of[roles.child_parent]: made[pk]})
        records.delete_record(b, roles.parent, rows["Account 3"])

    client.sync_now(redis, connection_id)
    client.sync_now(redis, connection_id)  # once more: nothing changes, nothing doubles

    names = [v[roles.parent_name] for v in server.snapshot(roles.parent).values()]
    assert {"Renamed there", "Made there", "Renamed here", "Made here"} <= set(names)
    assert len(names) == len(set(names)) == 7 + 2 - 2
    children = {v[roles.child_name]: v[roles.child_parent]
                for v in server.snapshot(roles.child).values()}
    made_key = next(k for k, v in server.snapshot(roles.parent).items()
                    if v[roles.parent_name] == "Made here")
    assert children["Child here"] == made_key
    with client.org("cli") as b:
        assert_same(server, b, [roles.parent, roles.child])
        assert transactions.counts(b)["pending"] == 0

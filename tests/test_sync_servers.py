"""The sync engine against real servers that are not hosted orgs, through the `odata` backend.

Each test runs once per server (`tests/server_sides.py`): odatapy's service with
change tracking (delta links, tombstones as URLs), the same service without it
(the modifiedAt watermark and id reconciliation), and a real SAP CAP server
(no delta links: the watermark, keyset windows over its relative next links,
If-Match on every change, Integer and String keys the client chooses). Both models have
a composite key (Periods(year, code)) that a lookup (Budgets.period) points at. The
client is portal B's org;
jobs run on a real RQ worker against a real Redis.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis import Redis

from portal.orgs import records, store, transactions
from portal.orgs.sync_state import server_key_id
from tests.cap_server import running_cap_server
from tests.fault_proxy import FaultProxy
from tests.server_sides import (
    CapSide,
    ServerSide,
    assert_same,
    client_snapshot,
    odatapy_side,
    salesforce_side,
)
from tests.sync_helpers import Side
from tests.test_sync_faults import _job_in_process, _kill_when

# odatapy with delta links, with a modifiedAt watermark, and refusing JSON $batch
# (the backend then writes multipart $batch, which odatapy takes); SAP CAP.
SERVERS = ["odatapy", "odatapy-watermark", "odatapy-multipart", "cap"]
# The servers of the generic scenarios (sides with `roles`): these and Salesforce's.
ANY_SERVERS = [*SERVERS, "salesforce"]


@pytest.fixture(params=SERVERS)
def server(request) -> Iterator[ServerSide]:
    """The server side of the test, started for it and stopped after."""
    if request.param.startswith("odatapy"):
        with _odatapy(request.param) as side:
            yield side
    elif request.param == "cap":
        with running_cap_server(max_page_size=7) as cap:
            yield CapSide(cap)
    else:  # pragma: no cover - a param without a side
        raise AssertionError(request.param)


def _odatapy(param: str):
    """The odatapy side a param names."""
    return odatapy_side(tracked=param != "odatapy-watermark",
                        json_batch=param != "odatapy-multipart")


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Side:
    """Portal B's side, with an empty org `cli`."""
    side = Side(tmp_path / "b", redis_url, backend="odata", config=FAST)
    side.create_org("cli", template=None)
    return side


def _connect(server: ServerSide, client: Side, redis: Redis, policy: str = "server-wins") -> int:
    return client.connect_now(redis, "cli", server.url, policy=policy, username=server.username,
                              password=server.password, options=server.options)


def test_servers_connect_copies_entities_and_records(server: ServerSide, client: Side,
                                                     redis: Redis) -> None:
    server.seed(accounts=12, contacts_per_account=2)
    if server.server_keyed:
        server.create(server.server_keyed[0], {server.server_keyed[1]: "Printer"})
    value_keyed, fields, _ = server.value_keyed
    server.create(value_keyed, {**fields, "code": "SKK", "name": "Slovak"})

    _connect(server, client, redis)

    with client.org("cli") as b:
        assert set(server.entities()) <= set(b.entities())
        contacts = b.entity("contacts")
        lookup = contacts.attribute("account_id")
        assert lookup is not None and lookup.type == "lookup" and lookup.targets == ["accounts"]
        if "priority" in server.specs["contacts"].fields:  # an EnumType: a picklist
            assert contacts.attribute("priority").type == "picklist"  # type: ignore[union-attr]
        assert_same(server, b)
        assert transactions.counts(b)["pending"] == 0


def test_servers_changes_and_deletions_both_ways(server: ServerSide, client: Side,
                                                 redis: Redis) -> None:
    server.seed(accounts=6)
    connection_id = _connect(server, client, redis)
    accounts = sorted(server.snapshot("accounts"))
    tickets = server.server_keyed
    if tickets:
        ticket = server.create(tickets[0], {tickets[1]: "On the server"})
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
        if tickets:
            records.create_record(b, tickets[0], {tickets[1]: "From the client"})
        records.create_record(b, server.value_keyed[0], server.value_keyed[1])
        records.delete_record(b, "accounts", accounts[3])

    client.sync_now(redis, connection_id)

    names = {v["name"] for v in server.snapshot("accounts").values()}
    assert {"Renamed on server", "New on server", "Renamed on client", "New on client"} <= names
    assert accounts[1] not in server.snapshot("accounts")
    assert accounts[3] not in server.snapshot("accounts")
    if tickets:
        assert {v[tickets[1]] for v in server.snapshot(tickets[0]).values()} == {
            "On the server", "From the client"}
        assert ticket in server.snapshot(tickets[0])
    assert server.value_keyed[2] in server.snapshot(server.value_keyed[0])
    with client.org("cli") as b:
        assert_same(server, b)
        assert transactions.counts(b)["pending"] == 0

    # Once more: nothing changes, nothing doubles.
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert_same(server, b)


def test_servers_many_records_sharing_one_modified_at_all_arrive(
        server: ServerSide, client: Side, redis: Redis) -> None:
    connection_id = _connect(server, client, redis)
    entity = server.value_keyed[0]
    # More than four pages of 5, all of one modifiedAt.
    server.create_at_one_time(entity, [{"code": f"C{i:02}", "name": f"Country {i}"}
                                       for i in range(23)])
    client.sync_now(redis, connection_id)
    server.update(entity, "C03", {"name": "Changed at the same time"})
    client.sync_now(redis, connection_id)

    with client.org("cli") as b:
        assert len(client_rows := list(b.db.table(entity).rows)) == 23
        assert "Changed at the same time" in {r["name"] for r in client_rows}
        assert_same(server, b)


def test_servers_lookups_to_value_keyed_records_both_ways(
        server: ServerSide, client: Side, redis: Redis) -> None:
    """A lookup whose target has a non-GUID key (CAP's currency_code, odatapy's country_code)."""
    source, field, server_fields, client_fields = server.keyed_lookup  # type: ignore[attr-defined]
    target, target_fields, target_key = server.value_keyed
    server.create(target, {"code": "SRV", "name": "Made there"})
    server.create(source, {**server_fields, field: "SRV"})
    connection_id = _connect(server, client, redis)

    ours = field.lower()
    with client.org("cli") as b:
        target_pk = b.entity(target).primaryidattribute
        lookup = b.entity(source).attribute(ours)
        assert lookup is not None and lookup.type == "lookup" and lookup.targets == [target]
        target_ids = {r["code"]: r[target_pk] for r in b.db.table(target).rows}
        (row,) = b.db.table(source).rows
        assert row[ours] == target_ids["SRV"]  # the target's client GUID, not "SRV"
        assert_same(server, b, [source, target])
        # Made here: a record of the value-keyed entity, and two records pointing at
        # the server's record and at that one.
        made = records.create_record(b, target, target_fields)
        to_server_one = records.create_record(b, source, {**client_fields,
                                                          ours: target_ids["SRV"]})
        to_ours = records.create_record(b, source, {**_other(client_fields),
                                                    ours: made[target_pk]})

    client.sync_now(redis, connection_id)

    pointed = sorted(v[field] for v in server.snapshot(source).values())
    assert pointed == sorted(["SRV", "SRV", target_key])
    assert set(server.snapshot(target)) == {"SRV", target_key}
    with client.org("cli") as b:
        pk = b.entity(source).primaryidattribute
        rows = {r[pk]: r for r in b.db.table(source).rows}
        assert rows[to_server_one[pk]][ours] == target_ids["SRV"]
        assert rows[to_ours[pk]][ours] == made[target_pk]
        assert_same(server, b, [source, target])
        assert transactions.counts(b)["pending"] == 0

    # Once more: nothing doubles on either side.
    client.sync_now(redis, connection_id)
    assert len(server.snapshot(source)) == 3 and len(server.snapshot(target)) == 2
    with client.org("cli") as b:
        assert len(list(b.db.table(source).rows)) == 3
        assert len(list(b.db.table(target).rows)) == 2
        assert_same(server, b, [source, target])


def test_servers_lookups_to_composite_keyed_records_both_ways(
        server: ServerSide, client: Side, redis: Redis) -> None:
    """Budgets.period -> Periods(year, code): one lookup, its foreign keys the target's key.

    Downloaded, changed on the client, pointing at a target made in the same run,
    and dangling (its target on no side) as a single-key lookup's is: kept.
    """
    q1 = server.create("periods", {"year": 2026, "code": "Q1", "name": "First"})
    server.create("periods", {"year": 2026, "code": "Q2", "name": "Second"})
    first = server.create("budgets", {"name": "Travel", "period_year": 2026,
                                      "period_code": "Q1"})
    dangling = server.create("budgets", {"name": "Dangling", "period_year": 2030,
                                         "period_code": "ZZ"})
    server.create("budgets", {"name": "Unplanned"})  # no period
    connection_id = _connect(server, client, redis)

    with client.org("cli") as b:
        budgets = b.entity("budgets")
        lookup = budgets.attribute("period")
        assert lookup is not None and (lookup.type, lookup.targets) == ("lookup", ["periods"])
        # The foreign keys are the lookup, not attributes of their own.
        assert budgets.attribute("period_year") is None
        assert budgets.attribute("period_code") is None
        periods = {(r["year"], r["code"]): r["periods_id"] for r in b.db.table("periods").rows}
        rows = {r["name"]: r for r in b.db.table("budgets").rows}
        assert rows["Travel"]["period"] == periods[(2026, "Q1")]
        assert rows["Unplanned"]["period"] is None
        # No record of that key on either side: the lookup keeps its derived GUID.
        assert rows["Dangling"]["period"] == server_key_id(
            "periods", DANGLING) and (2030, "ZZ") not in periods
        _same_budgets(server, b)
        # Client side: the lookup moved to Q2; a period and a budget pointing at it,
        # made in one run; the dangling budget renamed (its lookup untouched).
        records.update_record(b, "budgets", first, {"period": periods[(2026, "Q2")]})
        made = records.create_record(b, "periods", {"year": 2027, "code": "P9",
                                                    "name": "Made here"})
        records.create_record(b, "budgets", {"name": "New", "amount": 12.5,
                                             "period": made["periods_id"]})
        records.update_record(b, "budgets", dangling, {"name": "Still dangling"})

    client.sync_now(redis, connection_id)

    on_server = {v["name"]: v["period"] for v in server.snapshot("budgets").values()}
    assert on_server == {"Travel": '{"year":2026,"code":"Q2"}',
                         "Still dangling": DANGLING,
                         "Unplanned": None, "New": '{"year":2027,"code":"P9"}'}
    assert set(server.snapshot("periods")) == {q1, '{"year":2026,"code":"Q2"}',
                                               '{"year":2027,"code":"P9"}'}
    with client.org("cli") as b:
        rows = {r["name"]: r for r in b.db.table("budgets").rows}
        assert rows["New"]["period"] == made["periods_id"]  # the client's own GUID
        _same_budgets(server, b)
        assert transactions.counts(b)["pending"] == 0

    # Once more: nothing doubles on either side.
    client.sync_now(redis, connection_id)
    assert len(server.snapshot("budgets")) == 4 and len(server.snapshot("periods")) == 3
    with client.org("cli") as b:
        assert len(list(b.db.table("budgets").rows)) == 4
        assert len(list(b.db.table("periods").rows)) == 3
        _same_budgets(server, b)


DANGLING = '{"year":2030,"code":"ZZ"}'


def _same_budgets(server: ServerSide, org: store.OrgDb) -> None:
    """Periods and budgets alike on both sides; a lookup to no record as its derived GUID."""
    assert_same(server, org, ["periods"])
    theirs = server.snapshot("budgets")
    for values in theirs.values():
        if values["period"] == DANGLING:  # the client knows no record of this key
            values["period"] = "?" + server_key_id("periods", DANGLING)
    assert theirs == client_snapshot(org, server.specs["budgets"])


def _other(fields: dict[str, Any]) -> dict[str, Any]:
    """A second record's fields: integers one up, texts marked."""
    return {k: v + 1 if isinstance(v, int) else f"{v} 2" for k, v in fields.items()}


# --- generic scenarios: every side with `roles` ---------------------------------


@pytest.fixture(params=ANY_SERVERS)
def any_server(request, tmp_path: Path) -> Iterator[ServerSide]:
    """A server side with parent/child roles (odatapy's, CAP's, Salesforce's)."""
    if request.param == "salesforce":
        with salesforce_side(tmp_path / "tls") as side:
            yield side
    elif request.param == "cap":
        with running_cap_server(max_page_size=7) as cap:
            yield CapSide(cap)
    else:
        with _odatapy(request.param) as side:
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


def _name(org, record_id: str) -> str | None:
    record = records.get_record(org, "accounts", record_id)
    return None if record is None else record["name"]


@pytest.mark.parametrize("policy", ["server-wins", "client-wins", "newest-wins"])
def test_servers_conflict_matrix(server: ServerSide, client: Side, redis: Redis,
                                 policy: str) -> None:
    server.seed(accounts=6, contacts_per_account=0)
    connection_id = _connect(server, client, redis, policy=policy)
    uu, ud, du, dd = sorted(server.snapshot("accounts"))[:4]
    server.update("accounts", uu, {"name": "server"})
    server.delete("accounts", ud)
    server.update("accounts", du, {"name": "server"})
    server.delete("accounts", dd)
    time.sleep(1.1)  # the client keeps seconds: its changes are the newer ones
    with client.org("cli") as b:
        records.update_record(b, "accounts", uu, {"name": "client"})
        records.update_record(b, "accounts", ud, {"name": "client"})
        records.delete_record(b, "accounts", du)
        records.delete_record(b, "accounts", dd)

    client.sync_now(redis, connection_id)

    expected = {
        "server-wins": {uu: "server", ud: None, du: "server", dd: None},
        "client-wins": {uu: "client", ud: "client", du: None, dd: None},
        "newest-wins": {uu: "client", ud: None, du: None, dd: None},
    }[policy]
    with client.org("cli") as b:
        assert {i: _name(b, i) for i in expected} == expected
        assert transactions.counts(b)["pending"] == 0
        assert_same(server, b)
    on_server = server.snapshot("accounts")
    assert {i: (on_server.get(i) or {}).get("name") for i in expected} == expected


def test_servers_filter_keeps_only_matching_records(server: ServerSide, client: Side,
                                                    redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import connections

    server.seed(accounts=10, contacts_per_account=0)
    connection_id = _connect(server, client, redis)
    with client.app.app_context():
        connections.configure_entity(
            get_db(), connection_id, "accounts",
            filter_xml='<filter type="and"><condition attribute="employees" operator="ge" '
                       'value="35"/></filter>')
    client.sync_now(redis, connection_id)
    expected = {k for k, v in server.snapshot("accounts").items() if v["employees"] >= 35}
    with client.org("cli") as b:
        assert {r["id"] for r in b.db.table("accounts").rows} == expected
    leaving = sorted(expected)[0]
    server.update("accounts", leaving, {"employees": 1})
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert records.get_record(b, "accounts", leaving) is None
        assert transactions.counts(b)["pending"] == 0
    assert leaving in server.snapshot("accounts")  # leaving the filter is not a deletion


# --- faults: a proxy that loses answers or is down, workers killed -------------------

FAST = {"SYNC_HTTP_RETRIES": 1, "SYNC_PAGE_SIZE": 5, "SYNC_UPLOAD_BATCH": 4}


@pytest.fixture
def proxied(server: ServerSide) -> Iterator[tuple[ServerSide, FaultProxy]]:
    """The server behind a loopback proxy that can drop answers or be down."""
    proxy = FaultProxy(server.url)
    server.url, direct = proxy.url + urlsplit(server.url).path, server.url
    yield server, proxy
    server.url = direct
    proxy.stop()


def test_servers_lost_batch_answer_is_applied_once(proxied, client: Side, redis: Redis) -> None:
    server, proxy = proxied
    server.seed(accounts=4, contacts_per_account=0)
    connection_id = _connect(server, client, redis)
    ids = sorted(server.snapshot("accounts"))
    with client.org("cli") as b:
        records.create_record(b, "accounts", {"name": "created on the client"})
        records.update_record(b, "accounts", ids[0], {"name": "updated on the client"})
        records.delete_record(b, "accounts", ids[1])
        if server.server_keyed:
            records.create_record(b, server.server_keyed[0],
                                  {server.server_keyed[1]: "a ticket from the client"})
    proxy.drop_batch_answers = 1
    client.sync_now(redis, connection_id)
    assert proxy.dropped == 1 and proxy.batches >= 2
    accepted = {form for form, status in proxy.batch_forms if status == 200}
    if getattr(server, "json_batch", True):
        assert accepted == {"application/json"}, proxy.batch_forms
    else:  # refused once as JSON, then every batch multipart, the lost one included
        assert proxy.batch_forms[0] == ("application/json", 415), proxy.batch_forms
        assert accepted == {"multipart/mixed"}, proxy.batch_forms
    names = sorted(v["name"] for v in server.snapshot("accounts").values())
    assert names.count("created on the client") == 1 and "updated on the client" in names
    assert len(names) == 4
    if server.server_keyed:
        entity, field = server.server_keyed
        assert [v[field] for v in server.snapshot(entity).values()] == [
            "a ticket from the client"]
    with client.org("cli") as b:
        assert transactions.counts(b)["processed"] == (4 if server.server_keyed else 3)
        assert_same(server, b)


@pytest.mark.parametrize("target_uploaded_before", [True, False])
@pytest.mark.parametrize("key", ["single", "composite"])
def test_servers_lost_create_answer_with_lookup_to_keyed_record_is_no_conflict(
        proxied, client: Side, redis: Redis, target_uploaded_before: bool, key: str) -> None:
    """A create's answer lost: its re-read record points at the target the client made.

    The target's key is known before the run, or learnt in the same lost chunk; it
    is a single key (value-keyed), or composite (Budgets.period -> Periods).
    """
    server, proxy = proxied
    if key == "single":
        source, field, _, client_fields = server.keyed_lookup
        target, target_fields, target_key = server.value_keyed
    else:
        source, field, client_fields = "budgets", "period", {"name": "Lost budget"}
        target, target_fields = "periods", {"year": 2028, "code": "L1", "name": "Lost"}
        target_key = '{"year":2028,"code":"L1"}'
    connection_id = _connect(server, client, redis)
    with client.org("cli") as b:
        target_pk = b.entity(target).primaryidattribute
        made = records.create_record(b, target, target_fields)  # a random GUID, not derived
    if target_uploaded_before:
        client.sync_now(redis, connection_id)
    ours = field.lower()
    with client.org("cli") as b:
        pk = b.entity(source).primaryidattribute
        pointing = records.create_record(b, source, {**client_fields, ours: made[target_pk]})

    proxy.drop_batch_answers = 1
    client.sync_now(redis, connection_id)

    assert proxy.dropped == 1
    assert list(server.snapshot(target)) == [target_key]
    with client.org("cli") as b:
        (row,) = b.db.table(source).rows
        assert row[pk] == pointing[pk] and row[ours] == made[target_pk]
        assert transactions.counts(b)["pending"] == 0
        assert_same(server, b, [source, target])


def test_cap_lost_create_answer_brings_the_lookup_the_server_set_itself(
        client: Side, redis: Redis) -> None:
    """CAP sets a product's currency ('EUR', the model's default) when a create leaves it out.

    The create's answer is lost: the record read back holds a lookup the write never
    set, to a currency the client made; the client ends with it, under that
    currency's client GUID. (odatapy applies no defaults: CAP alone sets a lookup.)
    """
    with running_cap_server(max_page_size=7) as cap:
        server = CapSide(cap)
        proxy = FaultProxy(server.url)
        server.url = proxy.url + urlsplit(server.url).path
        try:
            connection_id = _connect(server, client, redis)
            with client.org("cli") as b:
                euro = records.create_record(b, "currencies", {"code": "EUR", "name": "Euro"})
            client.sync_now(redis, connection_id)
            with client.org("cli") as b:
                made = records.create_record(b, "products", {"id": 950, "name": "No currency"})

            proxy.drop_batch_answers = 1
            client.sync_now(redis, connection_id)

            assert proxy.dropped == 1
            assert [v["currency_code"] for v in server.snapshot("products").values()] == ["EUR"]
            with client.org("cli") as b:
                (row,) = b.db.table("products").rows
                assert row["products_id"] == made["products_id"]
                assert row["currency_code"] == euro["currencies_id"]
                assert transactions.counts(b)["pending"] == 0
                assert_same(server, b, ["products", "currencies"])
        finally:
            proxy.stop()


@pytest.mark.parametrize("key", ["single", "composite"])
def test_servers_conflict_won_by_the_server_keeps_its_lookup_to_a_record_made_here(
        server: ServerSide, client: Side, redis: Redis, key: str) -> None:
    """The server's record wins a conflict: its lookup, set there, to a record the client made.

    The engine reads the record back (`get_record_references`) and maps each lookup
    to the target's client GUID, not only the lookups the refused write set; the
    download skips that record (its version is the one kept), so nothing else would.
    """
    if key == "single":
        source, field, _, client_fields = server.keyed_lookup
        target, target_fields, target_key = server.value_keyed
        lookup, on_server = field.lower(), {field: target_key}
    else:
        source, lookup, client_fields = "budgets", "period", {"name": "Budget"}
        target, target_fields = "periods", {"year": 2029, "code": "C1", "name": "Client's"}
        on_server = {"period_year": 2029, "period_code": "C1"}
    text = next(k for k, v in client_fields.items() if isinstance(v, str))
    connection_id = _connect(server, client, redis)
    with client.org("cli") as b:
        target_pk = b.entity(target).primaryidattribute
        made = records.create_record(b, target, target_fields)  # a random GUID, not derived
        mine = records.create_record(b, source, client_fields)
        pk = b.entity(source).primaryidattribute
    client.sync_now(redis, connection_id)
    (source_key,) = server.snapshot(source)
    server.update(source, source_key, on_server)  # pointed there at the client's record
    with client.org("cli") as b:
        records.update_record(b, source, mine[pk], {text: "Changed on the client"})

    client.sync_now(redis, connection_id)  # server-wins

    with client.org("cli") as b:
        (row,) = b.db.table(source).rows
        assert row[text] == client_fields[text]  # the server's record won
        assert row[lookup] == made[target_pk]
        assert transactions.counts(b)["pending"] == 0
        assert_same(server, b, [source, target])


def test_servers_down_keeps_transactions_pending_then_goes_through(
        proxied, client: Side, redis: Redis) -> None:
    from portal.db import get_db
    from portal.sync import runs

    server, proxy = proxied
    connection_id = _connect(server, client, redis)
    with client.org("cli") as b:
        records.create_record(b, "accounts", {"name": "made while the server was down"})
    proxy.down = True
    client.sync_now(redis, connection_id)
    with client.app.app_context():
        last = runs.list_runs(get_db(), client.connection(connection_id).org_id)[0]
    assert last["status"] == "failed" and "cannot be reached" in last["error"]
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 1
    proxy.down = False
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b)["pending"] == 0
        assert_same(server, b)


def test_servers_worker_killed_during_download_resumes_without_loss(
        proxied, client: Side, redis: Redis) -> None:
    server, proxy = proxied
    server.seed(accounts=60, contacts_per_account=0)
    connection_id = client.connect("cli", server.url, username=server.username,
                                   password=server.password, options=server.options)
    proxy.hold_page = ("Accounts", 4)  # the fourth page waits: three are being written
    job = _job_in_process(client, "connect", connection_id, FAST)
    _kill_when(job, proxy.holding.is_set)
    proxy.release()
    with client.org("cli") as b:
        partial = b.db.table("accounts").count if b.db.table("accounts").exists() else 0
    assert partial < 60
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    assert client.connection(connection_id).status == "connected"
    with client.org("cli") as b:
        assert_same(server, b)


@pytest.mark.parametrize("kill_at", ["a batch applied, its answer not yet back",
                                     "between batches"])
def test_servers_worker_killed_during_upload_resumes_without_duplicates(
        proxied, client: Side, redis: Redis, kill_at: str) -> None:
    server, proxy = proxied
    server.seed(accounts=10, contacts_per_account=0)
    connection_id = _connect(server, client, redis)
    existing = sorted(server.snapshot("accounts"))
    with client.org("cli") as b:
        for i in range(20):
            records.create_record(b, "accounts", {"name": f"offline {i}"})
            if server.server_keyed:
                records.create_record(b, server.server_keyed[0],
                                      {server.server_keyed[1]: f"ticket {i}"})
            if i % 4 == 0:
                records.update_record(b, "accounts", existing[i // 4], {"name": f"changed {i}"})
            if i % 10 == 0:
                records.delete_record(b, "accounts", existing[8 + i // 10])
        writes = transactions.counts(b)["pending"]
    job = _job_in_process(client, "sync_run", connection_id, FAST)
    if kill_at == "between batches":
        def some_uploaded() -> bool:
            with store.open_org(client.orgs_dir, "cli") as b:
                return transactions.counts(b)["processed"] >= 12

        _kill_when(job, some_uploaded)
    else:
        proxy.hold_batch = proxy.batches + 3
        _kill_when(job, proxy.holding.is_set)
        proxy.release()
    client.sync_now(redis, connection_id)
    with client.org("cli") as b:
        assert transactions.counts(b) == {"pending": 0, "processed": writes, "error": 0,
                                          "archived": 0}
        assert_same(server, b)
    names = [v["name"] for v in server.snapshot("accounts").values()]
    assert len(names) == 10 + 20 - 2 and len(set(names)) == len(names)
    if server.server_keyed:
        entity, field = server.server_keyed
        titles = [v[field] for v in server.snapshot(entity).values()]
        assert sorted(titles) == sorted(f"ticket {i}" for i in range(20))

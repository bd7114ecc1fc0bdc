"""Server keys that are not GUIDs, on a real client org file (docs/architecture.md).

The mapping's queries (`portal.orgs.sync_state`) and the engine's use of them:
a downloaded page of a keyed server, a create's answer bringing the record's
key, deletions by key. `KeyedServer` below is a server of integer keys held in
a dict — the stand-in for a service (no HTTP); the engine and the org file are real.
"""

import sqlite3
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from portal.backends.base import Backend, ChangesPage, Write, WriteResult
from portal.db import immediate
from portal.errors import InvalidInput
from portal.orgs import records, store, sync_state, transactions
from portal.orgs.metadata import Entity
from portal.sync import engine
from portal.sync.connections import EntitySettings


def test_a_new_key_maps_to_its_derived_guid_the_same_every_time(
        sales_org: store.OrgDb) -> None:
    first = sync_state.ids_for_keys(sales_org.db, "account", ["42", "43"])
    assert first == sync_state.ids_for_keys(sales_org.db, "account", ["43", "42"])
    # Fixed forever: a change of namespace or form would remap every synced record.
    assert first["42"] == str(uuid.uuid5(uuid.UUID("0fb24514-23b3-45c4-83f3-6a683a15092c"),
                                         "account\x1f42"))
    assert first["42"] != first["43"]
    other = sync_state.ids_for_keys(sales_org.db, "contact", ["42"])
    assert other["42"] != first["42"]  # the entity is part of the derivation
    assert sync_state.keys_for_ids(sales_org.db, "account", list(first.values())) == {}


def test_a_stored_mapping_wins_over_the_derived_guid(sales_org: store.OrgDb) -> None:
    created_here = str(uuid.uuid4())
    with immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "account", {created_here: 'W/"1"'},
                                        {created_here: "42"})
    assert sync_state.ids_for_keys(sales_org.db, "account", ["42", "7"]) == {
        "42": created_here, "7": sync_state.server_key_id("account", "7")}
    assert sync_state.keys_for_ids(sales_org.db, "account", [created_here]) == {
        created_here: "42"}
    # A later save without the key (an update's answer) keeps it.
    with immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "account", {created_here: 'W/"2"'})
    assert sync_state.keys_for_ids(sales_org.db, "account", [created_here]) == {
        created_here: "42"}
    assert sync_state.server_versions(sales_org, "account", [created_here]) == {
        created_here: 'W/"2"'}


def test_one_key_belongs_to_one_record_per_entity(sales_org: store.OrgDb) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "account", {a: ""}, {a: "42"})
        sync_state.save_server_versions(sales_org.db, "contact", {b: ""}, {b: "42"})
    with pytest.raises(sqlite3.IntegrityError), immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "account", {b: ""}, {b: "42"})
    assert sync_state.ids_for_keys(sales_org.db, "account", ["42"]) == {"42": a}


def test_composite_keys_are_json_in_key_order() -> None:
    assert sync_state.key_text({"ID": 42}) == "42"
    assert sync_state.key_text({"Code": "A'B"}) == "A'B"
    assert sync_state.key_text({"OrderID": 7, "Line": 2}) == '{"OrderID":7,"Line":2}'
    assert sync_state.key_text({"Line": 2, "OrderID": 7}) != sync_state.key_text(
        {"OrderID": 7, "Line": 2})
    composite = sync_state.key_text({"OrderID": 7, "Line": 2})
    assert sync_state.server_key_id("line", composite) != sync_state.server_key_id(
        "line", sync_state.key_text({"OrderID": 2, "Line": 7}))


def test_an_org_file_from_before_server_keys_is_migrated(app: Any,
                                                         sales_org: store.OrgDb) -> None:
    db = sales_org.db
    with immediate(db):  # back to the file as m002 left it
        db.execute("DROP INDEX idx_server_versions_key")
        db.execute("ALTER TABLE _server_versions DROP COLUMN server_key")
        db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_server_keys'")
        db.execute("INSERT INTO _server_versions (entity, id, version) VALUES "
                   "('account', 'a', 'W/\"1\"')")
    orgs_dir = db.conn.execute("PRAGMA database_list").fetchone()[2].rsplit("/", 1)[0]
    with store.open_org(orgs_dir, "sales") as again:
        assert "server_key" in again.db["_server_versions"].columns_dict
        assert sync_state.server_versions(again, "account", ["a"]) == {"a": 'W/"1"'}
        assert sync_state.keys_for_ids(again.db, "account", ["a"]) == {}


# --- the engine with a keyed server --------------------------------------------

class KeyedServer(Backend):
    """A server whose accounts have integer keys it gives out itself; no change tracking."""

    kind = "keyed-test"
    keyed = True

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.next_key = 100
        self.writes: list[Write] = []

    def put(self, key: int, name: str) -> None:
        self.rows[key] = {"name": name, "version": 1}

    def _record(self, key: int) -> dict[str, Any]:
        return {"accountid": sync_state.server_key_id("account", str(key)),
                "name": self.rows[key]["name"]}

    def check_credentials(self) -> str:
        return "test"

    def read_metadata(self) -> list[Entity]:
        return []

    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: Any = None) -> Generator[ChangesPage, None, None]:
        keys = sorted(self.rows)
        for start in range(0, len(keys), page_size):
            chunk = keys[start:start + page_size]
            last = start + page_size >= len(keys)
            records_ = [self._record(k) for k in chunk]
            yield ChangesPage(
                records_, {r["accountid"]: f'W/"{self.rows[k]["version"]}"'
                           for r, k in zip(records_, chunk, strict=True)}, [],
                None if last else str(start + page_size), last,
                keys={r["accountid"]: str(k) for r, k in zip(records_, chunk, strict=True)})

    def read_ids(self, entity: Entity, filter: Any = None) -> Iterator[list[str]]:
        yield [str(k) for k in self.rows]

    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        key = int(record_id)
        if key not in self.rows:
            return None
        return self._record(key), f'W/"{self.rows[key]["version"]}"'

    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        self.writes.extend(writes)
        results = []
        for write in writes:
            if write.operation == "delete":
                assert write.server_key is not None
                self.rows.pop(int(write.server_key), None)
                results.append(WriteResult("ok"))
            elif write.server_key is None:  # a create: the server picks the key
                key, self.next_key = self.next_key, self.next_key + 1
                self.rows[key] = {"name": write.values.get("name"), "version": 1}
                results.append(WriteResult("ok", 'W/"1"', server_key=str(key)))
            else:
                row = self.rows[int(write.server_key)]
                row.update(name=write.values.get("name", row["name"]),
                           version=row["version"] + 1)
                results.append(WriteResult("ok", f'W/"{row["version"]}"'))
        return results

    def close(self) -> None:
        pass


def _run(org: store.OrgDb, server: KeyedServer, page_size: int = 1000) -> engine.Run:
    plan = engine.Plan([EntitySettings("account", True, True, None)], page_size=page_size)
    return engine.Run(org, server, plan)


def _names(org: store.OrgDb) -> dict[str, str]:
    return {r["accountid"]: r["name"] for r in org.db.query("SELECT accountid, name FROM account")}


def test_a_download_maps_keys_to_guids_and_a_reread_after_a_lost_commit_maps_the_same(
        sales_org: store.OrgDb) -> None:
    server = KeyedServer()
    for key in range(1, 6):
        server.put(key, f"Account {key}")
    server.rows[3]["name"] = {"not": "a text"}  # refused: the second page's commit is lost
    run = _run(sales_org, server, page_size=2)
    with pytest.raises(InvalidInput):
        engine.download_entity(run, run.plan.entities[0])
    first = _names(sales_org)
    assert len(first) == 2
    server.rows[3]["name"] = "Account 3"
    engine.download_entity(_run(sales_org, server, page_size=2), run.plan.entities[0])
    expected = {sync_state.server_key_id("account", str(k)): f"Account {k}" for k in range(1, 6)}
    assert _names(sales_org) == expected
    assert first.items() <= expected.items()
    assert sync_state.keys_for_ids(sales_org.db, "account", list(expected)) == {
        sync_state.server_key_id("account", str(k)): str(k) for k in range(1, 6)}


def test_a_record_created_here_keeps_its_guid_and_learns_its_key(
        sales_org: store.OrgDb) -> None:
    transactions.set_client(sales_org, True)
    server = KeyedServer()
    server.put(1, "There first")
    engine.download_entity(_run(sales_org, server), _run(sales_org, server).plan.entities[0])
    mine = records.create_record(sales_org, "account", {"name": "Made here"})["accountid"]

    engine.upload(_run(sales_org, server))
    assert [w.server_key for w in server.writes] == [None]  # a create: no key yet
    assert server.rows[100]["name"] == "Made here"
    assert sync_state.keys_for_ids(sales_org.db, "account", [mine]) == {mine: "100"}

    # Downloading the server's records again finds ours under its own GUID: no duplicate.
    sync_state.reset(sales_org, "account")
    run = _run(sales_org, server)
    engine.download_entity(run, run.plan.entities[0])
    assert _names(sales_org) == {sync_state.server_key_id("account", "1"): "There first",
                                 mine: "Made here"}

    # An update and a delete of it go to its key.
    records.upsert_record(sales_org, "account", mine, {"name": "Renamed"})
    engine.upload(_run(sales_org, server))
    assert server.writes[-1].server_key == "100" and server.rows[100]["name"] == "Renamed"
    records.delete_record(sales_org, "account", mine)
    engine.upload(_run(sales_org, server))
    assert server.writes[-1].operation == "delete" and 100 not in server.rows
    assert sync_state.keys_for_ids(sales_org.db, "account", [mine]) == {}


def test_deletions_on_a_keyed_server_are_reconciled_by_key(sales_org: store.OrgDb) -> None:
    server = KeyedServer()
    server.put(1, "Stays")
    server.put(2, "Goes")
    run = _run(sales_org, server)
    engine.download_entity(run, run.plan.entities[0])
    del server.rows[2]
    run = _run(sales_org, server)
    engine.download_entity(run, run.plan.entities[0])
    assert _names(sales_org) == {sync_state.server_key_id("account", "1"): "Stays"}
    assert run.result.of("account").deleted == 1


def test_guid_server_ids_map_to_the_client_row_where_known_else_are_their_own(
        sales_org: store.OrgDb) -> None:
    # Dataverse's N:N rows: the client's row (c1) was associated and the server gave the
    # row its own id (s1); an id never mapped (s2) is the row's id, not a derived GUID.
    with immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "leadcompetitor", {"c1": ""},
                                        {"c1": "s1"})
    assert sync_state.ids_for_keys(sales_org.db, "leadcompetitor", ["s1", "s2"],
                                   derive=False) == {"s1": "c1", "s2": "s2"}
    assert sync_state.ids_for_keys(sales_org.db, "leadcompetitor", ["s2"]) == {
        "s2": sync_state.server_key_id("leadcompetitor", "s2")}

"""Change tracking at its limits: 20,000 records, writes during the reads, expired tokens.

The delta page shape is compared with Microsoft Learn's example, "Use change tracking to
synchronize data with external systems" (use-change-tracking-synchronize-data-external-systems),
copied into tests/fixtures/dataverse/change-tracking/. Dataverse documents no Web API body
for an expired token; its .NET change tracking answers ExpiredVersionStamp (0x80044352,
"Version stamp associated with the client has expired. Please perform a full sync."),
which the Dataverse error codes use (tests/test_odata_error_codes.py).
"""

import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.errors import NotFound
from portal.orgs import changes, records, schema, store
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.store import OrgDb
from tests.conftest import orgs_dir
from tests.odata_helpers import AUTH, ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "dataverse" / "change-tracking"
TRACK = {**AUTH, "Prefer": "odata.track-changes, odata.maxpagesize=5000"}
PAGE = {**AUTH, "Prefer": "odata.maxpagesize=5000"}
COUNT = 20_000


def guid(i: int) -> str:
    return str(uuid.UUID(int=i))


def read_all(client: FlaskClient, url: str, headers: dict[str, str]
             ) -> tuple[list[dict[str, Any]], str, int]:
    """Follow nextLinks to the end: the items, the deltaLink and the number of pages."""
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, answer.json
        pages += 1
        items += answer.json["value"]
        if "@odata.nextLink" not in answer.json:
            return items, answer.json["@odata.deltaLink"], pages
        url = answer.json["@odata.nextLink"]


@pytest.fixture
def many(sales_org: OrgDb) -> OrgDb:
    records.save_records(sales_org, "account", [
        {"accountid": guid(i + 1), "name": f"Acc {i}"} for i in range(COUNT)])
    return sales_org


def apply(state: dict[str, str], items: list[dict[str, Any]]) -> None:
    """A client's copy, brought up to date by a page of changes."""
    for item in items:
        if item.get("reason") == "deleted":
            state.pop(item["id"], None)
        else:
            state[item["accountid"]] = item["name"]


def test_paging_through_20000_records_then_delta_after_concurrent_writes(
        app: Flask, client: FlaskClient, many: OrgDb) -> None:
    done = threading.Event()
    rng = random.Random(7)

    def write() -> None:
        # Updates, creates and deletes from another connection while the client pages.
        try:
            with store.open_org(orgs_dir(app), "sales") as writer:
                for n in range(300):
                    target = guid(rng.randrange(1, COUNT + 1))
                    if n % 10 == 3:
                        try:
                            records.delete_record(writer, "account", target)
                        except NotFound:  # deleted already by an earlier round
                            pass
                    elif n % 10 == 7:
                        records.create_record(writer, "account", {"name": f"new {n}"},
                                              record_id=guid(COUNT + 1 + n))
                    elif records.get_record(writer, "account", target) is not None:
                        records.update_record(writer, "account", target, {"name": f"w{n}"})
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    items, delta, pages = read_all(client, ROOT + "accounts?$select=name", TRACK)
    ids = [i["accountid"] for i in items]
    assert len(ids) == len(set(ids))  # nothing twice in one read
    assert pages >= COUNT // 5000
    state: dict[str, str] = {}
    apply(state, items)
    seen_versions: list[int] = []
    while True:
        finished = done.is_set()
        changed, delta, _ = read_all(client, delta, PAGE)
        seen_versions += [int(i["@odata.etag"][3:-1]) for i in changed if "@odata.etag" in i]
        apply(state, changed)
        if finished:
            break
    thread.join()
    assert len(seen_versions) == len(set(seen_versions))  # no change twice across delta reads
    actual = {row["accountid"]: row["name"] for row in many.db.query(
        "SELECT accountid, name FROM account")}
    assert state == actual  # nothing missed: the client's copy is the server's


def test_delta_page_has_the_documented_shape(client: FlaskClient, sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "A"}, record_id=guid(1))
    records.create_record(sales_org, "account", {"name": "B"}, record_id=guid(2))
    _, delta, _ = read_all(client, ROOT + "accounts?$select=name", TRACK)
    records.update_record(sales_org, "account", guid(1), {"name": "A2"})
    records.delete_record(sales_org, "account", guid(2))
    page = client.get(delta, headers=AUTH).json
    documented = json.loads((FIXTURES / "accounts-delta.response.json").read_text())
    assert set(page) == set(documented)
    assert page["@odata.context"].endswith("$metadata#accounts(name)/$delta")
    changed, deleted = page["value"]
    assert set(changed) == {"@odata.etag", "accountid", "name"}
    assert set(deleted) == set(documented["value"][1])
    assert deleted["reason"] == "deleted" and deleted["id"] == guid(2)


def test_token_older_than_the_kept_deletions_expires(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    for i in range(1, 4):
        records.create_record(sales_org, "account", {"name": f"A{i}"}, record_id=guid(i))
    _, old_delta, _ = read_all(client, ROOT + "accounts?$select=name", TRACK)
    records.delete_record(sales_org, "account", guid(1))
    _, recent_delta, _ = read_all(client, old_delta, AUTH)
    records.delete_record(sales_org, "account", guid(2))
    # Forget the deletions made up to now (a retention of zero days).
    assert changes.forget_tombstones(sales_org, "9999-12-31T00:00:00Z") == 2
    for link in (old_delta, recent_delta):
        answer = client.get(link, headers=AUTH)
        assert answer.status_code == 400
        assert answer.json["error"]["code"] == "DeltaTokenExpired"
        assert "read the entity again from the start" in answer.json["error"]["message"]
    # Starting over works, and its new delta link continues.
    items, delta, _ = read_all(client, ROOT + "accounts?$select=name", TRACK)
    assert [i["accountid"] for i in items] == [guid(3)]
    records.delete_record(sales_org, "account", guid(3))
    assert client.get(delta, headers=AUTH).json["value"][0]["id"] == guid(3)


def test_token_of_a_removed_and_remade_entity_expires(client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    def make() -> None:
        schema.add_entity(sales_org, Entity("cf_item", "Item", {}, primarynameattribute="name",
                                            attributes=[Attribute("name", "string", "Name")]))

    make()
    records.create_record(sales_org, "cf_item", {"name": "x"}, record_id=guid(1))
    _, delta, _ = read_all(client, ROOT + "cf_items", TRACK)
    records.delete_record(sales_org, "cf_item", guid(1))
    schema.remove_entity(sales_org, "cf_item")
    make()
    answer = client.get(delta, headers=AUTH)
    assert (answer.status_code, answer.json["error"]["code"]) == (400, "DeltaTokenExpired")
    # Other entities' tokens are untouched.
    _, accounts_delta, _ = read_all(client, ROOT + "accounts", TRACK)
    schema.remove_entity(sales_org, "cf_item")
    assert client.get(accounts_delta, headers=AUTH).status_code == 200

"""Change tracking: Prefer odata.track-changes, delta links, $deletedEntity, signed tokens."""

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.db import get_db
from portal.orgs import records, registry, store
from portal.orgs.store import OrgDb
from tests.conftest import orgs_dir
from tests.odata_helpers import AUTH, ROOT, basic

TRACK = {**AUTH, "Prefer": "odata.track-changes"}


def guid(i: int) -> str:
    return str(uuid.UUID(int=i))


@pytest.fixture
def accounts(sales_org: OrgDb) -> OrgDb:
    records.save_records(sales_org, "account", [
        {"accountid": guid(i + 1), "name": f"Acc {i}"} for i in range(12)])
    return sales_org


def read_all(client: FlaskClient, url: str, headers: dict[str, str]) -> tuple[list[Any], str]:
    """Follow nextLinks to the end; the items and the final deltaLink."""
    items: list[Any] = []
    while True:
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, answer.data
        items += answer.json["value"]
        if "@odata.nextLink" in answer.json:
            url = answer.json["@odata.nextLink"]
            continue
        return items, answer.json["@odata.deltaLink"]


def test_delta_initial_read_ends_with_a_delta_link_keeping_select(client: FlaskClient,
                                                                  accounts: OrgDb) -> None:
    answer = client.get(ROOT + "accounts?$select=name",
                        headers={**TRACK, "Prefer": "odata.track-changes, odata.maxpagesize=5"})
    assert answer.headers["Preference-Applied"] == "odata.maxpagesize=5, odata.track-changes"
    assert "@odata.deltaLink" not in answer.json
    items, delta = read_all(client, answer.json["@odata.nextLink"], TRACK)
    assert len(items) + 5 == 12
    assert "$select=name" in delta and "$deltatoken=" in delta
    empty = client.get(delta, headers=AUTH).json
    assert empty["value"] == [] and empty["@odata.deltaLink"]


def test_delta_link_returns_updates_and_deletions_paged(client: FlaskClient,
                                                        accounts: OrgDb) -> None:
    _, delta = read_all(client, ROOT + "accounts?$select=name", TRACK)
    for i in range(1, 6):
        records.update_record(accounts, "account", guid(i), {"name": f"New {i}"})
    records.delete_record(accounts, "account", guid(7))
    records.create_record(accounts, "account", {"name": "Fresh"}, record_id=guid(100))
    headers = {**AUTH, "Prefer": "odata.maxpagesize=3"}
    first = client.get(delta, headers=headers).json
    assert len(first["value"]) == 3 and "@odata.nextLink" in first
    assert first["@odata.context"].endswith("$metadata#accounts(name)/$delta")
    items, next_delta = read_all(client, first["@odata.nextLink"], headers)
    items = first["value"] + items
    assert [i.get("name") for i in items if "name" in i] == [f"New {i}" for i in range(1, 6)] + \
        ["Fresh"]
    [gone] = [i for i in items if "reason" in i]
    assert gone == {"@odata.context": "http://localhost/odata/v4/sales/$metadata#accounts/"
                    "$deletedEntity", "id": guid(7), "reason": "deleted"}
    assert set(items[0]) == {"@odata.etag", "accountid", "name"}
    assert client.get(next_delta, headers=AUTH).json["value"] == []


def test_delta_misses_nothing_written_during_the_initial_read(client: FlaskClient,
                                                              accounts: OrgDb) -> None:
    headers = {**AUTH, "Prefer": "odata.track-changes, odata.maxpagesize=4"}
    first = client.get(ROOT + "accounts", headers=headers).json
    records.update_record(accounts, "account", guid(1), {"name": "Changed while paging"})
    _, delta = read_all(client, first["@odata.nextLink"], headers)
    changes = client.get(delta, headers=AUTH).json["value"]
    assert "Changed while paging" in [c.get("name") for c in changes]


def test_delta_never_skips_or_repeats_under_concurrent_writes(client: FlaskClient,
                                                              accounts: OrgDb, app: Flask) -> None:
    _, delta = read_all(client, ROOT + "accounts?$select=name", TRACK)
    done = threading.Event()

    def write() -> None:
        try:
            with store.open_org(orgs_dir(app), "sales") as writer_org:  # its own connection
                for n in range(150):
                    records.update_record(writer_org, "account", guid(1 + n % 12),
                                          {"name": f"w{n}"})
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    while True:
        finished = done.is_set()
        items, delta = read_all(client, delta, {**AUTH, "Prefer": "odata.maxpagesize=7"})
        seen += [int(i["@odata.etag"][3:-1]) for i in items]
        if finished:
            break
    thread.join()
    assert len(seen) == len(set(seen))  # no change twice
    final = {r["accountid"]: r["versionnumber"] for r in
             (records.get_record(accounts, "account", guid(i + 1)) for i in range(12))}
    assert set(final.values()) <= set(seen)  # the last change of every record was seen


def test_delta_with_filter_is_refused(client: FlaskClient, accounts: OrgDb) -> None:
    answer = client.get(ROOT + "accounts?$filter=name eq 'x'", headers=TRACK)
    assert answer.status_code == 400 and "change tracking" in answer.json["error"]["message"]


def tampered(token: str) -> str:
    return token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")


@pytest.mark.parametrize("case", ["tampered", "other-set", "other-org", "garbage", "with-top"])
def test_delta_refuses_bad_tokens(app: Flask, client: FlaskClient, accounts: OrgDb,
                                  tmp_path: Path, case: str) -> None:
    _, delta = read_all(client, ROOT + "accounts", TRACK)
    token = delta.split("$deltatoken=")[1]
    url = {
        "tampered": ROOT + f"accounts?$deltatoken={tampered(token)}",
        "other-set": ROOT + f"contacts?$deltatoken={token}",
        "garbage": ROOT + "accounts?$deltatoken=abc';--",
        "with-top": ROOT + f"accounts?$deltatoken={token}&$top=1",
        "other-org": "/odata/v4/other/accounts?$deltatoken=" + token,
    }[case]
    headers = AUTH
    if case == "other-org":
        with app.app_context():
            registry.create_org(get_db(), orgs_dir(app), "other", email="a@other.example",
                                password="other-pass-1", template="sales")
        headers = basic("a@other.example", "other-pass-1")
    answer = client.get(url, headers=headers)
    assert answer.status_code == 400, answer.data
    assert "$deltatoken" in answer.json["error"]["message"] or "$top" in \
        answer.json["error"]["message"]

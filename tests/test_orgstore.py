"""The hosted org store: templates, records, the change feed."""

import pytest

from portal.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed
from portal.orgs import changes, records, store
from portal.orgs.templates import sales


def test_sales_template_creates_its_entities_and_tables(sales_org: store.OrgDb) -> None:
    names = [e.logicalname for e in sales()]
    assert list(sales_org.entities()) == names
    for entity in sales_org.entities().values():
        columns = set(sales_org.db.table(entity.logicalname).columns_dict)
        assert columns == {a.logicalname for a in entity.attributes}
        assert {"createdon", "modifiedon", "versionnumber"} <= columns
    leadcompetitor = sales_org.entity("leadcompetitor")
    assert leadcompetitor.isintersect
    assert leadcompetitor.attribute("leadid").targets == ["lead"]  # type: ignore[union-attr]
    assert sales_org.entity("account").labels["1031"] == "Firma"


def test_record_create_read_update_delete(sales_org: store.OrgDb) -> None:
    account = records.create_record(sales_org, "account", {
        "name": "Contoso", "creditonhold": True, "revenue": 1250.5, "numberofemployees": 12,
        "industrycode": 7, "lastusedincampaign": "2026-01-02T03:04:05+01:00"})
    assert account["creditonhold"] is True
    assert account["lastusedincampaign"] == "2026-01-02T02:04:05Z"
    assert account["versionnumber"] >= 1
    assert records.get_record(sales_org, "account", account["accountid"]) == account

    contact = records.create_record(sales_org, "contact", {
        "lastname": "Doe", "parentcustomerid": account["accountid"]})
    updated = records.update_record(sales_org, "account", account["accountid"],
                                    {"primarycontactid": contact["contactid"]},
                                    if_version=account["versionnumber"])
    assert updated["primarycontactid"] == contact["contactid"]
    assert updated["versionnumber"] > contact["versionnumber"] > account["versionnumber"]
    assert updated["createdon"] == account["createdon"]

    records.delete_record(sales_org, "contact", contact["contactid"])
    assert records.get_record(sales_org, "contact", contact["contactid"]) is None
    with pytest.raises(NotFound):
        records.delete_record(sales_org, "contact", contact["contactid"])


def test_record_create_keeps_the_callers_id_and_refuses_it_twice(sales_org: store.OrgDb) -> None:
    record_id = "7d1f5e0a-3b7c-4f4e-9a51-2f0c3b8d9e11"
    records.create_record(sales_org, "competitor", {"name": "A"}, record_id=record_id.upper())
    assert records.get_record(sales_org, "competitor", record_id)["name"] == "A"  # type: ignore[index]
    with pytest.raises(AlreadyExists):
        records.create_record(sales_org, "competitor", {"name": "B"}, record_id=record_id)
    assert records.get_record(sales_org, "competitor", record_id)["name"] == "A"  # type: ignore[index]


def test_record_upsert_modes_and_etag(sales_org: store.OrgDb) -> None:
    record_id = "0b4a6a4e-5c1d-4d59-8f0e-5a8f8f6b7c01"
    with pytest.raises(NotFound):
        records.upsert_record(sales_org, "competitor", record_id, {"name": "x"}, mode="update")
    first, created = records.upsert_record(sales_org, "competitor", record_id, {"name": "x"})
    assert created
    second, created = records.upsert_record(sales_org, "competitor", record_id, {"name": "y"})
    assert not created and second["name"] == "y"
    with pytest.raises(PreconditionFailed):
        records.update_record(sales_org, "competitor", record_id, {"name": "z"},
                              if_version=first["versionnumber"])
    assert records.get_record(sales_org, "competitor", record_id)["name"] == "y"  # type: ignore[index]


@pytest.mark.parametrize("values, field", [
    ({"name": "x", "nosuch": 1}, "nosuch"),
    ({"name": 5}, "name"),
    ({"name": "x" * 161}, "name"),
    ({"name": "x", "numberofemployees": "12"}, "numberofemployees"),
    ({"name": "x", "numberofemployees": 2**40}, "numberofemployees"),
    ({"name": "x", "creditonhold": 1}, "creditonhold"),
    ({"name": "x", "industrycode": 99}, "industrycode"),
    ({"name": "x", "revenue": "lots"}, "revenue"),
    ({"name": "x", "lastusedincampaign": "yesterday"}, "lastusedincampaign"),
    ({"name": "x", "primarycontactid": "not-a-guid"}, "primarycontactid"),
    ({"name": "x", "primarycontactid": "0b4a6a4e-5c1d-4d59-8f0e-5a8f8f6b7c02"}, "primarycontactid"),
    ({"accountnumber": "1"}, "name"),
])
def test_record_bad_values_are_refused_and_write_nothing(sales_org: store.OrgDb, values: dict,
                                                          field: str) -> None:
    before = store.current_version(sales_org.db)
    with pytest.raises(InvalidInput) as refused:
        records.create_record(sales_org, "account", values)
    assert refused.value.field == field
    assert field in refused.value.message
    assert sales_org.db.table("account").count == 0
    assert store.current_version(sales_org.db) == before


def test_change_feed_pages_upserts_and_tombstones_in_version_order(
        sales_org: store.OrgDb) -> None:
    ids = [records.create_record(sales_org, "competitor", {"name": f"c{i}"})["competitorid"]
           for i in range(25)]
    records.update_record(sales_org, "competitor", ids[3], {"name": "c3 again"})
    records.delete_record(sales_org, "competitor", ids[5])
    records.delete_record(sales_org, "competitor", ids[3])
    records.create_record(sales_org, "account", {"name": "other entity"})

    seen, version, pages = [], 0, 0
    while True:
        page = changes.changes_since(sales_org, "competitor", version, limit=7)
        seen.extend(page.changes)
        version = page.next_version
        pages += 1
        if not page.more:
            break
    assert pages == 4
    versions = [c.version for c in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # Each record appears once, as it is now: 23 live ones, 2 tombstones.
    assert len(seen) == 25
    assert {c.id for c in seen if c.deleted} == {ids[3], ids[5]}
    live = {c.id: c.record for c in seen if not c.deleted}
    assert set(live) == set(ids) - {ids[3], ids[5]}
    assert version == store.current_version(sales_org.db)

    # Continuing from the returned version gives exactly what came after.
    records.update_record(sales_org, "competitor", ids[0], {"name": "later"})
    later = changes.changes_since(sales_org, "competitor", version)
    assert [(c.id, c.record["name"]) for c in later.changes] == [(ids[0], "later")]  # type: ignore[index]
    assert changes.changes_since(sales_org, "competitor", later.next_version).changes == []


def test_change_feed_recreated_record_is_an_upsert_again(sales_org: store.OrgDb) -> None:
    record = records.create_record(sales_org, "competitor", {"name": "x"})
    records.delete_record(sales_org, "competitor", record["competitorid"])
    records.create_record(sales_org, "competitor", {"name": "back"},
                          record_id=record["competitorid"])
    feed = changes.changes_since(sales_org, "competitor", 0).changes
    assert [(c.id, c.deleted) for c in feed] == [(record["competitorid"], False)]


def test_save_records_bulk_upserts_with_new_versions(sales_org: store.OrgDb) -> None:
    rows = [{"competitorid": f"00000000-0000-4000-8000-{i:012d}", "name": f"n{i}",
             "websiteurl": f"https://n{i}.example", "modifiedon": "2025-05-05T05:05:05Z"}
            for i in range(50)]
    assert records.save_records(sales_org, "competitor", rows) == 50
    records.delete_record(sales_org, "competitor", rows[0]["competitorid"])
    partial = {"competitorid": rows[1]["competitorid"], "name": "changed"}
    records.save_records(sales_org, "competitor", [rows[0], partial])

    recreated = records.get_record(sales_org, "competitor", rows[0]["competitorid"])
    assert recreated["modifiedon"] == "2025-05-05T05:05:05Z"  # type: ignore[index]
    stored = records.get_record(sales_org, "competitor", rows[1]["competitorid"])
    # A partial record changes what it names and keeps the rest.
    assert stored["name"] == "changed"  # type: ignore[index]
    assert stored["websiteurl"] == "https://n1.example"  # type: ignore[index]
    feed = changes.changes_since(sales_org, "competitor", 0, limit=1000).changes
    assert len(feed) == 50 and not any(c.deleted for c in feed)
    assert records.delete_records(sales_org, "competitor",
                                  [r["competitorid"] for r in rows[:10]]) == 10
    assert sales_org.db.table("competitor").count == 40


def test_save_records_in_many_statements_writes_every_value_and_empties_columns(
        sales_org: store.OrgDb) -> None:
    # More rows than one statement takes; websiteurl is empty in every row of the second
    # batch (a NULL in the statement, not bound), and must still empty the stored values.
    count = records.ROWS_PER_STATEMENT * 2 + 7
    rows = [{"competitorid": f"00000000-0000-4000-8000-{i:012d}", "name": f"n{i}",
             "websiteurl": f"https://n{i}.example", "strengths": None if i % 3 else f"s{i}"}
            for i in range(count)]
    assert records.save_records(sales_org, "competitor", rows) == count
    stored = {r["competitorid"]: r for r in sales_org.db.table("competitor").rows}
    assert len(stored) == count
    assert all(stored[r["competitorid"]][k] == r[k] for r in rows for k in r)
    emptied = [{**r, "name": f"m{n}", "websiteurl": None} for n, r in enumerate(rows)]
    records.save_records(sales_org, "competitor", emptied)
    stored = {r["competitorid"]: r for r in sales_org.db.table("competitor").rows}
    assert all(stored[r["competitorid"]][k] == r[k] for r in emptied for k in r)
    versions = sorted(r["versionnumber"] for r in stored.values())
    assert versions == list(range(versions[0], versions[0] + count))  # one each, none lost


def test_check_records_projects_a_servers_extra_attributes_only_when_asked(
        sales_org: store.OrgDb) -> None:
    c = records.codec(sales_org, "competitor")
    rows = [{"competitorid": "00000000-0000-4000-8000-000000000001", "name": "a",
             "serveronly": 1}]
    with pytest.raises(InvalidInput) as refused:
        records.check_records(c, rows)
    assert refused.value.field == "serveronly"
    checked = records.check_records(c, rows, project=True)
    assert checked.names == ["competitorid", "name"] and len(checked) == 1
    assert checked.without({0}).columns == [[], []]
    records.save_checked(sales_org, checked)
    assert records.get_record(sales_org, "competitor", rows[0]["competitorid"])["name"] == "a"  # type: ignore[index]


def test_server_versions_keep_a_known_key_when_a_later_save_brings_none(
        sales_org: store.OrgDb) -> None:
    from portal.db import immediate
    from portal.orgs import sync_state

    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(3)]
    with immediate(sales_org.db):
        sync_state.save_server_versions(sales_org.db, "account", dict.fromkeys(ids, "1"),
                                        {ids[0]: "KEY-0", ids[1]: "KEY-1", "other": "KEY-9"})
        sync_state.save_server_versions(sales_org.db, "account", {ids[0]: "2", ids[2]: "2"})
    assert sync_state.server_versions(sales_org, "account", ids) == {
        ids[0]: "2", ids[1]: "1", ids[2]: "2"}
    assert sorted(sales_org.db.execute(
        "SELECT id, server_key FROM _server_versions ORDER BY id").fetchall()) == [
        (ids[0], "KEY-0"), (ids[1], "KEY-1"), (ids[2], None)]  # no row for a key alone


GOOD = {"accountid": "00000000-0000-4000-8000-000000000001", "name": "Good"}


@pytest.mark.parametrize("values, field", [
    ({"name": "x" * 161}, "name"),
    ({"name": 12}, "name"),
    ({"name": ["a list"]}, "name"),
    ({"numberofemployees": "12"}, "numberofemployees"),
    ({"numberofemployees": 2**40}, "numberofemployees"),
    ({"industrycode": 99}, "industrycode"),
    ({"industrycode": True}, "industrycode"),  # equal to option 1, but not a whole number
    ({"industrycode": 1.0}, "industrycode"),
    ({"revenue": float("nan")}, "revenue"),
    ({"creditonhold": 1}, "creditonhold"),
    ({"lastusedincampaign": "not a date"}, "lastusedincampaign"),
    ({"lastusedincampaign": ["2026-01-01"]}, "lastusedincampaign"),
    ({"parentaccountid": "not-a-guid"}, "parentaccountid"),
    # 36 characters, lower case, a hyphen at 8: shaped like a GUID, but not one.
    ({"parentaccountid": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"}, "parentaccountid"),
    ({"parentaccountid": {"id": "an object"}}, "parentaccountid"),
    ({"accountid": ["unhashable"]}, "accountid"),
])
def test_save_records_refuses_a_bad_value_and_writes_nothing(
        sales_org: store.OrgDb, values: dict, field: str) -> None:
    rows = [dict(GOOD), {**GOOD, "accountid": "00000000-0000-4000-8000-000000000002", **values}]
    with pytest.raises(InvalidInput) as refused:
        records.save_records(sales_org, "account", rows)
    assert refused.value.field == field
    assert sales_org.db.table("account").count == 0


def test_save_records_normalizes_values_it_can_read(sales_org: store.OrgDb) -> None:
    upper = "00000000-0000-4000-8000-00000000000A"
    records.save_records(sales_org, "account", [
        {**GOOD, "lastusedincampaign": "2026-01-02T03:04:05+01:00", "revenue": 5},
        {"accountid": upper, "name": "Upper", "parentaccountid": GOOD["accountid"].upper()}])
    first = records.get_record(sales_org, "account", GOOD["accountid"])
    assert first["lastusedincampaign"] == "2026-01-02T02:04:05Z"  # type: ignore[index]
    assert first["revenue"] == 5.0  # type: ignore[index]
    second = records.get_record(sales_org, "account", upper.lower())
    assert second["parentaccountid"] == GOOD["accountid"]  # type: ignore[index]

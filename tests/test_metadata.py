"""Metadata changes of an org keep data that still has a place, and refuse silent loss."""

import pytest

from portal.errors import AlreadyExists, InvalidInput, MetadataChangeRefused
from portal.orgs import records, schema, store
from portal.orgs.metadata import Attribute, Entity, Option, entity_from_dict


def _account(org: store.OrgDb, **values: object) -> dict:
    return records.create_record(org, "account", {"name": "Contoso", **values})


def test_metadata_add_entity_with_lookup_and_write_records(sales_org: store.OrgDb) -> None:
    entity = entity_from_dict({
        "logicalname": "visit", "labels": {"1033": "Visit"}, "primarynameattribute": "title",
        "attributes": [
            {"logicalname": "title", "type": "string", "maxlength": 50},
            {"logicalname": "accountid", "type": "lookup", "targets": ["account"]},
        ]})
    schema.add_entity(sales_org, entity)
    visit = sales_org.entity("visit")
    assert visit.primaryidattribute == "visitid" and visit.entitysetname == "visits"
    account = _account(sales_org)
    record = records.create_record(sales_org, "visit",
                                   {"title": "First", "accountid": account["accountid"]})
    assert record["accountid"] == account["accountid"]
    assert schema.metadata_log(sales_org)[0]["change"] == "add entity"


def test_metadata_add_attribute_keeps_records(sales_org: store.OrgDb) -> None:
    account = _account(sales_org, telephone1="123")
    schema.add_attribute(sales_org, "account", Attribute("rating", "integer", "Rating"))
    stored = records.get_record(sales_org, "account", account["accountid"])
    assert stored["telephone1"] == "123" and stored["rating"] is None  # type: ignore[index]
    records.update_record(sales_org, "account", account["accountid"], {"rating": 5})
    assert records.get_record(sales_org, "account", account["accountid"])["rating"] == 5  # type: ignore[index]


@pytest.mark.parametrize("new", [
    Attribute("numberofemployees", "bigint", "Employees"),
    Attribute("numberofemployees", "decimal", "Employees", precision=2),
])
def test_metadata_widening_an_attribute_keeps_values(sales_org: store.OrgDb,
                                                    new: Attribute) -> None:
    account = _account(sales_org, numberofemployees=42)
    schema.alter_attribute(sales_org, "account", new)
    stored = records.get_record(sales_org, "account", account["accountid"])
    assert stored["numberofemployees"] == 42  # type: ignore[index]
    assert sales_org.entity("account").attribute("numberofemployees").type == new.type  # type: ignore[union-attr]
    # The table keeps its primary key and version index after the rebuild.
    indexes = {tuple(i.columns) for i in sales_org.db.table("account").indexes}
    assert ("versionnumber",) in indexes


@pytest.mark.parametrize("new, reason", [
    (Attribute("name", "string", "Name", maxlength=3, required=True), "narrowing"),
    (Attribute("numberofemployees", "string", "Employees"), "would lose data"),
    (Attribute("industrycode", "picklist", "Industry", options=[Option(1, "Accounting")]),
     "orphan"),
    (Attribute("revenue", "money", "Revenue", precision=0), "precision"),
])
def test_metadata_change_that_loses_data_is_refused_and_changes_nothing(
        sales_org: store.OrgDb, new: Attribute, reason: str) -> None:
    account = _account(sales_org, numberofemployees=42, industrycode=7, revenue=10.25)
    before = sales_org.entity("account").attribute(new.logicalname)
    log_before = len(schema.metadata_log(sales_org))
    with pytest.raises(MetadataChangeRefused) as refused:
        schema.alter_attribute(sales_org, "account", new)
    assert reason in refused.value.message
    assert sales_org.entity("account").attribute(new.logicalname) == before
    assert records.get_record(sales_org, "account", account["accountid"]) == account
    assert len(schema.metadata_log(sales_org)) == log_before


def test_metadata_change_of_an_empty_column_is_allowed(sales_org: store.OrgDb) -> None:
    _account(sales_org)
    schema.alter_attribute(sales_org, "account", Attribute("numberofemployees", "string",
                                                           "Employees", maxlength=10))
    assert sales_org.entity("account").attribute("numberofemployees").type == "string"  # type: ignore[union-attr]


def test_metadata_labels_change(sales_org: store.OrgDb) -> None:
    schema.update_entity(sales_org, "account", labels={"1033": "Customer", "1031": "Kunde"},
                         displayname="Customer")
    assert sales_org.entity("account").labels == {"1033": "Customer", "1031": "Kunde"}
    attr = sales_org.entity("account").attribute("telephone1")
    attr.labels = {"1033": "Phone"}  # type: ignore[union-attr]
    schema.alter_attribute(sales_org, "account", attr)  # type: ignore[arg-type]
    assert sales_org.entity("account").attribute("telephone1").labels == {"1033": "Phone"}  # type: ignore[union-attr]


def test_metadata_remove_attribute_and_entity(sales_org: store.OrgDb) -> None:
    account = _account(sales_org, telephone1="123")
    schema.remove_attribute(sales_org, "account", "telephone1")
    stored = records.get_record(sales_org, "account", account["accountid"])
    assert "telephone1" not in stored and stored["name"] == "Contoso"  # type: ignore[operator,index]

    schema.remove_entity(sales_org, "contact")
    assert "contact" not in sales_org.entities()
    assert not sales_org.db.table("contact").exists()
    # Lookups that only pointed to contact went with it; multi-target ones lost the target.
    assert sales_org.entity("account").attribute("primarycontactid") is None
    assert sales_org.entity("appointment").attribute("regardingobjectid").targets == [  # type: ignore[union-attr]
        "account", "lead"]
    changes = [entry["change"] for entry in schema.metadata_log(sales_org)]
    assert changes[:2] == ["remove entity", "alter attribute"]


@pytest.mark.parametrize("data, error", [
    ({"logicalname": "Bad Name"}, InvalidInput),
    ({"logicalname": "account"}, AlreadyExists),
    ({"logicalname": "x1", "attributes": [{"logicalname": "a", "type": "blob"}]}, InvalidInput),
    ({"logicalname": "x2", "attributes": [{"logicalname": "a", "type": "lookup",
                                            "targets": ["nosuch"]}]}, InvalidInput),
    ({"logicalname": "x3", "attributes": [{"logicalname": "a", "type": "string"},
                                           {"logicalname": "a", "type": "memo"}]},
     InvalidInput),
    ({"logicalname": "x4", "attributes": [{"logicalname": "p", "type": "picklist"}]},
     InvalidInput),
])
def test_metadata_bad_entity_is_refused(sales_org: store.OrgDb, data: dict,
                                        error: type) -> None:
    before = list(sales_org.entities())
    with pytest.raises(error):
        schema.add_entity(sales_org, entity_from_dict(data))
    assert list(sales_org.entities()) == before


def test_metadata_system_attribute_cannot_be_removed(sales_org: store.OrgDb) -> None:
    for name in ("accountid", "versionnumber", "name"):
        with pytest.raises(MetadataChangeRefused):
            schema.remove_attribute(sales_org, "account", name)


def test_metadata_is_reread_by_other_connections(app, sales_org: store.OrgDb) -> None:
    from tests.conftest import orgs_dir

    with store.open_org(orgs_dir(app), "sales") as other:
        assert "visit" not in other.entities()
        schema.add_entity(sales_org, Entity("visit", attributes=[]))
        assert "visit" in other.entities()

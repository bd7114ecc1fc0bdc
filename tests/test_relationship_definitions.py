"""Relationships created and deleted through RelationshipDefinitions.

The bodies are Microsoft Learn's, "Create and update table relationships using the Web
API" (webapi/create-update-entity-relationships-using-web-api, copied into
tests/fixtures/dataverse/metadata/relationship-*-create.request.json), and the ones
Microsoft's Python SDK (powerplatform-dataverse-client 1.1.0) builds for
`tables.create_lookup_field`, `create_one_to_many_relationship`,
`create_many_to_many_relationship` and `delete_relationship` (its `_build_*` methods
build a request without sending it). They go through the metadata path of
`$customization` (portal.orgs.schema), with its refusals.
"""

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PowerPlatform.Dataverse.models.labels import Label, LocalizedLabel
from PowerPlatform.Dataverse.models.relationship import (
    LookupAttributeMetadata,
    ManyToManyRelationshipMetadata,
    OneToManyRelationshipMetadata,
)

from portal.orgs import records
from portal.orgs.store import OrgDb
from portal.web.odata.relationships import relationship_id
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user
from tests.dataverse_helpers import fixture as dataverse_fixture
from tests.odata_helpers import AUTH, ROOT
from tests.test_entity_definition_changes import SDK, send


def learn(name: str) -> dict[str, Any]:
    return dict(dataverse_fixture(f"metadata/relationship-{name}-create.request.json"))


def create_table(client: FlaskClient, name: str) -> None:
    assert send(client, SDK._build_create_entity(name, {})).status_code == 204


def get(client: FlaskClient, path: str) -> Any:
    answer = client.get(ROOT + path, headers=AUTH)
    assert answer.status_code == 200, answer.json
    return answer.json


def post(client: FlaskClient, body: Any, root: str = ROOT,
         headers: dict[str, str] | None = None) -> Any:
    return client.post(root + "RelationshipDefinitions", json=body, headers=headers or AUTH)


def test_learns_one_to_many_creates_the_lookup(client: FlaskClient, sales_org: OrgDb) -> None:
    create_table(client, "new_BankAccount")
    answer = post(client, learn("onetomany"))
    assert answer.status_code == 204, answer.json
    assert answer.headers["OData-EntityId"] == (
        f"http://localhost{ROOT}RelationshipDefinitions("
        f"{relationship_id('new_contact_new_bankaccount')})")
    lookup = sales_org.entity("new_bankaccount").attribute("new_accountowner")
    assert lookup is not None
    assert (lookup.type, lookup.targets, lookup.required, lookup.displayname) == (
        "lookup", ["contact"], True, "Account Owner")
    found = get(client, "RelationshipDefinitions?$filter=SchemaName eq "
                        "'new_contact_new_bankaccount'")["value"]
    assert [(r["ReferencedEntity"], r["ReferencingEntity"], r["ReferencingAttribute"],
             r["ReferencedEntityNavigationPropertyName"]) for r in found] == [
        ("contact", "new_bankaccount", "new_accountowner", "new_contact_new_bankaccount")]
    by_id = get(client, answer.headers["OData-EntityId"].split(ROOT)[1])
    assert by_id["SchemaName"] == "new_contact_new_bankaccount"
    # The lookup is a lookup like any other: records bind to it.
    contact = records.create_record(sales_org, "contact", {"lastname": "Doe"})
    created = client.post(ROOT + "new_bankaccounts", headers=AUTH, json={
        "new_name": "Savings", "new_accountowner": contact["contactid"]})
    assert created.status_code == 201, created.json
    again = post(client, learn("onetomany"))
    assert again.status_code == 409  # the column exists already
    assert sales_org.entity("new_bankaccount").attribute("new_accountowner") == lookup


def test_learns_many_to_many_creates_an_intersect_entity(client: FlaskClient,
                                                         sales_org: OrgDb) -> None:
    create_table(client, "campaign")
    answer = post(client, learn("manytomany"))
    assert answer.status_code == 204, answer.json
    intersect = sales_org.entity("new_accounts_campaigns")
    assert intersect.isintersect
    assert [(a.logicalname, a.targets) for a in intersect.attributes if a.type == "lookup"] == [
        ("accountid", ["account"]), ("campaignid", ["campaign"])]
    many = get(client, "EntityDefinitions(LogicalName='campaign')/ManyToManyRelationships"
                       "?$select=SchemaName,IntersectEntityName,Entity1LogicalName,"
                       "Entity1IntersectAttribute")["value"]
    assert [(r["SchemaName"], r["IntersectEntityName"], r["Entity1LogicalName"],
             r["Entity1IntersectAttribute"]) for r in many] == [
        ("new_accounts_campaigns", "new_accounts_campaigns", "account", "accountid")]
    again = post(client, learn("manytomany"))
    assert again.status_code == 409
    assert "exists already" in again.json["error"]["message"]


def test_sdk_lookup_field_keeps_its_names_and_deletes(client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    create_table(client, "new_Order")
    lookup, relationship = SDK._build_lookup_field_models(
        "new_order", "new_AccountId", "account", display_name="Account", required=False)
    body = {**relationship.to_dict(), "Lookup": lookup.to_dict()}
    answer = send(client, SDK._build_create_relationship(body))
    assert answer.status_code == 204, answer.json
    # The SDK's get_relationship: by the schema name it chose, case and all.
    name = "account_new_order_new_AccountId"
    found = get(client, f"RelationshipDefinitions?$filter=SchemaName eq '{name}'")["value"]
    assert len(found) == 1 and found[0]["ReferencingAttribute"] == "new_accountid"
    relationship_guid = answer.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert found[0]["MetadataId"] == relationship_guid
    gone = send(client, SDK._build_delete_relationship(relationship_guid))
    assert gone.status_code == 204, gone.json
    assert sales_org.entity("new_order").attribute("new_accountid") is None
    assert sales_org.db.execute("SELECT count(*) FROM _relationships").fetchone()[0] == 0
    assert send(client, SDK._build_delete_relationship(relationship_guid)).status_code == 404


def test_sdk_one_to_many_and_many_to_many_models(client: FlaskClient,
                                                 sales_org: OrgDb) -> None:
    create_table(client, "new_Department")
    create_table(client, "new_Employee")
    lookup = LookupAttributeMetadata(
        schema_name="new_DepartmentId",
        display_name=Label(localized_labels=[LocalizedLabel(label="Department",
                                                            language_code=1033)]))
    relationship = OneToManyRelationshipMetadata(
        schema_name="new_Department_Employee", referenced_entity="new_department",
        referencing_entity="new_employee", referenced_attribute="new_departmentid")
    body = {**relationship.to_dict(), "Lookup": lookup.to_dict()}
    assert send(client, SDK._build_create_relationship(body)).status_code == 204
    # The SDK's list_table_relationships reads the three collections.
    one = get(client, "EntityDefinitions(LogicalName='new_department')/OneToManyRelationships"
                      "?$select=SchemaName")["value"]
    assert [r["SchemaName"] for r in one] == ["new_Department_Employee"]
    mentors = ManyToManyRelationshipMetadata(
        schema_name="new_employee_mentor", entity1_logical_name="new_employee",
        entity2_logical_name="new_employee")
    assert send(client, SDK._build_create_relationship(mentors.to_dict())).status_code == 204
    intersect = sales_org.entity("new_employee_mentor")
    assert [a.logicalname for a in intersect.attributes if a.type == "lookup"] == [
        "new_employeeidone", "new_employeeidtwo"]
    # Deleting the many-to-many removes its intersect entity (and its records).
    key = "RelationshipDefinitions(SchemaName='new_employee_mentor')"
    assert client.delete(ROOT + key, headers=AUTH).status_code == 204
    assert "new_employee_mentor" not in sales_org.entities()
    # Removing a table forgets the names of its relationships.
    assert send(client, SDK._build_delete_entity(
        get(client, "EntityDefinitions(LogicalName='new_department')")["MetadataId"])
    ).status_code == 204
    assert sales_org.db.execute("SELECT count(*) FROM _relationships").fetchone()[0] == 0


def test_deleting_one_target_of_a_multi_table_lookup_keeps_data(client: FlaskClient,
                                                                sales_org: OrgDb) -> None:
    account = records.create_record(sales_org, "account", {"name": "A"})
    meeting = records.create_record(sales_org, "appointment", {
        "subject": "Visit", "regardingobjectid": account["accountid"]})
    key = "RelationshipDefinitions(SchemaName='account_appointment_regardingobjectid')"
    refused = client.delete(ROOT + key, headers=AUTH)
    assert refused.status_code == 409
    assert "would orphan 1 record" in refused.json["error"]["message"]
    regarding = sales_org.entity("appointment").attribute("regardingobjectid")
    assert regarding is not None and regarding.targets == ["account", "contact", "lead"]
    # With no appointment regarding an account, the account target goes, the lookup stays.
    records.update_record(sales_org, "appointment", meeting["activityid"],
                          {"regardingobjectid": None})
    assert client.delete(ROOT + key, headers=AUTH).status_code == 204
    regarding = sales_org.entity("appointment").attribute("regardingobjectid")
    assert regarding is not None and regarding.targets == ["contact", "lead"]


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"ReferencedEntity": "nothing"}, 404, "Could not find an entity with LogicalName='nothing'"),
    ({"ReferencingEntity": "nothing"}, 404, "Could not find an entity"),
    ({"ReferencedAttribute": "fullname"}, 400, "ReferencedAttribute 'fullname' cannot be set"),
    ({"@odata.type": "Microsoft.Dynamics.CRM.RelationshipMetadataBase"}, 400, "@odata.type"),
    ({"SchemaName": None}, 400, "needs SchemaName"),
    ({"Lookup": None}, 400, "needs its Lookup"),
    ({"Lookup": {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                 "SchemaName": "new_x"}}, 400, "must be a Microsoft.Dynamics.CRM.Lookup"),
    ({"Lookup": {"SchemaName": "Bad Name", "AttributeType": "Lookup"}}, 400,
     "must be 1-64 lower-case"),
    ({"CascadeConfiguration": {"Delete": "Sometimes"}}, 400, "'Sometimes' is not one of"),
    ({"ReferencingEntityNavigationPropertyName": "owner"}, 400, "cannot be set here"),
    ({"SchemaName": "account_contact_parentcustomerid"}, 409, "exists already"),
    ({"ReferencingEntity": "leadcompetitor"}, 400, "is an intersect entity"),
])
def test_bad_one_to_many_is_refused_and_changes_nothing(
        client: FlaskClient, sales_org: OrgDb, change: dict[str, Any], status: int,
        words: str) -> None:
    create_table(client, "new_BankAccount")
    body = {**learn("onetomany"), **change}
    before = sales_org.entities()
    answer = post(client, body)
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]
    assert sales_org.entities() == before
    assert sales_org.db.execute("SELECT count(*) FROM _relationships").fetchone()[0] == 0


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"Entity2LogicalName": "nothing"}, 404, "Could not find an entity"),
    ({"IntersectEntityName": "Not A Name"}, 400, "must be 1-64 lower-case"),
    ({"IntersectEntityName": "account"}, 409, "exists already"),
    ({"Entity1NavigationPropertyName": "x"}, 400, "cannot be set here"),
    ({"Entity1LogicalName": "leadcompetitor"}, 400, "is an intersect entity"),
])
def test_bad_many_to_many_is_refused_and_changes_nothing(
        client: FlaskClient, sales_org: OrgDb, change: dict[str, Any], status: int,
        words: str) -> None:
    create_table(client, "campaign")
    before = sales_org.entities()
    answer = post(client, {**learn("manytomany"), **change})
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"]["message"]
    assert sales_org.entities() == before
    assert sales_org.db.execute("SELECT count(*) FROM _relationships").fetchone()[0] == 0


def test_relationship_writes_we_do_not_serve_say_why(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    key = ROOT + "RelationshipDefinitions(SchemaName='leadcompetitor')"
    put = client.put(key, json={}, headers=AUTH)
    assert put.status_code == 501 and "updating a relationship" in put.json["error"]["message"]
    assert client.patch(key, json={}, headers=AUTH).status_code == 405
    missing = client.delete(ROOT + "RelationshipDefinitions(SchemaName='nothing')", headers=AUTH)
    assert missing.status_code == 404


def test_dataverse_root_refusals_in_dataverse_shape(app: Flask, client: FlaskClient,
                                                    sales_org: OrgDb) -> None:
    admin = bearer(client_token(client, *new_application_user(app)))
    reader = bearer(client_token(client, *new_application_user(app, admin=False)))
    body = learn("manytomany")  # campaign does not exist
    missing = post(client, body, DV_ROOT, admin)
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "0x80040217"
    forbidden = post(client, {**body, "Entity2LogicalName": "contact"}, DV_ROOT, reader)
    assert forbidden.status_code == 403 and forbidden.json["error"]["code"] == "0x80040220"
    made = post(client, {**body, "Entity2LogicalName": "contact"}, DV_ROOT, admin)
    assert made.status_code == 204
    assert made.headers["OData-EntityId"].startswith("http://localhost" + DV_ROOT)
    assert json.loads(client.get(DV_ROOT + "RelationshipDefinitions(SchemaName="
                                 "'new_accounts_campaigns')", headers=admin).data)[
        "Entity2LogicalName"] == "contact"


def test_customization_refuses_narrowing_targets_that_records_use(client: FlaskClient,
                                                                  sales_org: OrgDb) -> None:
    account = records.create_record(sales_org, "account", {"name": "A"})
    records.create_record(sales_org, "appointment", {"subject": "Visit",
                                                     "regardingobjectid": account["accountid"]})
    answer = client.patch(ROOT + "$customization/entities/appointment/attributes/"
                          "regardingobjectid", json={"targets": ["contact", "lead"]},
                          headers=AUTH)
    assert answer.status_code == 409
    assert "removing target(s) account" in answer.json["error"]["message"]
    regarding = sales_org.entity("appointment").attribute("regardingobjectid")
    assert regarding is not None and regarding.targets == ["account", "contact", "lead"]

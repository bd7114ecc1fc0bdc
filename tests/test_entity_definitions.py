"""EntityDefinitions queries as Dataverse serves them: $filter, keys, casts, relationships.

Shapes are compared with payloads copied from Microsoft Learn into
tests/fixtures/dataverse/metadata/:
- attribute-picklist-cast-optionset, attributes-filter-select-odata-type: "Retrieve
  metadata by name or MetadataId" (webapi/retrieve-metadata-name-metadataid);
- attribute-lookup-cast-targets, attribute-boolean-cast-optionset,
  attribute-datetime-cast-select, relationship-onetomany-cast, relationship-manytomany-cast,
  entitydefinition-full: "Web API Metadata Operations Sample"
  (webapi/web-api-metadata-operations-sample);
- entitydefinition-select: "Query table definitions using the Web API"
  (webapi/query-metadata-web-api).
The requests are the ones Microsoft's Python SDK (powerplatform-dataverse-client 1.1.0)
sends, as read from its source (data/_odata.py, data/_odata_base.py).
"""

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from portal.orgs.store import OrgDb
from portal.web.odata.entity_definitions import metadata_id
from tests.odata_helpers import AUTH, ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "dataverse" / "metadata"


def doc(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.response.json").read_text())


def get(client: FlaskClient, path: str) -> Any:
    answer = client.get(ROOT + quote(path, safe="/?&=$(),'*"), headers=AUTH)
    assert answer.status_code == 200, answer.json
    return answer.json


def test_sdk_first_call_filters_by_logical_name(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = get(client, "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute"
                 "&$filter=LogicalName eq 'contact'")
    assert answer["@odata.context"].endswith(
        "$metadata#EntityDefinitions(LogicalName,EntitySetName,PrimaryIdAttribute)")
    assert answer["value"] == [{"MetadataId": metadata_id("contact"), "LogicalName": "contact",
                                "EntitySetName": "contacts",
                                "PrimaryIdAttribute": "contactid"}]
    full = get(client, "EntityDefinitions?$select=MetadataId,LogicalName,SchemaName,"
               "EntitySetName,PrimaryNameAttribute,PrimaryIdAttribute"
               "&$filter=LogicalName eq 'nothing'")
    assert full["value"] == []


def test_tables_list_filter_and_combinations(client: FlaskClient, sales_org: OrgDb) -> None:
    names = [e["LogicalName"] for e in get(
        client, "EntityDefinitions?$filter=IsPrivate eq false")["value"]]
    assert names == list(sales_org.entities())
    combined = get(client, "EntityDefinitions?$filter=IsPrivate eq false and "
                   "(SchemaName eq 'Account' or EntitySetName eq 'leads')&$select=LogicalName")
    assert [e["LogicalName"] for e in combined["value"]] == ["account", "lead"]
    intersect = get(client, "EntityDefinitions?$filter=IsIntersect eq true and "
                    "not (LogicalName eq 'x')&$select=LogicalName")
    assert [e["LogicalName"] for e in intersect["value"]] == ["leadcompetitor"]
    by_path = get(client, "EntityDefinitions?$filter=IsCustomizable/Value eq true and "
                  "DisplayName/UserLocalizedLabel/Label eq 'Lead'&$select=LogicalName")
    assert [e["LogicalName"] for e in by_path["value"]] == ["lead"]


def test_entity_shape_matches_the_documented_one(client: FlaskClient, sales_org: OrgDb) -> None:
    ours = get(client, "EntityDefinitions(LogicalName='account')")
    documented = doc("entitydefinition-full")
    for name, value in ours.items():
        if name.startswith("@"):
            continue
        assert name in documented, name
        assert type(value) is type(documented[name]) or documented[name] is None or \
            value is None, name
    assert ours["EntitySetName"] == "accounts" and ours["IsPrivate"] is False
    by_id = get(client, f"EntityDefinitions({metadata_id('account')})?$select=LogicalName")
    assert by_id["LogicalName"] == "account"
    assert by_id["@odata.context"].endswith("$metadata#EntityDefinitions(LogicalName)/$entity")
    selected = get(client, "EntityDefinitions?$select=DisplayName,EntitySetName"
                   "&$filter=LogicalName eq 'account'")["value"][0]
    assert set(selected) == set(doc("entitydefinition-select")["value"][0]) - {
        "IsKnowledgeManagementEnabled"}


def test_attributes_by_key_filter_and_select(client: FlaskClient, sales_org: OrgDb) -> None:
    entity = metadata_id("account")
    # What the SDK sends to find a column before it removes it.
    found = get(client, f"EntityDefinitions({entity})/Attributes?$select=MetadataId,"
                "LogicalName,SchemaName&$filter=LogicalName eq 'industrycode'")
    assert found["value"] == [{"@odata.type": "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                               "MetadataId": metadata_id("account", "industrycode"),
                               "LogicalName": "industrycode", "SchemaName": "industrycode"}]
    # As the documented Attributes?$filter=...&$select=MetadataId answer.
    documented = doc("attributes-filter-select-odata-type")["value"][0]
    only_id = get(client, f"EntityDefinitions({entity})/Attributes?$select=MetadataId&$filter="
                  "AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'")
    assert [set(a) for a in only_id["value"]] == [set(documented)]
    one = get(client, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')"
              "?$select=LogicalName,MaxLength")
    assert (one["LogicalName"], one["MaxLength"]) == ("name", 160)
    by_id = get(client, f"EntityDefinitions({entity})/Attributes("
                f"{metadata_id('account', 'name')})")
    assert by_id["AttributeType"] == "String"
    strings = get(client, f"EntityDefinitions({entity})/Attributes?$filter=AttributeType eq "
                  "'String' and MaxLength ge 100&$select=LogicalName")
    assert [a["LogicalName"] for a in strings["value"]] == [
        "name", "emailaddress1", "websiteurl"]


def test_picklist_cast_with_option_sets(client: FlaskClient, sales_org: OrgDb) -> None:
    documented = doc("attribute-picklist-cast-optionset")
    one = get(client, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName="
              "'industrycode')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
              "?$select=LogicalName&$expand=OptionSet($select=Options),GlobalOptionSet")
    assert set(one) - {"@odata.type"} == set(documented)
    assert one["GlobalOptionSet"] is None  # local option sets only
    option = one["OptionSet"]["Options"][0]
    doc_option = documented["OptionSet"]["Options"][0]
    assert set(option) <= set(doc_option)
    assert set(option["Label"]) == set(doc_option["Label"])
    assert option["Value"] == 1 and option["Label"]["UserLocalizedLabel"]["Label"] == \
        "Accounting"
    # The SDK's one-call read of every picklist of a table.
    every = get(client, "EntityDefinitions(LogicalName='contact')/Attributes/"
                "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
                "?$select=LogicalName&$expand=OptionSet($select=Options)")
    assert [(a["LogicalName"], len(a["OptionSet"]["Options"])) for a in every["value"]] == [
        ("gendercode", 2)]
    # A table without picklists answers the same call with none.
    none = get(client, "EntityDefinitions(LogicalName='competitor')/Attributes/"
               "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
               "?$select=LogicalName&$expand=OptionSet($select=Options)")
    assert none["value"] == []
    no_relationships = get(client, "EntityDefinitions(LogicalName='systemuser')/"
                           "ManyToManyRelationships?$select=SchemaName&$filter="
                           "IntersectEntityName eq 'x'")
    assert no_relationships["value"] == []


def test_boolean_lookup_and_datetime_casts(client: FlaskClient, sales_org: OrgDb) -> None:
    boolean = get(client, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName="
                  "'creditonhold')/Microsoft.Dynamics.CRM.BooleanAttributeMetadata"
                  "?$expand=OptionSet")
    documented = doc("attribute-boolean-cast-optionset")["OptionSet"]
    assert {"TrueOption", "FalseOption"} <= set(boolean["OptionSet"]) <= set(documented)
    assert boolean["OptionSet"]["TrueOption"]["Value"] == 1
    lookup = get(client, "EntityDefinitions(LogicalName='appointment')/Attributes(LogicalName="
                 "'regardingobjectid')/Microsoft.Dynamics.CRM.LookupAttributeMetadata"
                 "?$select=Targets")
    assert set(lookup) - {"@odata.context", "@odata.type"} == set(
        doc("attribute-lookup-cast-targets")) - {"@odata.context"}
    assert lookup["Targets"] == ["account", "contact", "lead"]
    dates = get(client, "EntityDefinitions(LogicalName='contact')/Attributes/"
                "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
                "?$select=SchemaName,Format,DateTimeBehavior")
    documented_date = doc("attribute-datetime-cast-select")
    assert [set(a) - {"@odata.type"} for a in dates["value"]] == \
        [set(documented_date) - {"@odata.context"}] * 3  # birthdate, createdon, modifiedon
    lookups = get(client, "EntityDefinitions(LogicalName='contact')/Attributes/"
                  "Microsoft.Dynamics.CRM.LookupAttributeMetadata?$select=LogicalName")
    assert [a["LogicalName"] for a in lookups["value"]] == ["parentcustomerid", "ownerid"]


def test_relationships_from_lookups_and_intersects(client: FlaskClient,
                                                   sales_org: OrgDb) -> None:
    one_to_many = get(client, "EntityDefinitions(LogicalName='account')/OneToManyRelationships"
                      "?$select=SchemaName,ReferencingEntity,ReferencingAttribute")["value"]
    assert {(r["ReferencingEntity"], r["ReferencingAttribute"]) for r in one_to_many} == {
        ("account", "parentaccountid"), ("contact", "parentcustomerid"),
        ("lead", "parentaccountid"), ("appointment", "regardingobjectid")}
    documented = doc("relationship-onetomany-cast")
    full = get(client, "RelationshipDefinitions(SchemaName='account_contact_parentcustomerid')/"
               "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata")
    assert set(full) - {"@odata.context", "@odata.type"} <= set(documented)
    assert (full["ReferencedEntity"], full["ReferencedAttribute"],
            full["ReferencingEntityNavigationPropertyName"]) == \
        ("account", "accountid", "parentcustomerid_account")
    many_to_one = get(client, "EntityDefinitions(LogicalName='contact')/"
                      "ManyToOneRelationships?$select=ReferencedEntity")["value"]
    assert sorted(r["ReferencedEntity"] for r in many_to_one) == ["account", "systemuser"]
    many = get(client, "EntityDefinitions(LogicalName='lead')/ManyToManyRelationships")["value"]
    assert [(r["IntersectEntityName"], r["Entity1LogicalName"], r["Entity2LogicalName"])
            for r in many] == [("leadcompetitor", "lead", "competitor")]
    assert set(many[0]) - {"@odata.type"} <= set(doc("relationship-manytomany-cast"))
    cast = get(client, "RelationshipDefinitions/Microsoft.Dynamics.CRM."
               "ManyToManyRelationshipMetadata?$select=SchemaName")
    assert [r["SchemaName"] for r in cast["value"]] == ["leadcompetitor"]
    # The SDK's relationship lookup.
    found = get(client, "RelationshipDefinitions?$filter=SchemaName eq 'leadcompetitor'")
    assert found["value"][0]["MetadataId"] == many[0]["MetadataId"]
    by_id = get(client, f"RelationshipDefinitions({many[0]['MetadataId']})")
    assert by_id["SchemaName"] == "leadcompetitor"
    expanded = get(client, "EntityDefinitions(LogicalName='competitor')?$select=LogicalName"
                   "&$expand=ManyToManyRelationships($select=SchemaName),"
                   "Attributes($select=LogicalName;$filter=AttributeType eq 'Money')")
    assert expanded["ManyToManyRelationships"] == [{
        "@odata.type": "#Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
        "MetadataId": many[0]["MetadataId"], "SchemaName": "leadcompetitor"}]
    assert [a["LogicalName"] for a in expanded["Attributes"]] == ["reportedrevenue"]


@pytest.mark.parametrize(("path", "status", "words"), [
    ("EntityDefinitions?$filter=contains(LogicalName,'acc')", 501, "function contains()"),
    ("EntityDefinitions?$filter=Attributes/any(a:a/LogicalName eq 'x')", 501, "function any()"),
    ("EntityDefinitions?$filter=IsAuditEnabled/Value eq true", 501, "'IsAuditEnabled'"),
    ("EntityDefinitions?$filter=LogicalName has 'x'", 501, "operator has"),
    ("EntityDefinitions?$filter=LogicalName eq", 400, "expected a property or a value"),
    ("EntityDefinitions?$filter=(LogicalName eq 'x'", 400, "not closed"),
    ("EntityDefinitions?$filter=LogicalName eq 'x' LogicalName", 400, "unexpected"),
    ("EntityDefinitions?$orderby=LogicalName", 501, "$orderby"),
    ("EntityDefinitions(LogicalName='account')?$filter=IsPrivate eq false", 400, "collections"),
    ("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='nothing')", 404,
     "Could not find"),
    ("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')/"
     "Microsoft.Dynamics.CRM.PicklistAttributeMetadata", 404, "not a PicklistAttributeMetadata"),
    ("EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.Bogus", 404,
     "no metadata resource"),
    ("EntityDefinitions(LogicalName='account')/Attributes?$select=Bogus", 400,
     "Could not find a property named 'Bogus'"),
    ("EntityDefinitions(LogicalName='account')/Attributes?$expand=Targets", 400,
     "cannot be expanded"),
    ("EntityDefinitions/Attributes", 400, "needs a key"),
    ("EntityDefinitions(LogicalName='account')/Forms", 404, "no 'Forms'"),
    ("RelationshipDefinitions(SchemaName='nothing')", 404, "Could not find"),
    ("RelationshipDefinitions(SchemaName='leadcompetitor')/Microsoft.Dynamics.CRM."
     "OneToManyRelationshipMetadata", 404, "not a OneToManyRelationshipMetadata"),
])
def test_metadata_queries_we_do_not_serve_say_why(client: FlaskClient, sales_org: OrgDb,
                                                  path: str, status: int, words: str) -> None:
    answer = client.get(ROOT + quote(path, safe="/?&=$(),'*:"), headers=AUTH)
    assert answer.status_code == status
    assert words in answer.json["error"]["message"]


def test_metadata_id_keys_in_every_guid_spelling(client: FlaskClient, sales_org: OrgDb) -> None:
    """A MetadataId key is read by the one GUID rule (portal.orgs.types.guid_text)."""
    entity, attribute = metadata_id("account"), metadata_id("account", "name")
    for key in (entity, entity.upper(), f"'{entity}'", "{" + entity + "}"):
        assert get(client, f"EntityDefinitions({key})?$select=LogicalName")[
            "LogicalName"] == "account"
        assert get(client, f"EntityDefinitions({key})/Attributes({attribute.upper()})"
                   "?$select=LogicalName")["LogicalName"] == "name"
    for bad in (entity[:-1], f"'{entity}", entity + "0"):
        answer = client.get(ROOT + quote(f"EntityDefinitions({bad})", safe="/?&=$(),'*"),
                            headers=AUTH)
        assert answer.status_code == 400
        assert "is not LogicalName='<name>' or a MetadataId" in answer.json["error"]["message"]

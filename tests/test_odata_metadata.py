"""$metadata (CSDL) and EntityDefinitions (Dataverse-style) of an org, and reading them back."""

import defusedxml.ElementTree as ET
import pytest
from flask.testing import FlaskClient

from portal.backends.dataverse_metadata import entities_from_entity_definitions
from portal.orgs import schema
from portal.orgs.metadata import Attribute, to_dict
from portal.orgs.store import OrgDb
from portal.orgs.templates import sales
from tests.odata_helpers import AUTH, ROOT

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def csdl(client: FlaskClient):
    answer = client.get(ROOT + "$metadata", headers=AUTH)
    assert answer.status_code == 200
    assert answer.content_type.startswith("application/xml")
    return ET.fromstring(answer.data, forbid_dtd=True)


def entity_type(doc, name: str):
    return next(t for t in doc.iter(EDM + "EntityType") if t.get("Name") == name)


def properties(element) -> dict[str, dict[str, str]]:
    return {p.get("Name"): dict(p.attrib) for p in element.findall(EDM + "Property")}


def test_metadata_describes_every_entity_with_key_and_types(client: FlaskClient,
                                                            sales_org: OrgDb) -> None:
    doc = csdl(client)
    account = entity_type(doc, "account")
    assert account.find(f"{EDM}Key/{EDM}PropertyRef").get("Name") == "accountid"
    props = properties(account)
    assert props["accountid"]["Type"] == "Edm.Guid"
    assert props["name"] == {"Name": "name", "Type": "Edm.String", "MaxLength": "160"}
    assert props["description"]["Type"] == "Edm.String"
    assert props["numberofemployees"]["Type"] == "Edm.Int32"
    assert props["versionnumber"]["Type"] == "Edm.Int64"
    assert props["revenue"]["Type"] == "Edm.Decimal"
    assert props["creditonhold"]["Type"] == "Edm.Boolean"
    assert props["lastusedincampaign"]["Type"] == "Edm.DateTimeOffset"
    assert props["industrycode"]["Type"] == "Edm.Int32"
    assert props["parentaccountid"]["Type"] == "Edm.Guid"  # lookups: the GUID, as in our JSON
    navs = {n.get("Name"): n.get("Type") for n in account.findall(EDM + "NavigationProperty")}
    assert navs["parentaccountid_account"] == "Microsoft.Dynamics.CRM.account"
    appointment = entity_type(doc, "appointment")
    navs = {n.get("Name") for n in appointment.findall(EDM + "NavigationProperty")}
    assert {"regardingobjectid_account", "regardingobjectid_contact",
            "regardingobjectid_lead"} <= navs
    sets = {s.get("Name"): s for s in doc.iter(EDM + "EntitySet")}
    assert sets["accounts"].get("EntityType") == "Microsoft.Dynamics.CRM.account"
    concurrency = sets["accounts"].find(EDM + "Annotation")
    assert concurrency.get("Term") == "Org.OData.Core.V1.OptimisticConcurrency"
    assert concurrency.find(f"{EDM}Collection/{EDM}PropertyPath").text == "versionnumber"


def test_metadata_changes_when_the_org_is_customized(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    assert "cf_rating" not in properties(entity_type(csdl(client), "account"))
    schema.add_attribute(sales_org, "account", Attribute("cf_rating", "integer", "Rating"))
    assert properties(entity_type(csdl(client), "account"))["cf_rating"]["Type"] == "Edm.Int32"


def test_entity_definitions_have_the_dataverse_shape(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    answer = client.get(ROOT + "EntityDefinitions(LogicalName='account')?$expand=Attributes",
                        headers=AUTH)
    assert answer.status_code == 200
    account = answer.json
    assert account["@odata.context"].endswith("$metadata#EntityDefinitions/$entity")
    assert account["EntitySetName"] == "accounts"
    assert account["PrimaryIdAttribute"] == "accountid"
    assert account["PrimaryNameAttribute"] == "name"
    assert account["IsIntersect"] is False
    assert account["DisplayName"]["UserLocalizedLabel"] == {"Label": "Account",
                                                            "LanguageCode": 1033}
    assert {"Label": "Firma", "LanguageCode": 1031} in account["DisplayName"]["LocalizedLabels"]
    attrs = {a["LogicalName"]: a for a in account["Attributes"]}
    assert attrs["name"]["AttributeType"] == "String" and attrs["name"]["MaxLength"] == 160
    assert attrs["name"]["RequiredLevel"]["Value"] == "ApplicationRequired"
    assert attrs["revenue"]["AttributeType"] == "Money" and attrs["revenue"]["Precision"] == 2
    assert attrs["parentaccountid"]["Targets"] == ["account"]
    assert attrs["industrycode"]["@odata.type"] == \
        "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    option = attrs["industrycode"]["OptionSet"]["Options"][0]
    assert option["Value"] == 1 and option["Label"]["UserLocalizedLabel"]["Label"] == "Accounting"
    assert attrs["createdon"]["IsValidForCreate"] is False
    assert attrs["accountid"]["IsValidForCreate"] is True
    assert attrs["accountid"]["IsValidForUpdate"] is False


def test_entity_definitions_select_and_nested_select(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    answer = client.get(ROOT + "EntityDefinitions?$select=LogicalName,EntitySetName"
                        "&$expand=Attributes($select=LogicalName,AttributeType)", headers=AUTH)
    assert answer.status_code == 200
    first = answer.json["value"][0]
    assert set(first) == {"MetadataId", "LogicalName", "EntitySetName", "Attributes"}
    assert set(first["Attributes"][0]) == {"@odata.type", "MetadataId", "LogicalName",
                                           "AttributeType"}
    plain = client.get(ROOT + "EntityDefinitions", headers=AUTH).json["value"][0]
    assert "Attributes" not in plain


@pytest.mark.parametrize("query, status", [
    ("EntityDefinitions?$select=Bogus", 400),
    ("EntityDefinitions?$expand=Keys", 400),
    ("EntityDefinitions?$filter=contains(LogicalName,'x')", 501),
    ("EntityDefinitions(LogicalName='nothing')", 404),
    ("EntityDefinitions(Name='x')", 400),
])
def test_entity_definitions_refuse_bad_queries(client: FlaskClient, sales_org: OrgDb,
                                               query: str, status: int) -> None:
    answer = client.get(ROOT + query, headers=AUTH)
    assert answer.status_code == status
    assert answer.json["error"]["message"]


def test_entity_definitions_round_trip_every_field_of_the_sales_template(
        client: FlaskClient, sales_org: OrgDb) -> None:
    answer = client.get(ROOT + "EntityDefinitions?$expand=Attributes", headers=AUTH)
    read = entities_from_entity_definitions(answer.json)
    assert [to_dict(e) for e in read] == [to_dict(e) for e in sales_org.entities().values()]
    # ... which are the template's definitions, completed by the store.
    assert [e.logicalname for e in read] == [e.logicalname for e in sales()]


def test_entity_definitions_reader_reads_a_dataverse_payload() -> None:
    # Shapes as Microsoft's Web API documentation shows them (query-metadata-web-api).
    payload = {"value": [{
        "MetadataId": "70816501-edb9-4740-a16c-6a5efbc05d84", "LogicalName": "account",
        "EntitySetName": "accounts", "PrimaryIdAttribute": "accountid",
        "PrimaryNameAttribute": "name", "IsIntersect": False,
        "DisplayName": {"LocalizedLabels": [{"Label": "Account", "LanguageCode": 1033,
                                             "IsManaged": True}],
                        "UserLocalizedLabel": {"Label": "Account", "LanguageCode": 1033}},
        "Attributes": [
            {"@odata.type": "#Microsoft.Dynamics.CRM.UniqueIdentifierAttributeMetadata",
             "LogicalName": "accountid", "AttributeType": "Uniqueidentifier",
             "RequiredLevel": {"Value": "SystemRequired"}, "IsValidForUpdate": False,
             "DisplayName": {"LocalizedLabels": [], "UserLocalizedLabel": None}},
            {"LogicalName": "name", "AttributeType": "String", "MaxLength": 160,
             "RequiredLevel": {"Value": "ApplicationRequired"}, "IsValidForUpdate": True,
             "DisplayName": {"LocalizedLabels": [{"Label": "Account Name",
                                                  "LanguageCode": 1033}],
                             "UserLocalizedLabel": {"Label": "Account Name",
                                                    "LanguageCode": 1033}}},
            {"LogicalName": "ownerid", "AttributeType": "Owner", "Targets": ["systemuser", "team"],
             "RequiredLevel": {"Value": "SystemRequired"}, "IsValidForUpdate": True},
            {"LogicalName": "statecode", "AttributeType": "State", "IsValidForUpdate": True,
             "OptionSet": {"Options": [
                 {"Value": 0, "Label": {"LocalizedLabels": [{"Label": "Active",
                                                             "LanguageCode": 1033}],
                                        "UserLocalizedLabel": {"Label": "Active",
                                                               "LanguageCode": 1033}}}]}},
            {"LogicalName": "accountidname", "AttributeType": "Virtual"},
        ]}]}
    [account] = entities_from_entity_definitions(payload)
    assert account.primaryidattribute == "accountid" and account.displayname == "Account"
    attrs = {a.logicalname: a for a in account.attributes}
    assert set(attrs) == {"accountid", "name", "ownerid", "statecode"}
    assert attrs["accountid"].required is False and attrs["accountid"].issystem is True
    assert attrs["name"].required is True and attrs["name"].maxlength == 160
    assert attrs["ownerid"].type == "lookup" and attrs["ownerid"].targets == ["systemuser", "team"]
    assert attrs["statecode"].type == "picklist" and attrs["statecode"].options[0].label == \
        "Active"

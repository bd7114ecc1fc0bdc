"""Tables and columns created through EntityDefinitions, with the bodies Microsoft's SDK sends.

The requests are built by powerplatform-dataverse-client 1.1.0 itself (its `_build_*`
methods build a request without sending it; `client.tables.create`, `add_columns`,
`remove_columns` and `delete` send exactly these). They go through the same metadata path
as `$customization` (portal.orgs.schema), with its refusal of changes that lose data.
"""

import enum
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient
from PowerPlatform.Dataverse.data._odata_base import _ODataBase
from PowerPlatform.Dataverse.data._raw_request import _RawRequest

from portal.orgs import records
from portal.orgs.store import OrgDb
from portal.web.odata.entity_definitions import metadata_id
from tests.odata_helpers import AUTH, ROOT

SDK = _ODataBase("https://org.example.crm.dynamics.com")


class Size(enum.IntEnum):
    Small = 100000000
    Large = 100000001


def send(client: FlaskClient, request: _RawRequest) -> Any:
    """The SDK's request sent to our Org API root instead of its Dataverse one."""
    assert request.url.startswith(SDK.api + "/")
    path = ROOT + request.url[len(SDK.api) + 1:]
    headers = {**AUTH, **(request.headers or {})}
    if request.body is not None:
        headers["Content-Type"] = "application/json"
    return client.open(path, method=request.method, headers=headers,
                       data=(request.body or "").encode())


def definition(client: FlaskClient, name: str) -> dict[str, Any]:
    answer = client.get(ROOT + f"EntityDefinitions(LogicalName='{name}')?$expand=Attributes",
                        headers=AUTH)
    assert answer.status_code == 200, answer.json
    return dict(answer.json)


def test_sdk_creates_a_table_with_columns(client: FlaskClient, sales_org: OrgDb) -> None:
    request = SDK._build_create_entity("new_Product", {
        "new_Price": "decimal", "new_Count": "int", "new_Active": "bool", "new_Due": "datetime",
        "new_Notes": "memo", "new_Ratio": "float", "new_Size": Size,
    }, display_name="Product")
    answer = send(client, request)
    assert answer.status_code == 204, answer.json
    assert answer.headers["OData-EntityId"].endswith(
        f"EntityDefinitions({metadata_id('new_product')})")
    # The SDK's next call, to learn the new table's names.
    found = client.get(ROOT + "EntityDefinitions?$select=MetadataId,LogicalName,SchemaName,"
                       "EntitySetName,PrimaryNameAttribute,PrimaryIdAttribute"
                       "&$filter=LogicalName eq 'new_product'",
                       headers={**AUTH, "Consistency": "Strong"}).json["value"]
    assert [(e["EntitySetName"], e["PrimaryIdAttribute"], e["PrimaryNameAttribute"])
            for e in found] == [("new_products", "new_productid", "new_name")]
    product = definition(client, "new_product")
    assert product["DisplayName"]["LocalizedLabels"][0]["Label"] == "Product"
    types = {a["LogicalName"]: a["AttributeType"] for a in product["Attributes"]}
    assert types == {"new_productid": "Uniqueidentifier", "new_name": "String",
                     "new_price": "Decimal", "new_count": "Integer", "new_active": "Boolean",
                     "new_due": "DateTime", "new_notes": "Memo", "new_ratio": "Double",
                     "new_size": "Picklist", "createdon": "DateTime",
                     "modifiedon": "DateTime", "versionnumber": "BigInt"}
    size = next(a for a in product["Attributes"] if a["LogicalName"] == "new_size")
    assert [(o["Value"], o["Label"]["LocalizedLabels"][0]["Label"])
            for o in size["OptionSet"]["Options"]] == [(100000000, "Small"),
                                                        (100000001, "Large")]
    # Records can be written at once, through the one write path.
    created = client.post(ROOT + "new_products", json={"new_name": "P", "new_size": 100000001,
                                                       "new_price": 9.5}, headers=AUTH)
    assert created.status_code == 201
    stored = records.get_record(sales_org, "new_product", created.json["new_productid"])
    assert stored is not None and stored["new_size"] == 100000001


def test_post_entity_definitions_creates_a_table(client: FlaskClient, sales_org: OrgDb) -> None:
    # The Web API's own form (create-update-entity-definitions-using-web-api): no "Complex".
    body = orjson.loads(SDK._build_create_entity("new_Bank", {}).body or "{}")["Entities"][0]
    body["@odata.type"] = "Microsoft.Dynamics.CRM.EntityMetadata"
    for attr in body["Attributes"]:
        attr["@odata.type"] = attr["@odata.type"].replace(".Complex", ".")
    answer = client.post(ROOT + "EntityDefinitions", json=body, headers=AUTH)
    assert answer.status_code == 204, answer.json
    assert definition(client, "new_bank")["PrimaryNameAttribute"] == "new_name"
    again = client.post(ROOT + "EntityDefinitions", json=body, headers=AUTH)
    assert again.status_code == 409
    assert "exists already" in again.json["error"]["message"]


def test_sdk_adds_and_removes_columns(client: FlaskClient, sales_org: OrgDb) -> None:
    account = metadata_id("account")
    for name, kind in [("new_Rating", "int"), ("new_Code", {"type": "string",
                                                             "max_length": 20}),
                       ("new_Tier", Size)]:
        answer = send(client, SDK._build_create_column(account, name, kind))
        assert answer.status_code == 204, answer.json
    attrs = {a["LogicalName"]: a for a in definition(client, "account")["Attributes"]}
    assert attrs["new_rating"]["AttributeType"] == "Integer"
    assert attrs["new_code"]["MaxLength"] == 20
    assert attrs["new_tier"]["AttributeType"] == "Picklist"
    twice = send(client, SDK._build_create_column(account, "new_Rating", "int"))
    assert twice.status_code == 409
    # remove_columns: find the column's MetadataId, then DELETE it with If-Match: *.
    column = client.get(ROOT + f"EntityDefinitions({account})/Attributes?$select=MetadataId,"
                        "LogicalName,SchemaName&$filter=LogicalName eq 'new_rating'",
                        headers=AUTH).json["value"][0]
    gone = send(client, SDK._build_delete_column(account, column["MetadataId"]))
    assert gone.status_code == 204
    assert "new_rating" not in {a["LogicalName"] for a in definition(client, "account")[
        "Attributes"]}
    missing = send(client, SDK._build_delete_column(account, column["MetadataId"]))
    assert missing.status_code == 404


def test_column_change_that_loses_data_is_refused(client: FlaskClient,
                                                  sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "A" * 150})
    url = ROOT + "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')"
    # As the SDK updates a column: GET the whole definition by its cast, change, PUT back.
    full = client.get(url + "/Microsoft.Dynamics.CRM.StringAttributeMetadata",
                      headers=AUTH).json
    body = {k: v for k, v in full.items() if not k.startswith("@odata.")}
    body["@odata.type"] = "Microsoft.Dynamics.CRM.StringAttributeMetadata"
    body["MaxLength"] = 100
    refused = client.put(url, json=body, headers={**AUTH, "MSCRM.MergeLabels": "true"})
    assert refused.status_code == 409
    assert "would cut 1 record" in refused.json["error"]["message"]
    assert sales_org.entity("account").attribute("name").maxlength == 160  # type: ignore[union-attr]
    body["MaxLength"] = 200
    widened = client.put(url, json=body, headers=AUTH)
    assert widened.status_code == 204
    assert sales_org.entity("account").attribute("name").maxlength == 200  # type: ignore[union-attr]


def test_sdk_deletes_a_table(client: FlaskClient, sales_org: OrgDb) -> None:
    assert send(client, SDK._build_create_entity("new_Tmp", {})).status_code == 204
    assert send(client, SDK._build_delete_entity(metadata_id("new_tmp"))).status_code == 204
    assert "new_tmp" not in sales_org.entities()


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("POST", "EntityDefinitions", {"SchemaName": "new_X", "Attributes": []}, 400,
     "IsPrimaryName"),
    ("POST", "EntityDefinitions", {"Attributes": []}, 400, "needs a SchemaName"),
    ("POST", "EntityDefinitions(LogicalName='account')/Attributes",
     {"@odata.type": "Microsoft.Dynamics.CRM.FileAttributeMetadata", "SchemaName": "new_F"},
     400, "FileAttributeMetadata cannot be created here"),
    ("POST", "EntityDefinitions(LogicalName='account')/Attributes",
     {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "Bad Name"},
     400, "must be 1-64 lower-case"),
    ("POST", "CreateEntities", {"Entities": []}, 400, "CreateEntities needs"),
    ("POST", "RelationshipDefinitions", {}, 400, "@odata.type"),
    ("PATCH", "EntityDefinitions(LogicalName='account')", {}, 405, "not allowed"),
    ("DELETE", "EntityDefinitions(LogicalName='nothing')", None, 404, "Could not find"),
    ("DELETE", "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='accountid')",
     None, 409, "system attribute"),
])
def test_bad_metadata_changes_are_refused_and_change_nothing(
        client: FlaskClient, sales_org: OrgDb, method: str, path: str, body: Any, status: int,
        words: str) -> None:
    before = sales_org.entities()
    answer = client.open(ROOT + path, method=method, json=body, headers=AUTH)
    assert answer.status_code == status
    assert words in answer.json["error"]["message"]
    assert sales_org.entities() == before

"""The CSDL `$metadata` reader of the `odata` backend (portal/backends/csdl_metadata.py).

Documents: tests/fixtures/odata/cap_metadata.xml (written by us in SAP CAP 9's form),
the `$metadata` odatapy 5.3.0 itself writes from our model odatapy_model.xml, an
OData v2 document, and hostile ones (entities, depth, size).
"""

from pathlib import Path

import pytest
from odatapy.edm.xml_io import XmlEdmProvider
from odatapy.server import OData
from odatapy.server.serializer.metadata import MetadataSerializer

from portal.backends import csdl_metadata
from portal.backends.csdl_metadata import CsdlLookup, CsdlService, read_csdl
from portal.errors import BackendError

FIXTURES = Path(__file__).parent / "fixtures" / "odata"


def odatapy_metadata() -> bytes:
    """The $metadata document an odatapy server of our model answers."""
    provider = XmlEdmProvider((FIXTURES / "odatapy_model.xml").read_bytes())
    edm = OData.new_instance().create_edm(provider)
    return MetadataSerializer().xml(edm, "4.0").encode()


@pytest.fixture(scope="module")
def cap() -> CsdlService:
    return read_csdl((FIXTURES / "cap_metadata.xml").read_bytes())


def test_cap_entity_sets_keys_and_types(cap: CsdlService) -> None:
    assert cap.version == "4.0"
    assert cap.entity_sets == {"Customers": "CrmService.Customers",
                               "Orders": "CrmService.Orders",
                               "Countries": "CrmService.Countries"}
    customers = cap.entity_types["CrmService.Customers"]
    assert customers.keys == ["ID"]
    assert {p.name: p.type for p in customers.properties} == {
        "ID": "uniqueidentifier", "createdAt": "datetime", "createdBy": "string",
        "modifiedAt": "datetime", "modifiedBy": "string", "name": "string",
        "status": "string", "credit": "decimal", "vip": "boolean",
        "country_code": "string"}
    name, credit = customers.property("name"), customers.property("credit")
    assert name is not None and (name.maxlength, name.nullable) == (100, False)
    assert credit is not None and (credit.precision, credit.scale) == (9, 2)
    assert cap.entity_types["CrmService.Orders"].keys == ["number"]
    number = cap.entity_types["CrmService.Orders"].property("number")
    assert number is not None and (number.type, number.edm) == ("integer", "Edm.Int32")
    assert cap.entity_types["CrmService.Countries"].keys == ["code"]


def test_cap_external_annotations_make_managed_fields_not_writable(cap: CsdlService) -> None:
    customers = cap.entity_types["CrmService.Customers"]
    writable = {p.name: (p.insertable, p.updatable) for p in customers.properties}
    assert writable["createdAt"] == writable["createdBy"] == (False, False)
    assert writable["modifiedAt"] == writable["modifiedBy"] == (False, False)
    assert writable["name"] == writable["ID"] == (True, True)
    placed = cap.entity_types["CrmService.Orders"].property("placed")
    assert placed is not None and (placed.insertable, placed.updatable) == (True, False)


def test_cap_lookups_from_referential_constraints(cap: CsdlService) -> None:
    assert cap.entity_types["CrmService.Orders"].lookups == [
        CsdlLookup("customer", "CrmService.Customers", {"customer_ID": "ID"})]
    # The collection `orders` is the other side of Orders.customer: no lookup of its own.
    assert cap.entity_types["CrmService.Customers"].lookups == [
        CsdlLookup("country", "CrmService.Countries", {"country_code": "code"})]


def test_odatapy_metadata_with_enum_alias_and_composite_key() -> None:
    service = read_csdl(odatapy_metadata())
    assert service.entity_sets == {"Companies": "Crm.Company", "Contacts": "Crm.Contact",
                                   "OrderLines": "Crm.OrderLine"}
    assert service.enums["Crm.Rating"].members == {"Cold": 1, "Warm": 2, "Hot": 3}
    company = service.entity_types["Crm.Company"]
    rating = company.property("Rating")
    assert rating is not None and (rating.type, rating.enum) == ("picklist", "Crm.Rating")
    key = company.property("Id")
    # odatapy writes the tag annotation <Annotation Term="Core.Computed"/> as String="".
    assert key is not None and (key.type, key.computed, key.insertable) == ("integer", True,
                                                                            False)
    code, modified = company.property("Code"), company.property("ModifiedOn")
    assert code is not None and (code.insertable, code.updatable) == (True, False)
    assert modified is not None and modified.computed and not modified.nullable
    revenue = company.property("Revenue")
    assert revenue is not None and (revenue.precision, revenue.scale) == (18, 4)
    contact = service.entity_types["Crm.Contact"]
    assert contact.property("Id").type == "bigint"  # type: ignore[union-attr]
    assert contact.lookups == [CsdlLookup("Company", "Crm.Company", {"CompanyId": "Id"})]
    assert service.entity_types["Crm.OrderLine"].keys == ["OrderId", "Line"]
    assert [n for n, _ in csdl_metadata.entity_types_of_sets(service)] == [
        "Companies", "Contacts", "OrderLines"]


def test_an_unknown_edm_type_is_kept_without_our_type() -> None:
    document = _v4("""<EntityType Name="T"><Key><PropertyRef Name="Id"/></Key>
        <Property Name="Id" Type="Edm.Int32" Nullable="false"/>
        <Property Name="Photo" Type="Edm.Binary"/>
        <Property Name="Tags" Type="Collection(Edm.String)"/></EntityType>
        <EntityContainer Name="C"><EntitySet Name="Ts" EntityType="N.T"/></EntityContainer>""")
    entity_type = read_csdl(document).entity_types["N.T"]
    assert [(p.name, p.type) for p in entity_type.properties] == [
        ("Id", "integer"), ("Photo", None), ("Tags", None)]


def test_odata_v2_is_refused_by_name() -> None:
    with pytest.raises(BackendError, match="OData v2 is not supported"):
        read_csdl((FIXTURES / "odata_v2_metadata.xml").read_bytes())


@pytest.mark.parametrize("document, message", [
    (b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">&lol3;</edmx:Edmx>""",
     "declares a DTD or XML entities"),
    (b"""<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:9/evil.dtd">
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"/>""",
     "declares a DTD"),
    (b'<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
     + b"<a>" * 40 + b"</a>" * 40 + b"</edmx:Edmx>", "nests deeper than 32"),
    (b"<html><body>Not here</body></html>", "not OData CSDL"),
    (b"{\"value\": []}", "not well-formed XML"),
    (b'<edmx:Edmx Version="5.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"/>',
     "CSDL version '5.0'"),
])
def test_hostile_or_wrong_documents_are_refused(document: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        read_csdl(document)


def test_a_document_over_the_size_limit_is_refused_before_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    document = (FIXTURES / "cap_metadata.xml").read_bytes()
    monkeypatch.setattr(csdl_metadata, "MAX_METADATA_BYTES", len(document) - 1)
    with pytest.raises(BackendError, match="larger than"):
        read_csdl(document)
    monkeypatch.setattr(csdl_metadata, "MAX_ELEMENTS", 20)
    monkeypatch.setattr(csdl_metadata, "MAX_METADATA_BYTES", len(document))
    with pytest.raises(BackendError, match="more than 20 elements"):
        read_csdl(document)


def test_an_entity_set_of_an_undeclared_type_is_refused() -> None:
    document = _v4('<EntityContainer Name="C"><EntitySet Name="Xs" EntityType="N.X"/>'
                   "</EntityContainer>")
    with pytest.raises(BackendError, match="Xs is of type N.X"):
        read_csdl(document)


def test_base_types_give_keys_and_properties() -> None:
    document = _v4("""<EntityType Name="Base" Abstract="true"><Key><PropertyRef Name="Id"/></Key>
        <Property Name="Id" Type="Edm.String" Nullable="false"/></EntityType>
        <EntityType Name="Person" BaseType="N.Base"><Property Name="Name" Type="Edm.String"/>
        </EntityType>
        <EntityContainer Name="C"><EntitySet Name="People" EntityType="N.Person"/>
        </EntityContainer>""")
    person = read_csdl(document).entity_types["N.Person"]
    assert person.keys == ["Id"]
    assert [p.name for p in person.properties] == ["Id", "Name"]


def _v4(schema_body: str) -> bytes:
    return (f'<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
            f'<edmx:DataServices><Schema Namespace="N" '
            f'xmlns="http://docs.oasis-open.org/odata/ns/edm">{schema_body}</Schema>'
            f"</edmx:DataServices></edmx:Edmx>").encode()

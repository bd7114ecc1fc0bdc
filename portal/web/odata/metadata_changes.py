"""Metadata changes the Dataverse way: tables and columns created through EntityDefinitions.

    POST   EntityDefinitions                          a table (EntityMetadata with Attributes)
    POST   CreateEntities                             tables ({"Entities": [...]}, as the SDK sends)
    DELETE EntityDefinitions(key)                     remove a table and its records
    POST   EntityDefinitions(key)/Attributes          a column (StringAttributeMetadata, ...)
    PUT    EntityDefinitions(key)/Attributes(key)     change a column (the whole definition)
    DELETE EntityDefinitions(key)/Attributes(key)     remove a column

Dataverse's payloads are read into our Entity / Attribute (with the same reader
the backends use for a server's EntityDefinitions) and go through
portal.orgs.schema exactly as `$customization` does: an org admin only, and a
change that would lose data is refused (409) with the reason.
"""

from typing import Any

from portal.backends.dataverse_metadata import attribute_from_definition, label_text
from portal.orgs import keys, schema
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.types import TYPES
from portal.web.odata.bodies import read_object
from portal.web.odata.customization import check_customizable
from portal.web.odata.entity_definitions import (
    find_definition,
    find_entity,
    key_definition,
    metadata_id,
    parse_path,
)
from portal.web.odata.messages import ApiRequest, ApiResponse, ProtocolError, bad_request

# "StringAttributeMetadata" (or "ComplexStringAttributeMetadata", which CreateEntities
# takes) -> Dataverse's AttributeType, for the reader: the types a column can be created as.
_ATTRIBUTE_TYPES = {t.dataverse_metadata: t.dataverse for t in TYPES.values()}


def _type_name(data: dict[str, Any]) -> str:
    odata_type = str(data.get("@odata.type") or "").lstrip("#")
    return odata_type.removeprefix("Microsoft.Dynamics.CRM.").removeprefix("Complex")


def _logical_name(data: dict[str, Any], what: str) -> str:
    name = data.get("LogicalName") or data.get("SchemaName")
    if not isinstance(name, str) or not name:
        raise bad_request(f"a {what} definition needs a SchemaName", "SchemaName")
    # Dataverse's logical name is the schema name in lower case.
    return name.lower()


def attribute_from_payload(data: Any) -> Attribute:
    """A Dataverse AttributeMetadata payload as our Attribute; 400 for what we cannot model."""
    if not isinstance(data, dict):
        raise bad_request("a column definition must be an object", "Attributes")
    name = _logical_name(data, "column")
    type_name = _type_name(data)
    kind = _ATTRIBUTE_TYPES.get(type_name) or (
        str(data["AttributeType"]) if not type_name and data.get("AttributeType") else None)
    if kind is None:
        raise bad_request(f"column {name}: {type_name or 'an untyped column'} cannot be "
                          f"created here (served: {', '.join(_ATTRIBUTE_TYPES)})", "@odata.type")
    attr = attribute_from_definition({**data, "LogicalName": name, "AttributeType": kind}, "")
    if attr is None:
        raise bad_request(f"column {name}: type {kind} cannot be created here", "@odata.type")
    return attr


def entity_from_payload(data: Any) -> Entity:
    """A Dataverse EntityMetadata payload (with Attributes) as our Entity."""
    if not isinstance(data, dict):
        raise bad_request("a table definition must be an object", "Entities")
    name = _logical_name(data, "table")
    displayname, labels = label_text(data.get("DisplayName"))
    raw = data.get("Attributes") or []
    if not isinstance(raw, list):
        raise bad_request("Attributes must be an array", "Attributes")
    attributes = [attribute_from_payload(a) for a in raw]
    primary_names = [a for a, d in zip(attributes, raw, strict=True) if d.get("IsPrimaryName")]
    if len(primary_names) != 1:
        raise bad_request(f"table {name}: exactly one attribute must have IsPrimaryName true",
                          "Attributes")
    return Entity(name, displayname, labels, primarynameattribute=primary_names[0].logicalname,
                  attributes=attributes)


def _entity_url(req: ApiRequest, entity_id: str) -> str:
    return f"{req.service_root}EntityDefinitions({entity_id})"


def create_entities(req: ApiRequest) -> ApiResponse:
    """POST CreateEntities: several tables in one schema change."""
    if req.method != "POST":
        raise ProtocolError(405, "MethodNotAllowed", "CreateEntities is an action: POST it",
                            headers={"Allow": "POST"})
    check_customizable(req)
    body = read_object(req)
    raw = body.get("Entities")
    if not isinstance(raw, list) or not raw:
        raise bad_request('CreateEntities needs "Entities": [EntityMetadata, ...]', "Entities")
    created = schema.add_entities(req.org, [entity_from_payload(e) for e in raw])
    return _created(req, created[0])


def _created(req: ApiRequest, entity: Entity) -> ApiResponse:
    return ApiResponse(204, b"", {"OData-EntityId": _entity_url(
        req, metadata_id(entity.logicalname))})


def change(req: ApiRequest, path: str) -> ApiResponse:
    """A write under EntityDefinitions (see the module docstring); 405 for any other."""
    segments = parse_path(path)
    method = req.method
    shape = [(name, key is not None) for name, key in segments]
    if shape == [("EntityDefinitions", False)] and method == "POST":
        check_customizable(req)
        return _created(req, schema.add_entity(req.org, entity_from_payload(read_object(req))))
    if segments[0][0] != "EntityDefinitions" or segments[0][1] is None:
        raise ProtocolError(405, "MethodNotAllowed", f"{method} is not allowed here",
                            headers={"Allow": "GET"})
    entity = find_entity(req, segments[0][1])
    if shape == [("EntityDefinitions", True)] and method == "DELETE":
        check_customizable(req)
        schema.remove_entity(req.org, entity.logicalname)
        return ApiResponse(204)
    if shape == [("EntityDefinitions", True), ("Attributes", False)] and method == "POST":
        check_customizable(req)
        attr = schema.add_attribute(req.org, entity.logicalname,
                                    attribute_from_payload(read_object(req)))
        url = (f"{_entity_url(req, metadata_id(entity.logicalname))}/Attributes("
               f"{metadata_id(entity.logicalname, attr.logicalname)})")
        return ApiResponse(204, b"", {"OData-EntityId": url})
    if shape == [("EntityDefinitions", True), ("Keys", False)] and method == "POST":
        check_customizable(req)
        body = read_object(req)
        names = body.get("KeyAttributes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_request("a key needs KeyAttributes: [attribute names]", "KeyAttributes")
        key = schema.add_key(req.org, entity.logicalname, str(body.get("SchemaName") or ""),
                             [n.lower() for n in names], label_text(body.get("DisplayName"))[0])
        # The entity by name, not by MetadataId: the SDK takes the first GUID in
        # parentheses of this URL as the new key's id.
        url = (f"{req.service_root}EntityDefinitions(LogicalName='{entity.logicalname}')/Keys("
               f"{key_definition(key)['MetadataId']})")
        return ApiResponse(204, b"", {"OData-EntityId": url})
    if shape == [("EntityDefinitions", True), ("Keys", True)] and method == "DELETE":
        check_customizable(req)
        found = find_definition([key_definition(k) for k in keys.keys(req.org,
                                                                     entity.logicalname)],
                                str(segments[1][1]), "LogicalName", "a key with")
        schema.remove_key(req.org, entity.logicalname, found["SchemaName"])
        return ApiResponse(204)
    if shape == [("EntityDefinitions", True), ("Attributes", True)] and method in ("PUT",
                                                                                    "DELETE"):
        check_customizable(req)
        current = _find_attribute(entity, str(segments[1][1]))
        if method == "DELETE":
            schema.remove_attribute(req.org, entity.logicalname, current.logicalname)
            return ApiResponse(204)
        new = attribute_from_payload(read_object(req))
        if new.logicalname != current.logicalname:
            raise bad_request("a column cannot be renamed", "SchemaName")
        schema.alter_attribute(req.org, entity.logicalname, new)
        return ApiResponse(204)
    raise ProtocolError(405, "MethodNotAllowed", f"{method} is not allowed on this metadata "
                                                 "resource", headers={"Allow": "GET"})


def _find_attribute(entity: Entity, key: str) -> Attribute:
    text = key.strip()
    for attr in entity.attributes:
        if text in (f"LogicalName='{attr.logicalname}'",
                    metadata_id(entity.logicalname, attr.logicalname)):
            return attr
    raise ProtocolError(404, "NotFound", f"Could not find an attribute of "
                                         f"{entity.logicalname} with {text}")

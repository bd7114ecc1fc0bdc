"""Metadata as Dataverse serves it: EntityDefinitions with their Attributes.

The shapes follow Dataverse's EntityMetadata and AttributeMetadata (Label
objects, RequiredLevel, typed attribute metadata, Targets), so one reader -
portal.backends.dataverse_metadata - reads our orgs and Dataverse alike and
gets back every field of our Entity and Attribute. Option sets are inlined
under OptionSet.Options (Dataverse needs $expand=OptionSet for that).
"""

import re
import uuid
from typing import Any

from portal.orgs.metadata import Attribute, Entity, Option
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    json_response,
)

# Our attribute type -> (AttributeType, AttributeTypeName, @odata.type of its metadata)
DATAVERSE_TYPES = {
    "uniqueidentifier": ("Uniqueidentifier", "UniqueidentifierType",
                         "UniqueIdentifierAttributeMetadata"),
    "string": ("String", "StringType", "StringAttributeMetadata"),
    "memo": ("Memo", "MemoType", "MemoAttributeMetadata"),
    "integer": ("Integer", "IntegerType", "IntegerAttributeMetadata"),
    "bigint": ("BigInt", "BigIntType", "BigIntAttributeMetadata"),
    "decimal": ("Decimal", "DecimalType", "DecimalAttributeMetadata"),
    "double": ("Double", "DoubleType", "DoubleAttributeMetadata"),
    "money": ("Money", "MoneyType", "MoneyAttributeMetadata"),
    "boolean": ("Boolean", "BooleanType", "BooleanAttributeMetadata"),
    "datetime": ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
    "picklist": ("Picklist", "PicklistType", "PicklistAttributeMetadata"),
    "lookup": ("Lookup", "LookupType", "LookupAttributeMetadata"),
}
ENTITY_FIELDS = ("MetadataId", "LogicalName", "SchemaName", "EntitySetName",
                 "PrimaryIdAttribute", "PrimaryNameAttribute", "IsIntersect", "DisplayName",
                 "Attributes")
KEY_RE = re.compile(r"^\(\s*(?:LogicalName\s*=\s*'([a-z0-9_]+)'|([0-9a-fA-F-]{36}))\s*\)$")
EXPAND_RE = re.compile(r"^Attributes(?:\(\$select=([A-Za-z0-9_,]+)\))?$")


def label(text: str | None, labels: dict[str, str]) -> dict[str, Any]:
    """A Dataverse Label: every localized label, and the display name as the user's label."""
    return {
        "LocalizedLabels": [{"Label": value, "LanguageCode": int(code)}
                            for code, value in sorted(labels.items())],
        "UserLocalizedLabel": {"Label": text, "LanguageCode": 1033} if text else None,
    }


def metadata_id(*names: str) -> str:
    """A stable MetadataId for an entity or attribute (Dataverse gives each one a GUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crm-sync:" + "/".join(names)))


def attribute_definition(entity: Entity, attr: Attribute) -> dict[str, Any]:
    """One attribute as Dataverse's AttributeMetadata."""
    kind, type_name, odata_type = DATAVERSE_TYPES[attr.type]
    is_pk = attr.logicalname == entity.primaryidattribute
    out: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{odata_type}",
        "MetadataId": metadata_id(entity.logicalname, attr.logicalname),
        "LogicalName": attr.logicalname,
        "SchemaName": attr.logicalname,
        "EntityLogicalName": entity.logicalname,
        "AttributeType": kind,
        "AttributeTypeName": {"Value": type_name},
        "DisplayName": label(attr.displayname, attr.labels),
        "RequiredLevel": {"Value": "ApplicationRequired" if attr.required else "None",
                          "CanBeChanged": not attr.issystem,
                          "ManagedPropertyLogicalName": "canmodifyrequirementsettings"},
        "IsPrimaryId": is_pk,
        "IsPrimaryName": attr.logicalname == entity.primarynameattribute,
        "IsValidForRead": True,
        # The primary id may be given on create (a client's own GUID), never changed.
        "IsValidForCreate": is_pk or not attr.issystem,
        "IsValidForUpdate": not attr.issystem,
    }
    if attr.type in ("string", "memo"):
        out["MaxLength"] = attr.maxlength
    if attr.precision is not None:
        out["Precision"] = attr.precision
    if attr.type == "lookup":
        out["Targets"] = list(attr.targets)
    if attr.type == "picklist":
        out["OptionSet"] = {"Options": [_option(o) for o in attr.options]}
    return out


def _option(option: Option) -> dict[str, Any]:
    return {"Value": option.value, "Label": label(option.label, option.labels)}


def entity_definition(entity: Entity, *, attributes: bool = False,
                      attribute_fields: list[str] | None = None) -> dict[str, Any]:
    """One entity as Dataverse's EntityMetadata, with its Attributes when expanded."""
    out: dict[str, Any] = {
        "MetadataId": metadata_id(entity.logicalname),
        "LogicalName": entity.logicalname,
        "SchemaName": entity.logicalname,
        "EntitySetName": entity.entitysetname,
        "PrimaryIdAttribute": entity.primaryidattribute,
        "PrimaryNameAttribute": entity.primarynameattribute,
        "IsIntersect": entity.isintersect,
        "DisplayName": label(entity.displayname, entity.labels),
    }
    if attributes:
        attrs = [attribute_definition(entity, a) for a in entity.attributes]
        if attribute_fields:
            keep = set(attribute_fields) | {"MetadataId", "@odata.type"}
            attrs = [{k: v for k, v in a.items() if k in keep} for a in attrs]
        out["Attributes"] = attrs
    return out


def read_entity_definitions(req: ApiRequest, key: str) -> ApiResponse:
    """GET EntityDefinitions[(LogicalName='x')] with $select and $expand=Attributes."""
    if req.method != "GET":
        raise ProtocolError(405, "MethodNotAllowed",
                            "EntityDefinitions are read-only here; change metadata through "
                            "$customization")
    unknown = [k for k in req.args if k not in ("$select", "$expand", "$format")]
    if unknown:
        raise ProtocolError(501, "NotImplemented",
                            f"{unknown[0]} is not supported on EntityDefinitions")
    select = [s.strip() for s in req.args.get("$select", "").split(",") if s.strip()]
    for name in select:
        if name not in ENTITY_FIELDS:
            raise bad_request(f"EntityDefinitions has no property {name!r}", "$select")
    expand = req.args.get("$expand", "").strip()
    attribute_fields = None
    if expand:
        match = EXPAND_RE.match(expand.replace(" ", ""))
        if not match:
            raise bad_request("only $expand=Attributes or Attributes($select=...) is supported",
                              "$expand")
        attribute_fields = match.group(1).split(",") if match.group(1) else None
    entities = list(req.org.entities().values())
    context = req.service_root + "$metadata#EntityDefinitions"
    if key:
        match = KEY_RE.match(key)
        if not match:
            raise bad_request(f"{key!r} is not LogicalName='<name>' or a MetadataId", "key")
        wanted = match.group(1) or ""
        found = [e for e in entities if e.logicalname == wanted
                 or metadata_id(e.logicalname) == (match.group(2) or "").lower()]
        if not found:
            raise ProtocolError(404, "NotFound", f"entity {wanted or match.group(2)!r} not found")
        entities = found
    values = []
    for entity in entities:
        item = entity_definition(entity, attributes=bool(expand),
                                 attribute_fields=attribute_fields)
        if select:
            keep = set(select) | {"MetadataId", "Attributes"}
            item = {k: v for k, v in item.items() if k in keep}
        values.append(item)
    if key:
        return json_response({"@odata.context": context + "/$entity", **values[0]})
    return json_response({"@odata.context": context, "value": values})

"""Metadata as Dataverse serves it: EntityDefinitions with their Attributes.

The shapes follow Dataverse's EntityMetadata and AttributeMetadata (Label
objects, RequiredLevel, typed attribute metadata, Targets), so one reader -
portal.backends.dataverse_metadata - reads our orgs and Dataverse alike and
gets back every field of our Entity and Attribute. Option sets are inlined
under OptionSet.Options (Dataverse needs $expand=OptionSet for that).
"""

import re
import uuid
from collections.abc import Callable
from typing import Any

from flask import current_app, has_app_context

from portal.orgs import keys as org_keys
from portal.orgs.metadata import Attribute, Entity, Option
from portal.orgs.relationships import names as relationship_names
from portal.orgs.types import TYPES, guid_text
from portal.web.odata import relationships
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    json_response,
)
from portal.web.odata.metadata_filter import compile_filter
from portal.web.odata.options import split_top


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


def key_definition(key: org_keys.Key) -> dict[str, Any]:
    """One alternate key as Dataverse's EntityKeyMetadata (its index is built at once)."""
    return {
        "MetadataId": metadata_id(key.entity, "key", key.schemaname.lower()),
        "SchemaName": key.schemaname,
        "LogicalName": key.schemaname.lower(),
        "EntityLogicalName": key.entity,
        "KeyAttributes": list(key.attributes),
        "DisplayName": label(key.displayname, {"1033": key.displayname}),
        "EntityKeyIndexStatus": "Active",
        "IsManaged": False,
        "IsCustomizable": {"Value": True, "CanBeChanged": True,
                           "ManagedPropertyLogicalName": "iscustomizable"},
    }


def attribute_definition(entity: Entity, attr: Attribute) -> dict[str, Any]:
    """One attribute as Dataverse's AttributeMetadata."""
    kind = TYPES[attr.type]
    is_pk = attr.logicalname == entity.primaryidattribute
    out: dict[str, Any] = {
        "@odata.type": kind.odata_type,
        "MetadataId": metadata_id(entity.logicalname, attr.logicalname),
        "LogicalName": attr.logicalname,
        "SchemaName": attr.logicalname,
        "EntityLogicalName": entity.logicalname,
        "AttributeType": kind.dataverse,
        "AttributeTypeName": {"Value": kind.dataverse_type_name},
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
    if kind.maxlength is not None:
        out["MaxLength"] = attr.maxlength
        out["FormatName"] = {"Value": "Text"}
    if attr.precision is not None:
        out["Precision"] = attr.precision
    if kind.bounds is not None and not kind.options:  # integer, bigint
        low, high = kind.bounds
        out.update(MinValue=low, MaxValue=high, Format="None")
    if attr.type == "datetime":
        # Stored and answered in UTC, to the second: Dataverse's UserLocal behaviour.
        out.update(Format="DateAndTime", DateTimeBehavior={"Value": "UserLocal"})
    if kind.targets:
        out["Targets"] = list(attr.targets)
    if kind.options:
        # Inline (Dataverse needs $expand=OptionSet), so one read gives the whole schema.
        out["OptionSet"] = option_set(entity, attr)
    return out


def option_set(entity: Entity, attr: Attribute) -> dict[str, Any]:
    """A picklist's local OptionSetMetadata, or a boolean's BooleanOptionSetMetadata."""
    common = {"MetadataId": metadata_id(entity.logicalname, attr.logicalname, "optionset"),
              "Name": f"{entity.logicalname}_{attr.logicalname}", "IsGlobal": False}
    if attr.type == "boolean":
        # Booleans carry no labels of their own here; these are Dataverse's defaults.
        return {**common, "OptionSetType": "Boolean",
                "TrueOption": {"Value": 1, "Label": label("Yes", {"1033": "Yes"})},
                "FalseOption": {"Value": 0, "Label": label("No", {"1033": "No"})}}
    return {**common, "OptionSetType": "Picklist",
            "Options": [_option(o) for o in attr.options]}


def _option(option: Option) -> dict[str, Any]:
    return {"Value": option.value, "Label": label(option.label, option.labels)}


def _tracked(entity: Entity) -> bool:
    """Change tracking is on, unless the operator lists the table in DATAVERSE_UNTRACKED_TABLES."""
    if not has_app_context():
        return True
    untracked = str(current_app.config.get("DATAVERSE_UNTRACKED_TABLES") or "")
    return entity.logicalname not in {name.strip() for name in untracked.split(",")}


def entity_definition(entity: Entity) -> dict[str, Any]:
    """One entity as Dataverse's EntityMetadata (without its navigation collections)."""
    names = {a.logicalname for a in entity.attributes}
    return {
        "MetadataId": metadata_id(entity.logicalname),
        "LogicalName": entity.logicalname,
        "SchemaName": entity.logicalname,
        "EntitySetName": entity.entitysetname,
        "LogicalCollectionName": entity.entitysetname,
        "CollectionSchemaName": entity.entitysetname,
        "PrimaryIdAttribute": entity.primaryidattribute,
        "PrimaryNameAttribute": entity.primarynameattribute,
        "IsIntersect": entity.isintersect,
        "IsActivity": entity.primaryidattribute == "activityid",
        "IsPrivate": False,
        "IsCustomEntity": "_" in entity.logicalname,
        "IsManaged": False,
        "IsLogicalEntity": False,
        "IsValidForAdvancedFind": not entity.isintersect,
        "ChangeTrackingEnabled": _tracked(entity),
        "IsOptimisticConcurrencyEnabled": True,
        "OwnershipType": "UserOwned" if "ownerid" in names else "OrganizationOwned",
        "HasActivities": False,
        "HasNotes": False,
        "DisplayName": label(entity.displayname, entity.labels),
        "DisplayCollectionName": label(entity.displayname, entity.labels),
        "Description": label(None, {}),
        "IsCustomizable": {"Value": True, "CanBeChanged": True,
                           "ManagedPropertyLogicalName": "iscustomizable"},
    }


# ---------------------------------------------------------------- queries

ENTITY_TYPE = "Microsoft.Dynamics.CRM.EntityMetadata"
ATTRIBUTE_TYPE = "Microsoft.Dynamics.CRM.AttributeMetadata"
RELATIONSHIP_TYPE = "Microsoft.Dynamics.CRM.RelationshipMetadataBase"
KEY_TYPE = "Microsoft.Dynamics.CRM.EntityKeyMetadata"
RELATIONSHIP_COLLECTIONS = ("OneToManyRelationships", "ManyToOneRelationships",
                            "ManyToManyRelationships")
ENTITY_NAVIGATIONS = ("Attributes", *RELATIONSHIP_COLLECTIONS)
ATTRIBUTE_NAVIGATIONS = ("OptionSet", "GlobalOptionSet")
CASTS = {f"Microsoft.Dynamics.CRM.{t.dataverse_metadata}": t.dataverse_metadata
         for t in TYPES.values()}
# Which of our types each attribute cast selects (Dataverse's type hierarchy, in part:
# a LookupAttributeMetadata cast also finds Customer and Owner lookups there).
CAST_TYPES = {t.dataverse_metadata: {t.name} for t in TYPES.values()}
CAST_TYPES["EnumAttributeMetadata"] = {"picklist", "boolean"}
CASTS["Microsoft.Dynamics.CRM.EnumAttributeMetadata"] = "EnumAttributeMetadata"
RELATIONSHIP_CASTS = {f"Microsoft.Dynamics.CRM.{kind}": kind
                      for kind in (relationships.ONE_TO_MANY, relationships.MANY_TO_MANY)}
SEGMENT_RE = re.compile(r"^([A-Za-z_][\w.]*)(?:\((.*)\))?$")
OPTIONS = {"$select", "$filter", "$expand", "$format"}
# Adds what $expand asks to an item: (its full definition, the item answered).
Expander = Callable[[dict[str, Any], dict[str, Any]], None]


def _not_served(what: str) -> ProtocolError:
    return ProtocolError(501, "NotImplemented", f"{what} is not served on metadata")


def parse_expand(text: str, allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """$expand=A($select=x;$filter=y),B → {"A": {"$select": "x", "$filter": "y"}, "B": {}}."""
    out: dict[str, dict[str, str]] = {}
    for item in split_top(text, ","):
        match = re.match(r"^(\w+)(?:\((.*)\))?$", item, re.S)
        if match is None or match.group(1) not in allowed:
            raise bad_request(f"$expand: {item!r} cannot be expanded here (only "
                              f"{', '.join(allowed)})", "$expand")
        options: dict[str, str] = {}
        for option in split_top(match.group(2) or "", ";"):
            name, eq, value = option.partition("=")
            if not eq or name.strip() not in ("$select", "$filter"):
                raise bad_request(f"$expand={match.group(1)}(...): only $select and $filter "
                                  "are served inside", "$expand")
            options[name.strip()] = value.strip()
        out[match.group(1)] = options
    return out


def parse_select(text: str | None, allowed: set[str], type_name: str) -> list[str]:
    """$select names, each a property of the type; 400 for one it does not have."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    for name in names:
        if name not in allowed:
            raise bad_request(f"Could not find a property named {name!r} on type "
                              f"{type_name!r}", "$select")
    return names


def _sample_properties() -> dict[str, set[str]]:
    """The properties of each metadata type, read off the definitions of a sample org.

    $select and $filter may name a property of the type even where no item has it
    (an entity without picklists still answers the picklist cast).
    """
    def names(item: dict[str, Any]) -> set[str]:
        return {k for k in item if not k.startswith("@")}

    target = Entity("sample", "Sample", {}, "sampleid", "name", "samples")
    sample = Entity("sample_link", "Link", {}, "sample_linkid", "name", "sample_links")
    pair = Entity("sample_pair", "Pair", {}, "sample_pairid", None, "sample_pairs",
                  isintersect=True, attributes=[
                      Attribute("sampleid", "lookup", targets=["sample"]),
                      Attribute("sample_linkid", "lookup", targets=["sample_link"])])
    out: dict[str, set[str]] = {}
    for kind in TYPES:
        attr = Attribute(f"a_{kind}", kind, targets=["sample"] if kind == "lookup" else [],
                         options=[Option(1, "One")] if kind == "picklist" else [])
        sample.attributes.append(attr)
        out[f"kind:{kind}"] = names(attribute_definition(sample, attr))
    out[ENTITY_TYPE] = names(entity_definition(target))
    definitions = relationships.relationship_definitions(
        {e.logicalname: e for e in (target, sample, pair)}, {})
    out[RELATIONSHIP_TYPE] = set().union(*(names(r) for r in definitions))
    for cast in RELATIONSHIP_CASTS:
        out[cast] = set().union(*(names(r) for r in definitions
                                  if r["@odata.type"] == f"#{cast}"))
    return out


_PROPERTIES: dict[str, set[str]] = {}


def type_properties(type_name: str, kinds: set[str] | None = None) -> set[str]:
    """What $select and $filter may name on a metadata type (attributes: of these kinds)."""
    if not _PROPERTIES:
        _PROPERTIES.update(_sample_properties())
    if type_name.endswith("AttributeMetadata") and type_name not in RELATIONSHIP_CASTS:
        wanted = kinds if kinds is not None else set(TYPES)
        return set().union(*(_PROPERTIES[f"kind:{k}"] for k in wanted))
    return set(_PROPERTIES.get(type_name, set()))


class Collection:
    """A metadata collection being read: its items, and how $select/$filter/$expand apply."""

    def __init__(self, items: list[dict[str, Any]], type_name: str,
                 navigations: tuple[str, ...] = (), kinds: set[str] | None = None) -> None:
        self.items = items
        self.type_name = type_name
        self.navigations = navigations
        # What $select and $filter may name: the type's properties (and any item's).
        self.properties = type_properties(type_name, kinds) | {
            k for item in items for k in item if not k.startswith("@")}

    def filtered(self, text: str | None) -> list[dict[str, Any]]:
        """The items a $filter keeps."""
        if text is None:
            return self.items
        predicate = compile_filter(text, self.properties, self.type_name)
        return [item for item in self.items if predicate(item)]

    def project(self, item: dict[str, Any], select: list[str]) -> dict[str, Any]:
        """An item with only the selected properties (and its MetadataId and @odata.type)."""
        if not select:
            return dict(item)
        keep = {*select, "MetadataId", "@odata.type"}
        return {k: v for k, v in item.items() if k in keep}


def parse_path(path: str) -> list[tuple[str, str | None]]:
    """(name, key or None) of each segment of a metadata path; 404 if it has none."""
    segments = []
    for text in path.split("/"):
        match = SEGMENT_RE.match(text)
        if match is None:
            raise ProtocolError(404, "NotFound", f"no metadata resource {path!r}")
        segments.append((match.group(1), match.group(2)))
    return segments


def handle(req: ApiRequest, path: str) -> ApiResponse:
    """GET EntityDefinitions[...] and RelationshipDefinitions[...]."""
    segments = parse_path(path)
    unknown = [k for k in req.args if k.startswith("$") and k not in OPTIONS]
    if unknown:
        raise _not_served(unknown[0])
    if segments[0][0] == "RelationshipDefinitions":
        return _relationship_definitions(req, segments)
    return _entity_definitions(req, segments)


def metadata_key(text: str) -> str | None:
    """The MetadataId a key names (a GUID, bare or in quotes), in stored form; None if none."""
    quoted = len(text) > 1 and text[0] == text[-1] == "'"
    try:
        return guid_text(text[1:-1] if quoted else text)
    except ValueError:
        return None


def find_entity(req: ApiRequest, key: str) -> Entity:
    """The entity a key names: LogicalName='x' or its MetadataId; 404 if none."""
    text = key.strip()
    match = re.match(r"^LogicalName\s*=\s*'([^']*)'$", text)
    guid = metadata_key(text)
    if match is None and guid is None:
        raise bad_request(f"{key!r} is not LogicalName='<name>' or a MetadataId", "key")
    for entity in req.org.entities().values():
        if (match and entity.logicalname == match.group(1)) or (
                guid and metadata_id(entity.logicalname) == guid):
            return entity
    raise ProtocolError(404, "NotFound", f"Could not find an entity with {text}")


def find_definition(items: list[dict[str, Any]], key: str, name_property: str, what: str
                    ) -> dict[str, Any]:
    """The item a key names: {name_property}='x' or its MetadataId; 404 if none."""
    text = key.strip()
    match = re.match(rf"^{name_property}\s*=\s*'([^']*)'$", text)
    guid = metadata_key(text)
    if match is None and guid is None:
        raise bad_request(f"{key!r} is not {name_property}='<name>' or a MetadataId", "key")
    for item in items:
        if (match and item[name_property] == match.group(1)) or (
                guid and item["MetadataId"] == guid):
            return item
    raise ProtocolError(404, "NotFound", f"Could not find {what} {text}")


def _answer(req: ApiRequest, context: str, collection: Collection, *,
            single: dict[str, Any] | None = None,
            expander: Expander | None = None) -> ApiResponse:
    """A collection (filtered) or one item, selected and expanded."""
    select = parse_select(req.args.get("$select"),
                          collection.properties | set(collection.navigations),
                          collection.type_name)
    if select:
        context += "(" + ",".join(select) + ")"
    if single is not None:
        if "$filter" in req.args:
            raise bad_request("$filter applies to collections, not to one definition",
                              "$filter")
        item = collection.project(single, select)
        if expander:
            expander(single, item)
        return json_response({"@odata.context": context + "/$entity", **item})
    values = []
    for full in collection.filtered(req.args.get("$filter")):
        item = collection.project(full, select)
        if expander:
            expander(full, item)
        values.append(item)
    return json_response({"@odata.context": context, "value": values})


def _attribute_collection(entity: Entity, cast: str | None) -> Collection:
    kinds = CAST_TYPES[cast] if cast else None
    items = [attribute_definition(entity, a) for a in entity.attributes
             if kinds is None or a.type in kinds]
    return Collection(items, f"Microsoft.Dynamics.CRM.{cast or 'AttributeMetadata'}",
                      ATTRIBUTE_NAVIGATIONS, kinds)


def _attribute_expander(entity: Entity, expand: dict[str, dict[str, str]]) -> Expander:
    """Adds OptionSet / GlobalOptionSet when $expand asks (options of local sets only)."""
    def expander(full: dict[str, Any], item: dict[str, Any]) -> None:
        attr = entity.attribute(full["LogicalName"])
        if attr is None:
            return
        has_options = attr.type in ("picklist", "boolean")
        for name, options in expand.items():
            if not has_options:
                continue
            if name == "GlobalOptionSet":
                item[name] = None  # every option set here is local to its attribute
                continue
            value = option_set(entity, attr)
            select = parse_select(options.get("$select"), set(value) | {"Options"},
                                  "Microsoft.Dynamics.CRM.OptionSetMetadataBase")
            if "$filter" in options:
                raise _not_served("$filter inside $expand=OptionSet")
            item[name] = {k: v for k, v in value.items()
                          if not select or k in select or k == "MetadataId"}
    return expander


def _attributes(req: ApiRequest, entity: Entity, rest: list[tuple[str, str | None]],
                key: str | None, base: str) -> ApiResponse:
    context = f"{base}/Attributes"
    cast: str | None = None
    if rest:
        if len(rest) > 1 or rest[0][0] not in CASTS or rest[0][1] is not None:
            raise ProtocolError(404, "NotFound", f"no metadata resource {rest[0][0]!r} under "
                                                 "Attributes")
        cast = CASTS[rest[0][0]]
        context += "/" + rest[0][0]
    expand = parse_expand(req.args.get("$expand", ""), ATTRIBUTE_NAVIGATIONS)
    collection = _attribute_collection(entity, cast)
    single = None
    if key is not None:
        everything = _attribute_collection(entity, None)
        single = find_definition(everything.items, key, "LogicalName",
                                 f"an attribute of {entity.logicalname} with")
        if cast and single["@odata.type"] != f"#Microsoft.Dynamics.CRM.{cast}" and not (
                cast == "EnumAttributeMetadata" and single["AttributeType"] in (
                    "Picklist", "Boolean")):
            raise ProtocolError(404, "NotFound", f"attribute {single['LogicalName']!r} is a "
                                                 f"{single['@odata.type'][1:]}, not a {cast}")
        collection = everything
    return _answer(req, context, collection, single=single,
                   expander=_attribute_expander(entity, expand))


def _entity_definitions(req: ApiRequest, segments: list[tuple[str, str | None]]
                        ) -> ApiResponse:
    root = req.service_root + "$metadata#"
    entities = req.org.entities()
    name, key = segments[0]
    if name != "EntityDefinitions":
        raise ProtocolError(404, "NotFound", f"no metadata resource {name!r}")
    if key is None:
        if len(segments) > 1:
            raise bad_request("a navigation of EntityDefinitions needs a key: "
                              "EntityDefinitions(LogicalName='<name>')/...")
        return _entities(req, entities, None)
    entity = find_entity(req, key)
    if len(segments) == 1:
        return _entities(req, entities, entity)
    base = f"{root}EntityDefinitions('{entity.logicalname}')"
    nav, nav_key = segments[1]
    if nav == "Attributes":
        return _attributes(req, entity, segments[2:], nav_key, base)
    if nav in RELATIONSHIP_COLLECTIONS and len(segments) == 2:
        items = relationships.of_entity(entities, relationship_names(req.org),
                                        entity.logicalname, nav)
        collection = Collection(items, RELATIONSHIP_TYPE)
        single = find_definition(items, nav_key, "SchemaName", "a relationship with") \
            if nav_key is not None else None
        if "$expand" in req.args:
            raise _not_served("$expand on relationships")
        return _answer(req, f"{base}/{nav}", collection, single=single)
    if nav == "Keys" and len(segments) == 2:
        items = [key_definition(k) for k in org_keys.keys(req.org, entity.logicalname)]
        single = find_definition(items, nav_key, "LogicalName", "a key with") \
            if nav_key is not None else None
        return _answer(req, f"{base}/Keys", Collection(items, KEY_TYPE), single=single)
    raise ProtocolError(404, "NotFound", f"EntityDefinitions have no {nav!r} here")


def _entities(req: ApiRequest, entities: dict[str, Entity], one: Entity | None
              ) -> ApiResponse:
    expand = parse_expand(req.args.get("$expand", ""), ENTITY_NAVIGATIONS)
    items = [entity_definition(e) for e in entities.values()]
    collection = Collection(items, ENTITY_TYPE, ENTITY_NAVIGATIONS)

    def expander(full: dict[str, Any], item: dict[str, Any]) -> None:
        entity = entities[full["LogicalName"]]
        for nav, options in expand.items():
            if nav == "Attributes":
                inner = _attribute_collection(entity, None)
            else:
                inner = Collection(relationships.of_entity(
                    entities, relationship_names(req.org), entity.logicalname, nav),
                    RELATIONSHIP_TYPE)
            select = parse_select(options.get("$select"), inner.properties |
                                  set(inner.navigations), inner.type_name)
            item[nav] = [inner.project(i, select) for i in inner.filtered(
                options.get("$filter"))]

    single = entity_definition(one) if one is not None else None
    return _answer(req, req.service_root + "$metadata#EntityDefinitions", collection,
                   single=single, expander=expander)


def _relationship_definitions(req: ApiRequest, segments: list[tuple[str, str | None]]
                              ) -> ApiResponse:
    items = relationships.relationship_definitions(req.org.entities(),
                                                   relationship_names(req.org))
    context = req.service_root + "$metadata#RelationshipDefinitions"
    key = segments[0][1]
    cast = None
    if len(segments) == 2 and segments[1][0] in RELATIONSHIP_CASTS and segments[1][1] is None:
        cast = RELATIONSHIP_CASTS[segments[1][0]]
        context += "/" + segments[1][0]
    elif len(segments) > 1:
        raise ProtocolError(404, "NotFound", f"RelationshipDefinitions have no "
                                             f"{segments[1][0]!r}")
    if "$expand" in req.args:
        raise _not_served("$expand on relationships")
    single = find_definition(items, key, "SchemaName", "a relationship with") \
        if key is not None else None
    if cast:
        if single is not None and single["@odata.type"] != f"#Microsoft.Dynamics.CRM.{cast}":
            raise ProtocolError(404, "NotFound", f"relationship {single['SchemaName']!r} is "
                                                 f"not a {cast}")
        items = [i for i in items if i["@odata.type"] == f"#Microsoft.Dynamics.CRM.{cast}"]
    return _answer(req, context, Collection(items, f"Microsoft.Dynamics.CRM.{cast}" if cast
                                            else RELATIONSHIP_TYPE), single=single)

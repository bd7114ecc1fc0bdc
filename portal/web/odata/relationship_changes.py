"""Relationships created and deleted the Dataverse way, through RelationshipDefinitions.

    POST   RelationshipDefinitions        OneToManyRelationshipMetadata with its Lookup
                                          (a lookup column), or ManyToManyRelationshipMetadata
                                          (an intersect entity with a lookup to each side)
    DELETE RelationshipDefinitions(key)   remove the lookup (or one of its targets), or
                                          the intersect entity and its records

As Microsoft Learn's "Create and update table relationships using the Web API"
has them; the lookup or the intersect entity is created through portal.orgs.schema
as every metadata change (an org admin only, not on a sync client org), and the
relationship keeps the schema name its client gave (portal.orgs.relationships).
Cascade settings are checked but not applied: a hosted org deletes no record
on its own (a synced copy gets the server's cascaded deletes one by one).
"""

from dataclasses import replace
from typing import Any

from portal.errors import NotFound
from portal.orgs import schema
from portal.orgs.metadata import Attribute, Entity, check_name
from portal.orgs.relationships import names as relationship_names
from portal.web.odata import relationships
from portal.web.odata.bodies import read_object
from portal.web.odata.csdl import navigation_name
from portal.web.odata.customization import check_customizable
from portal.web.odata.entity_definitions import find_definition, parse_path
from portal.web.odata.messages import ApiRequest, ApiResponse, ProtocolError, bad_request
from portal.web.odata.metadata_changes import attribute_from_payload

# Dataverse's CascadeType values (CascadeConfiguration ComplexType).
CASCADE_TYPES = {"Cascade", "NoCascade", "RemoveLink", "Restrict", "Active", "UserOwned"}
LOOKUP_TYPE = "Microsoft.Dynamics.CRM.LookupAttributeMetadata"


def _kind(body: dict[str, Any]) -> str:
    odata_type = str(body.get("@odata.type") or "").lstrip("#")
    kind = odata_type.removeprefix("Microsoft.Dynamics.CRM.")
    if kind not in (relationships.ONE_TO_MANY, relationships.MANY_TO_MANY):
        raise bad_request("a relationship needs \"@odata.type\": Microsoft.Dynamics.CRM."
                          f"{relationships.ONE_TO_MANY} or ...{relationships.MANY_TO_MANY}",
                          "@odata.type")
    return kind


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise bad_request(f"a relationship definition needs {name}", name)
    return value


def _entity(req: ApiRequest, name: str) -> Entity:
    entity = req.org.entities().get(name.lower())
    if entity is None:
        raise NotFound(f"Could not find an entity with LogicalName='{name}'", field="entity")
    return entity


def _same(body: dict[str, Any], name: str, served: str) -> None:
    """Refuse a settable property whose value differs from the only one served."""
    given = body.get(name)
    if given is not None and given != served:
        raise bad_request(f"{name} {given!r} cannot be set here: it is {served!r}", name)


def _check_cascades(body: dict[str, Any]) -> None:
    cascades = body.get("CascadeConfiguration") or {}
    if not isinstance(cascades, dict):
        raise bad_request("CascadeConfiguration must be an object", "CascadeConfiguration")
    for action, value in cascades.items():
        if not action.startswith("@") and isinstance(value, str) and value not in CASCADE_TYPES:
            raise bad_request(f"CascadeConfiguration.{action}: {value!r} is not one of "
                              f"{', '.join(sorted(CASCADE_TYPES))}", "CascadeConfiguration")


def _created(req: ApiRequest, schema_name: str) -> ApiResponse:
    url = f"{req.service_root}RelationshipDefinitions({relationships.relationship_id(schema_name)})"
    return ApiResponse(204, b"", {"OData-EntityId": url})


def create(req: ApiRequest) -> ApiResponse:
    """POST RelationshipDefinitions: a one-to-many (with its Lookup) or a many-to-many."""
    check_customizable(req)
    body = read_object(req)
    kind = _kind(body)
    schema_name = _text(body, "SchemaName")
    _check_cascades(body)
    if kind == relationships.ONE_TO_MANY:
        return _one_to_many(req, body, schema_name)
    return _many_to_many(req, body, schema_name)


def _one_to_many(req: ApiRequest, body: dict[str, Any], schema_name: str) -> ApiResponse:
    referenced = _entity(req, _text(body, "ReferencedEntity"))
    referencing = _entity(req, _text(body, "ReferencingEntity"))
    if referencing.isintersect:
        raise bad_request(f"{referencing.logicalname} is an intersect entity: it cannot "
                          "have other lookups", "ReferencingEntity")
    _same(body, "ReferencedAttribute", referenced.primaryidattribute)
    lookup = body.get("Lookup")
    if not isinstance(lookup, dict):
        raise bad_request("a one-to-many relationship needs its Lookup "
                          "(LookupAttributeMetadata)", "Lookup")
    if str(lookup.get("@odata.type") or LOOKUP_TYPE).lstrip("#") != LOOKUP_TYPE:
        raise bad_request(f"the Lookup must be a {LOOKUP_TYPE}", "Lookup")
    attr = attribute_from_payload({**lookup, "@odata.type": LOOKUP_TYPE,
                                   "Targets": [referenced.logicalname]})
    _same(body, "ReferencingAttribute", attr.logicalname)
    _same(body, "ReferencingEntityNavigationPropertyName",
          navigation_name(attr, referenced.logicalname))
    _same(body, "ReferencedEntityNavigationPropertyName", schema_name)
    schema.add_attribute(req.org, referencing.logicalname, attr, relationship=schema_name)
    return _created(req, schema_name)


def _many_to_many(req: ApiRequest, body: dict[str, Any], schema_name: str) -> ApiResponse:
    first = _entity(req, _text(body, "Entity1LogicalName"))
    second = _entity(req, _text(body, "Entity2LogicalName"))
    for side in (first, second):
        if side.isintersect:
            raise bad_request(f"{side.logicalname} is an intersect entity: it cannot take "
                              "part in a many-to-many relationship", "Entity1LogicalName")
    intersect = check_name(str(body.get("IntersectEntityName") or schema_name).lower(),
                           "IntersectEntityName")
    for name in ("Entity1NavigationPropertyName", "Entity2NavigationPropertyName"):
        _same(body, name, schema_name)
    # Dataverse's intersect attributes: each side's primary id; a relationship of an
    # entity with itself has {id}one and {id}two.
    names = [first.primaryidattribute, second.primaryidattribute]
    if first.logicalname == second.logicalname:
        names = [names[0] + "one", names[0] + "two"]
    _same(body, "Entity1IntersectAttribute", names[0])
    _same(body, "Entity2IntersectAttribute", names[1])
    entity = Entity(intersect, schema_name, {"1033": schema_name}, isintersect=True,
                    attributes=[Attribute(name, "lookup", side.displayname or side.logicalname,
                                          targets=[side.logicalname], required=True)
                                for name, side in zip(names, (first, second), strict=True)])
    schema.add_entity(req.org, entity, relationship=schema_name)
    return _created(req, schema_name)


def change(req: ApiRequest, path: str) -> ApiResponse:
    """A write on RelationshipDefinitions: POST creates, DELETE removes; PUT is not served."""
    segments = parse_path(path)
    if len(segments) > 1:
        raise ProtocolError(405, "MethodNotAllowed", f"{req.method} is not allowed here",
                            headers={"Allow": "GET"})
    key = segments[0][1]
    if key is None and req.method == "POST":
        return create(req)
    if key is not None and req.method == "DELETE":
        return delete(req, key)
    if key is not None and req.method == "PUT":
        raise ProtocolError(501, "NotImplemented", "updating a relationship is not served: "
                                                   "its menus and cascades are not kept here")
    raise ProtocolError(405, "MethodNotAllowed", f"{req.method} is not allowed here",
                        headers={"Allow": "GET, POST" if key is None else "GET, DELETE"})


def delete(req: ApiRequest, key: str) -> ApiResponse:
    """DELETE RelationshipDefinitions(key): its lookup (or that target), or its intersect."""
    check_customizable(req)
    entities = req.org.entities()
    found = find_definition(relationships.relationship_definitions(
        entities, relationship_names(req.org)), key, "SchemaName", "a relationship with")
    if found["RelationshipType"] == relationships.MANY_TO_MANY.removesuffix("Metadata"):
        schema.remove_entity(req.org, found["IntersectEntityName"])
        return ApiResponse(204)
    entity = entities[found["ReferencingEntity"]]
    attr = entity.attribute(found["ReferencingAttribute"])
    assert attr is not None  # the relationship was derived from it
    target = found["ReferencedEntity"]
    if attr.targets == [target]:
        schema.remove_attribute(req.org, entity.logicalname, attr.logicalname)
    else:  # one target of a multi-table lookup: refused if records point to it
        schema.alter_attribute(req.org, entity.logicalname, replace(
            attr, targets=[t for t in attr.targets if t != target]))
    return ApiResponse(204)

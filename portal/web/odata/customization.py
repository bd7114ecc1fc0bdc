"""Customization of an org through the API: add, change and remove entities and attributes.

    GET    $customization/entities                     every entity definition
    POST   $customization/entities                     add an entity (our JSON form)
    GET    $customization/entities/{name}              one entity definition
    PATCH  $customization/entities/{name}              displayname, labels, primarynameattribute
    DELETE $customization/entities/{name}              remove the entity and its records
    POST   $customization/entities/{name}/attributes   add an attribute
    PATCH  $customization/entities/{name}/attributes/{attr}   change an attribute
    DELETE $customization/entities/{name}/attributes/{attr}   remove an attribute

Changes go through portal.orgs.schema, which refuses (409) what would lose
data; $metadata and EntityDefinitions show them at once, because the org's
derived caches are keyed on its metadata version.
"""

from typing import Any

from portal.orgs import schema
from portal.orgs.metadata import attribute_from_dict, entity_from_dict, to_dict
from portal.web.odata.bodies import read_object
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    json_response,
)
from portal.web.odata.options import check_options

ENTITY_CHANGES = ("displayname", "labels", "primarynameattribute")


def check_customizable(req: ApiRequest) -> None:
    """Refuse customization the caller or the org may not make.

    Only an org admin may change metadata, and not of an org that is the client
    of a connection (its metadata comes from the server): 409 with the reason.
    """
    if not req.user.get("is_admin"):
        raise ProtocolError(403, "Forbidden", "only an org admin may change its metadata")
    schema.check_customizable(req.org)


def handle(req: ApiRequest, rest: str) -> ApiResponse:
    """Route a $customization request."""
    check_options(req.args, set())
    parts = rest.split("/") if rest else []
    if not parts or parts[0] != "entities" or len(parts) > 4:
        raise ProtocolError(404, "NotFound", "use $customization/entities[/{name}"
                                             "[/attributes[/{attribute}]]]")
    method = req.method
    if method == "GET":
        return _read(req, parts)
    check_customizable(req)
    org = req.org
    if len(parts) == 1 and method == "POST":
        entity = schema.add_entity(org, entity_from_dict(read_object(req)))
        return json_response(to_dict(entity), 201)
    if len(parts) == 2 and method == "PATCH":
        body = read_object(req)
        unknown = [k for k in body if k not in ENTITY_CHANGES]
        if unknown:
            raise bad_request(f"an entity's {unknown[0]} cannot be changed here "
                              f"(only {', '.join(ENTITY_CHANGES)})", unknown[0])
        for name in ("displayname", "primarynameattribute"):
            if name in body and not isinstance(body[name], str):
                raise bad_request(f"{name} must be text", name)
        entity = schema.update_entity(org, parts[1], **body)
        return json_response(to_dict(entity))
    if len(parts) == 2 and method == "DELETE":
        schema.remove_entity(org, parts[1])
        return ApiResponse(204)
    if len(parts) == 3 and parts[2] == "attributes" and method == "POST":
        attr = schema.add_attribute(org, parts[1], attribute_from_dict(read_object(req)))
        return json_response(to_dict(attr), 201)
    if len(parts) == 4 and parts[2] == "attributes" and method == "PATCH":
        current = org.entity(parts[1]).attribute(parts[3])
        if current is None:
            raise ProtocolError(404, "NotFound", f"{parts[1]} has no attribute {parts[3]!r}")
        body = read_object(req)
        if body.get("logicalname", parts[3]) != parts[3]:
            raise bad_request("an attribute cannot be renamed", "logicalname")
        merged: dict[str, Any] = {**to_dict(current), **body}
        attr = schema.alter_attribute(org, parts[1], attribute_from_dict(merged))
        return json_response(to_dict(attr))
    if len(parts) == 4 and parts[2] == "attributes" and method == "DELETE":
        schema.remove_attribute(org, parts[1], parts[3])
        return ApiResponse(204)
    raise ProtocolError(405, "MethodNotAllowed", f"{method} is not allowed on this resource")


def _read(req: ApiRequest, parts: list[str]) -> ApiResponse:
    if len(parts) == 1:
        return json_response({"value": [to_dict(e) for e in req.org.entities().values()]})
    entity = req.org.entity(parts[1])
    if len(parts) == 2:
        return json_response(to_dict(entity))
    if parts[2] != "attributes":
        raise ProtocolError(404, "NotFound", "no such resource")
    if len(parts) == 3:
        return json_response({"value": [to_dict(a) for a in entity.attributes]})
    attr = entity.attribute(parts[3])
    if attr is None:
        raise ProtocolError(404, "NotFound", f"{parts[1]} has no attribute {parts[3]!r}")
    return json_response(to_dict(attr))

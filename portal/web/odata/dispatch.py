"""URL → handler for one OData request relative to an org's service root."""

import re

from flask import current_app

from portal.errors import PortalError
from portal.web.odata import (
    actions,
    associations,
    batch,
    collections,
    customization,
    entities,
    entity_definitions,
    functions,
    metadata_changes,
    relationship_changes,
)
from portal.web.odata.csdl import metadata_document
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    json_response,
    portal_error_response,
)
from portal.web.odata.options import check_options

RESOURCE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?$")
METADATA_RE = re.compile(r"^(EntityDefinitions|RelationshipDefinitions)(?:[(/]|$)")
SET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def dispatch(req: ApiRequest) -> ApiResponse:
    """Answer one request; refusals become OData error bodies, never exceptions."""
    try:
        return route(req)
    except PortalError as error:
        return portal_error_response(error, req.error_codes)


def not_allowed(method: str, allowed: str) -> ProtocolError:
    """405 naming the methods a resource accepts."""
    return ProtocolError(405, "MethodNotAllowed", f"{method} is not allowed here",
                         headers={"Allow": allowed})


def route(req: ApiRequest) -> ApiResponse:
    """Find the handler of a resource path and run it."""
    path, method = req.path, req.method
    if path in ("", "/"):
        if method != "GET":
            raise not_allowed(method, "GET")
        return service_document(req)
    if path == "$metadata":
        if method != "GET":
            raise not_allowed(method, "GET")
        return ApiResponse(200, metadata_document(req.org, req.dialect),
                           {"Content-Type": "application/xml; charset=utf-8"})
    if path == "$batch":
        if method != "POST":
            raise not_allowed(method, "POST")
        return batch.run_batch(req, dispatch, current_app.logger)
    if path == "$customization" or path.startswith("$customization/"):
        return customization.handle(req, path[len("$customization"):].strip("/"))
    if METADATA_RE.match(path):
        if method == "GET":
            return entity_definitions.handle(req, path)
        if path.startswith("RelationshipDefinitions"):
            return relationship_changes.change(req, path)
        return metadata_changes.change(req, path)
    if path == "CreateEntities":
        return metadata_changes.create_entities(req)
    if req.dialect.functions and path in functions.FUNCTIONS:
        if method != "GET":
            raise not_allowed(method, "GET")
        return functions.whoami(req)
    bound = actions.bound_action(path) if req.dialect.functions else None
    if bound is not None:
        return actions.run(req, req.org.entity_by_set(bound[0]), bound[1])
    if path.endswith("/$count") and SET_RE.match(path[:-len("/$count")]):
        if method != "GET":
            raise not_allowed(method, "GET")
        return collections.count_collection(req, req.org.entity_by_set(path[:-len("/$count")]))
    if req.dialect.associations and path.endswith("/$ref"):
        return associations.handle(req, path)
    match = RESOURCE_RE.match(path)
    if match is None:
        raise ProtocolError(404, "NotFound", f"no resource {path!r} in this service")
    entity = req.org.entity_by_set(match.group(1))
    key = match.group(2)
    if req.dialect.associations and entity.isintersect and method in ("POST", "PATCH",
                                                                      "DELETE"):
        raise associations.refuse_intersect_write(method, entity)
    if key is None:
        if method == "GET":
            return collections.read_collection(req, entity)
        if method == "POST":
            return entities.create(req, entity)
        raise not_allowed(method, "GET, POST")
    if method == "GET":
        return entities.read_record(req, entity, key)
    if method == "PATCH":
        return entities.upsert(req, entity, key)
    if method == "DELETE":
        return entities.delete(req, entity, key)
    raise not_allowed(method, "GET, PATCH, DELETE")


def service_document(req: ApiRequest) -> ApiResponse:
    """The service document: every entity set of the org."""
    check_options(req.args, {"$format"})
    return json_response({
        "@odata.context": req.service_root + "$metadata",
        "value": [{"name": e.entitysetname, "kind": "EntitySet", "url": e.entitysetname}
                  for e in req.org.entities().values()],
    })

"""Single records: read by key, create (POST), upsert (PATCH) and delete, with ETags.

Every write goes through portal.orgs.records - the one write path, where the
sync engine will record offline transactions.
"""

from typing import Any

import orjson

from portal.errors import AlreadyExists
from portal.orgs import keys as org_keys
from portal.orgs import queries, records
from portal.orgs.metadata import Entity
from portal.orgs.types import TYPES, new_guid, normalize_guid
from portal.web.odata import shapes
from portal.web.odata.bodies import read_object, record_values
from portal.web.odata.etags import etag, parse_if_match
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ErrorKind,
    ProtocolError,
    bad_request,
    raw_json_response,
)
from portal.web.odata.options import check_options, logical_name, parse_select, split_top
from portal.web.odata.prefer import parse_prefer


def parse_key(entity: Entity, key: str) -> str:
    """The record id in `(<guid>)`, `(<pk>=<guid>)` or `('<guid>')`; 400 if it is no GUID."""
    text = key.strip()
    pk = entity.primaryidattribute
    if text.startswith(pk + "="):
        text = text[len(pk) + 1:].strip()
    return normalize_guid(text.strip("'"), pk)


def alternate_key_values(req: ApiRequest, entity: Entity, key: str) -> dict[str, Any] | None:
    """The values of `(name='x'[,other=2])` when they are one of the entity's alternate keys.

    None for a primary id key; 400 for names that are no defined key of the entity.
    """
    parts = split_top(key, ",")
    pairs = [p.partition("=") for p in parts]
    if not pairs or any(not eq for _, eq, _ in pairs) or (
            len(pairs) == 1 and pairs[0][0].strip() == entity.primaryidattribute):
        return None
    values: dict[str, Any] = {}
    for name, _, text in pairs:
        attr = entity.attribute(logical_name(entity, name.strip()))
        if attr is None:
            raise bad_request(f"{entity.logicalname} has no attribute {name.strip()!r}", "key")
        raw = text.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            raw = raw[1:-1].replace("''", "'")
        try:
            values[attr.logicalname] = TYPES[attr.type].filter_value(raw)
        except (ValueError, TypeError):
            raise bad_request(f"{raw!r} is not a valid {attr.type} value for "
                              f"{attr.logicalname}", "key") from None
    defined = [set(k.attributes) for k in org_keys.keys(req.org, entity.logicalname)]
    if set(values) not in defined:
        raise bad_request(f"{', '.join(values)} is not an alternate key of "
                          f"{entity.logicalname} (its keys: "
                          f"{'; '.join(', '.join(sorted(k)) for k in defined) or 'none'})", "key")
    return values


def record_id_of(req: ApiRequest, entity: Entity, key: str) -> tuple[str | None, dict[str, Any]]:
    """(the record id a key names, or None if no record has its alternate key values; those)."""
    values = alternate_key_values(req, entity, key)
    if values is None:
        return parse_key(entity, key), {}
    return org_keys.find_record(req.org, entity.logicalname, entity.primaryidattribute,
                                values), values


def existing_record_id(req: ApiRequest, entity: Entity, key: str) -> str:
    """The id of the record a key names; 404 if an alternate key names none."""
    record_id, values = record_id_of(req, entity, key)
    if record_id is None:
        raise ProtocolError(404, "NotFound", f"no {entity.logicalname} with "
                            f"{', '.join(f'{k}={v!r}' for k, v in values.items())}")
    return record_id


def entity_url(req: ApiRequest, entity: Entity, record_id: str) -> str:
    """The canonical URL of a record."""
    return f"{req.service_root}{entity.entitysetname}({record_id})"


def record_body(req: ApiRequest, entity: Entity, record: dict[str, Any]) -> bytes:
    """A record written by the data layer as an OData entity body, in the dialect's shape."""
    keys = shapes.json_keys(entity, req.dialect)
    shaped = {keys.get(name, name): value for name, value in record.items()}
    shape = shapes.Shape(shapes.parse_annotations(
        parse_prefer(req.headers.getlist("Prefer")).include_annotations, req.dialect))
    [shaped] = shapes.shape_records(req.org, entity, [shaped], shape, req.dialect)
    return orjson.dumps({
        "@odata.context": f"{req.service_root}$metadata#{entity.entitysetname}/$entity",
        "@odata.etag": etag(record["versionnumber"]),
        **shaped})


def write_headers(req: ApiRequest, entity: Entity, record: dict[str, Any]) -> dict[str, str]:
    """Headers of a write's answer: the record's ETag and address."""
    url = entity_url(req, entity, record[entity.primaryidattribute])
    return {"ETag": etag(record["versionnumber"]), "OData-EntityId": url}


def read_record(req: ApiRequest, entity: Entity, key: str) -> ApiResponse:
    """GET /{set}(<id>) with $select; 304 when If-None-Match names the current version."""
    check_options(req.args, {"$select", "$format"} | ({"$expand"} if req.dialect.expand
                                                      else set()))
    record_id = existing_record_id(req, entity, key)
    names = parse_select(req.args.get("$select"), entity)
    keys = shapes.json_keys(entity, req.dialect)
    prefs = parse_prefer(req.headers.getlist("Prefer"))
    shape = shapes.Shape(
        shapes.parse_annotations(prefs.include_annotations, req.dialect),
        shapes.parse_expand(req.args.get("$expand"), entity, req.org, req.dialect))
    found = queries.record_json(req.org, entity, shape.columns(names, keys), record_id, keys)
    if found is None:
        raise ProtocolError(404, "NotFound", f"{entity.logicalname} {record_id} does not exist")
    text, version = found
    if shape.needed:
        [record] = shapes.shape_records(req.org, entity, [orjson.loads(text)], shape,
                                        req.dialect)
        text = orjson.dumps(record).decode()
    headers = {"ETag": etag(version)}
    if shape.annotations:
        headers["Preference-Applied"] = f'odata.include-annotations="{prefs.include_annotations}"'

    if req.headers.get("If-None-Match") in (etag(version), "*"):
        return ApiResponse(304, b"", headers)
    select = req.args.get("$select")
    context = (f"{req.service_root}$metadata#{entity.entitysetname}"
               f"{'(' + select.replace(' ', '') + ')' if select else ''}/$entity")
    body = b'{"@odata.context":' + orjson.dumps(context) + b"," + text[1:].encode()
    return raw_json_response(body, headers=headers)


def create(req: ApiRequest, entity: Entity) -> ApiResponse:
    """POST /{set}: create a record, with the client's own id if it sends one (409 if taken)."""
    check_options(req.args, {"$select", "$format"})
    values = record_values(req, entity, read_object(req))
    pk = entity.primaryidattribute
    record = records.create_record(req.org, entity.logicalname, values,
                                   record_id=values.get(pk))
    return _answer(req, entity, record, created=True)


def upsert(req: ApiRequest, entity: Entity, key: str) -> ApiResponse:
    """PATCH /{set}(<id>): update or create as Dataverse does, honouring If-Match/If-None-Match."""
    check_options(req.args, {"$select", "$format"})
    found_id, key_values = record_id_of(req, entity, key)
    record_id = found_id or new_guid()  # an alternate key of no record: create one with it
    match_any, version = parse_if_match(req.headers.get("If-Match"))
    none_match = req.headers.get("If-None-Match")
    if none_match is not None and none_match.strip() != "*":
        raise bad_request("If-None-Match on a write supports only *", "If-None-Match")
    if match_any and none_match is not None:
        raise bad_request("If-Match and If-None-Match cannot both be given")
    mode = "update" if match_any else "create" if none_match is not None else "upsert"
    values = {**record_values(req, entity, read_object(req)), **key_values}
    try:
        record, created = records.upsert_record(req.org, entity.logicalname, record_id, values,
                                                mode=mode, if_version=version)
    except AlreadyExists:
        raise ProtocolError(412, "PreconditionFailed",
                            f"{entity.logicalname} {record_id} exists already "
                            "(If-None-Match: *)", kind=ErrorKind.DUPLICATE_PRECONDITION) from None
    return _answer(req, entity, record, created=created)


def delete(req: ApiRequest, entity: Entity, key: str) -> ApiResponse:
    """DELETE /{set}(<id>): remove the record, leaving a tombstone for delta readers."""
    check_options(req.args, set())
    record_id = existing_record_id(req, entity, key)
    _, version = parse_if_match(req.headers.get("If-Match"))
    records.delete_record(req.org, entity.logicalname, record_id, if_version=version)
    return ApiResponse(204)


def _answer(req: ApiRequest, entity: Entity, record: dict[str, Any], *, created: bool
            ) -> ApiResponse:
    """201 with the record for a create, 204 for an update; Prefer: return=… overrides."""
    prefer = parse_prefer(req.headers.getlist("Prefer")).return_
    headers = write_headers(req, entity, record)
    if created:
        headers["Location"] = headers["OData-EntityId"]
    wants_body = prefer == "representation" or (
        created and req.dialect.create_returns_record and prefer != "minimal")
    if prefer:
        headers["Preference-Applied"] = f"return={prefer}"
    if not wants_body:
        return ApiResponse(204, b"", headers)
    return raw_json_response(record_body(req, entity, record), 201 if created else 200, headers)

"""Request bodies of writes: JSON only, annotations stripped, @odata.bind turned into lookups."""

import re
from typing import Any

import orjson

from portal.orgs.metadata import Entity
from portal.orgs.types import normalize_guid
from portal.web.odata.csdl import navigations
from portal.web.odata.messages import ApiRequest, ProtocolError, bad_request

BIND_RE = re.compile(r"^/?([A-Za-z_][A-Za-z0-9_]*)\((.+)\)$")


def read_json(req: ApiRequest) -> Any:
    """The decoded JSON body; 415 for another content type, 400 for invalid JSON."""
    mime = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if mime != "application/json":
        raise ProtocolError(415, "UnsupportedMediaType",
                            f"the body must be application/json, not {mime or 'missing'}")
    try:
        return orjson.loads(req.body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


def read_object(req: ApiRequest) -> dict[str, Any]:
    """A JSON object body."""
    data = read_json(req)
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def record_values(req: ApiRequest, entity: Entity, data: dict[str, Any]) -> dict[str, Any]:
    """A record's values from a body: annotations dropped, `nav@odata.bind` set as lookups."""
    values: dict[str, Any] = {}
    binds: dict[str, Any] = {}
    for key, value in data.items():
        if "@" not in key:
            values[key] = value
        elif key.endswith("@odata.bind"):
            binds[key[: -len("@odata.bind")]] = value
    if binds:
        values.update(_binds(req, entity, binds))
    return values


def _binds(req: ApiRequest, entity: Entity, binds: dict[str, Any]) -> dict[str, Any]:
    """Lookups set the Dataverse way: "parentcustomerid_account@odata.bind": "/accounts(<id>)"."""
    entities = req.org.entities()
    targets: dict[str, tuple[str, list[str]]] = {}
    for name, attr, target in navigations(entity, entities):
        targets[name] = (attr.logicalname, [target])
    for attr in entity.attributes:
        if attr.type == "lookup":
            targets.setdefault(attr.logicalname, (attr.logicalname, list(attr.targets)))
    out: dict[str, Any] = {}
    for name, value in binds.items():
        if name not in targets:
            raise bad_request(f"{name}@odata.bind: {entity.logicalname} has no navigation "
                              f"property {name!r}", name)
        lookup, allowed = targets[name]
        if value is None:
            out[lookup] = None
            continue
        text = value[len(req.service_root):] if isinstance(value, str) and \
            value.startswith(req.service_root) else value
        match = BIND_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise bad_request(f"{name}@odata.bind must be like /<entityset>(<id>)", name)
        sets = {entities[t].entitysetname: t for t in allowed if t in entities}
        if match.group(1) not in sets:
            raise bad_request(f"{name}@odata.bind must point to {' or '.join(sets)}", name)
        out[lookup] = normalize_guid(match.group(2).strip("'"), lookup)
    return out

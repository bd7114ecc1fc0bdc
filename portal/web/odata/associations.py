"""N:N rows as Dataverse writes them: associating and disassociating two records by `$ref`.

Dataverse keeps an N:N relationship's rows in its intersect table but never
lets a client write that table: `POST {set}({id})/{navigation}/$ref` with the
other record's `@odata.id` associates the two (the server makes the row, with
an id of its own), and `DELETE {set}({id})/{navigation}({other})/$ref`
disassociates them (associate-disassociate-entities-using-web-api.md). The
Dataverse root does the same, so its clients meet the ids Dataverse gives;
the navigation of an N:N is named after its intersect table on both sides
(relationships.many_to_many).
"""

import re

from portal.orgs import records
from portal.orgs.metadata import Attribute, Entity
from portal.web.odata.bodies import read_object
from portal.web.odata.entities import parse_key
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ErrorKind,
    ProtocolError,
    bad_request,
)

REF_RE = re.compile(r"^([A-Za-z_]\w*)\(([^)]*)\)/([A-Za-z_]\w*)(?:\(([^)]*)\))?/\$ref$")
ID_RE = re.compile(r"/([A-Za-z_]\w*)\(([^)]*)\)$")


def refuse_intersect_write(method: str, entity: Entity) -> ProtocolError:
    """Dataverse's answer to a direct write of an N:N row: associate the two records instead."""
    verb = {"POST": "Create", "PATCH": "Create", "DELETE": "Delete"}.get(method, method)
    return ProtocolError(400, "BadRequest", f"The '{verb}' method does not support entities "
                         f"of type '{entity.logicalname}' (an intersect table): associate or "
                         "disassociate its two records through $ref",
                         kind=ErrorKind.BAD_REQUEST)


def handle(req: ApiRequest, path: str) -> ApiResponse:
    """POST …/{navigation}/$ref associates; DELETE …/{navigation}({other})/$ref disassociates."""
    match = REF_RE.match(path)
    if match is None:
        raise ProtocolError(404, "NotFound", f"no resource {path!r} in this service")
    entity = req.org.entity_by_set(match.group(1))
    record_id = parse_key(entity, match.group(2))
    intersect, own, other = _sides(req, entity, match.group(3))
    if req.method == "POST" and match.group(4) is None:
        target = str(read_object(req).get("@odata.id") or "")
        found = ID_RE.search(target)
        if found is None or req.org.entity_by_set(found.group(1)).logicalname != \
                other.targets[0]:
            raise bad_request(f"@odata.id must name a record of {other.targets[0]}",
                              "@odata.id")
        other_id = parse_key(req.org.entity(other.targets[0]), found.group(2))
        if _rows(req, intersect, own, record_id, other, other_id):
            raise ProtocolError(400, "BadRequest", "Cannot insert duplicate key: the records "
                                "are associated already", kind=ErrorKind.DUPLICATE)
        _get(req, other.targets[0], other_id)  # 404 for a record that does not exist
        records.create_record(req.org, intersect.logicalname,
                              {own.logicalname: record_id, other.logicalname: other_id})
        return ApiResponse(204)
    if req.method == "DELETE" and match.group(4) is not None:
        other_id = parse_key(req.org.entity(other.targets[0]), match.group(4))
        rows = _rows(req, intersect, own, record_id, other, other_id)
        if not rows:
            raise ProtocolError(404, "NotFound", "the records are not associated")
        records.delete_records(req.org, intersect.logicalname, rows)
        return ApiResponse(204)
    raise ProtocolError(405, "MethodNotAllowed", f"{req.method} is not allowed here",
                        headers={"Allow": "POST, DELETE"})


def _sides(req: ApiRequest, entity: Entity, navigation: str
           ) -> tuple[Entity, Attribute, Attribute]:
    """The intersect table of an N:N navigation, its lookup to `entity`, and the other one."""
    intersect = req.org.entities().get(navigation)
    lookups = [a for a in intersect.attributes if a.type == "lookup" and len(a.targets) == 1] \
        if intersect is not None and intersect.isintersect else []
    own = next((a for a in lookups if a.targets[0] == entity.logicalname), None)
    other = next((a for a in lookups if a is not own), None)
    if intersect is None or own is None or other is None or len(lookups) != 2:
        raise ProtocolError(404, "NotFound", f"{entity.entitysetname} has no N:N navigation "
                            f"{navigation!r}")
    return intersect, own, other


def _rows(req: ApiRequest, intersect: Entity, own: Attribute, record_id: str,
          other: Attribute, other_id: str) -> list[str]:
    """The ids of the intersect rows joining the two records."""
    return [row[0] for row in req.org.db.execute(
        f"SELECT [{intersect.primaryidattribute}] FROM [{intersect.logicalname}] "
        f"WHERE [{own.logicalname}] = ? AND [{other.logicalname}] = ?",
        [record_id, other_id]).fetchall()]


def _get(req: ApiRequest, entity_name: str, record_id: str) -> None:
    if records.get_record(req.org, entity_name, record_id) is None:
        raise ProtocolError(404, "NotFound", f"{entity_name} {record_id} does not exist")

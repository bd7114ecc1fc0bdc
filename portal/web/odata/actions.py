"""Dataverse's bulk actions bound to an entity set: CreateMultiple, UpdateMultiple, UpsertMultiple.

Microsoft Learn, "Use bulk operation messages" (bulk-operations.md): POST
`{set}/Microsoft.Dynamics.CRM.CreateMultiple` with `{"Targets": [records]}`
answers `{"Ids": [...]}`; UpdateMultiple and UpsertMultiple take the same
body. Each action is all-or-nothing: every record goes through the one write
path (portal.orgs.records) inside one transaction, so a refused record leaves
nothing written. Upserted targets name their record by the primary id, in the
body or in `@odata.id` (`accounts(accountid='<guid>')`).
"""

import re
from typing import Any

from portal.db import immediate
from portal.errors import PortalError
from portal.orgs import keys as org_keys
from portal.orgs import records
from portal.orgs.metadata import Entity
from portal.orgs.types import TYPES, new_guid
from portal.web.odata.bodies import read_object, record_values
from portal.web.odata.entities import record_id_of
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    json_response,
)
from portal.web.odata.options import check_options

NAMESPACE = "Microsoft.Dynamics.CRM."
ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
MAX_TARGETS = 1000  # as a $batch
ODATA_ID_RE = re.compile(r"^(?:.*/)?([A-Za-z_][A-Za-z0-9_]*)\((.+)\)$")


def bound_action(path: str) -> tuple[str, str] | None:
    """(entity set, action) when a path names one of these actions, else None."""
    set_name, _, action = path.partition("/")
    if action.startswith(NAMESPACE) and action[len(NAMESPACE):] in ACTIONS:
        return set_name, action[len(NAMESPACE):]
    return None


def run(req: ApiRequest, entity: Entity, action: str) -> ApiResponse:
    """POST {set}/Microsoft.Dynamics.CRM.<action>: all targets written, or none."""
    if req.method != "POST":
        raise ProtocolError(405, "MethodNotAllowed", f"{action} is called with POST",
                            headers={"Allow": "POST"})
    check_options(req.args, set())
    targets = read_object(req).get("Targets")
    if not isinstance(targets, list) or not targets or \
            not all(isinstance(t, dict) for t in targets):
        raise bad_request(f"{action} needs \"Targets\": a non-empty list of records", "Targets")
    if len(targets) > MAX_TARGETS:
        raise bad_request(f"{action} takes at most {MAX_TARGETS} targets, not {len(targets)}",
                          "Targets")
    pk = entity.primaryidattribute
    ids = []
    with immediate(req.org.db):
        for index, target in enumerate(targets):
            values = record_values(req, entity, target)
            try:
                if action == "CreateMultiple":
                    record = records.create_record(req.org, entity.logicalname, values,
                                                   record_id=values.get(pk))
                else:
                    named, key_values = _odata_id(req, entity, target)
                    values = {**values, **key_values}  # a new record takes its key's values
                    record_id = values.get(pk) or named or (
                        _by_alternate_key(req, entity, values)
                        if action == "UpsertMultiple" else None)
                    if not record_id:
                        raise bad_request(f"{action}: target {index} names no {pk}", pk)
                    record, _ = records.upsert_record(
                        req.org, entity.logicalname, record_id, values,
                        mode="update" if action == "UpdateMultiple" else "upsert")
            except PortalError as error:
                error.message = f"Targets[{index}]: {error.message}"
                raise
            ids.append(record[pk])
    if action == "CreateMultiple":
        return json_response({
            "@odata.context": f"{req.service_root}$metadata#{NAMESPACE}CreateMultipleResponse",
            "Ids": ids})
    return ApiResponse(204)


def _by_alternate_key(req: ApiRequest, entity: Entity, values: dict[str, Any]) -> str | None:
    """The record an upsert target names by an alternate key's values (a new id if none)."""
    for key in org_keys.keys(req.org, entity.logicalname):
        if all(values.get(name) is not None for name in key.attributes):
            try:  # the stored form of each value (GUIDs lower case, date-times in UTC)
                stored = {name: TYPES[attr.type].filter_value(values[name]) for name in
                          key.attributes if (attr := entity.attribute(name)) is not None}
            except (ValueError, TypeError):
                return None  # the write itself refuses the value, naming it
            found = org_keys.find_record(req.org, entity.logicalname, entity.primaryidattribute,
                                         stored)
            return found or new_guid()
    return None


def _odata_id(req: ApiRequest, entity: Entity, target: dict[str, Any]
              ) -> tuple[str | None, dict[str, Any]]:
    """(record id, alternate key values) a target's `@odata.id` names: `accounts(<guid>)`,
    `(pk='<guid>')`, or an alternate key `(accountnumber='A1')` (its record, else a new id)."""
    value = target.get("@odata.id")
    if not isinstance(value, str):
        return None, {}
    match = ODATA_ID_RE.match(value)
    if match is None or match.group(1) != entity.entitysetname:
        raise bad_request(f"@odata.id {value!r} does not name a record of "
                          f"{entity.entitysetname}", "@odata.id")
    record_id, key_values = record_id_of(req, entity, match.group(2))
    return record_id or new_guid(), key_values

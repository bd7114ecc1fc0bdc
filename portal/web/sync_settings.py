"""The sync web service's settings calls: every setting the admin changes, for programs.

    GET   /rest/v1/sync/{org}/Settings                  write mode, policy, schedule, entities
    PATCH /rest/v1/sync/{org}/Settings                  WriteMode, ConflictPolicy, Streams
    PATCH /rest/v1/sync/{org}/Entities                  Entities, Enabled and/or SyncDeletion
    PUT   /rest/v1/sync/{org}/Entities/{entity}/Filter  FetchXml: set the entity's sync filter
    DELETE /rest/v1/sync/{org}/Entities/{entity}/Filter clear it
    PUT   /rest/v1/sync/{org}/Schedule                  Every or DailyAt, Active

Bodies are small flat documents, XML (`<SyncSettings><WriteMode>instant</WriteMode>
</SyncSettings>`, lists as `<Entities><Entity>account</Entity></Entities>`) or JSON
with the same names; answers are the org's settings after the change. Each change
is one data-layer call (portal.sync.connections), as the admin's screens make it.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from flask import current_app, request
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.errors import InvalidInput
from portal.orgs.store import open_org
from portal.sync import connections
from portal.sync.connections import Connection
from portal.web.connect_request import MAX_TEXT, Refused
from portal.web.service import _admin, answer, answer_format, body_format, bp

MAX_LIST = 1000
WRITE_MODES = ("instant", "offline")
MAX_FETCHXML = 1_000_000


def _read(allowed: dict[str, type]) -> tuple[dict[str, Any], str]:
    """The body as {name: value} of the allowed names (str, bool or list of str)."""
    request.max_content_length = current_app.config["SERVICE_MAX_CONTENT_LENGTH"]
    fmt = body_format()
    if fmt is None:
        raise Refused(400, "MissingElement", "send the settings to change (XML or JSON)")
    body = request.get_data(cache=True)
    if fmt == "xml":
        try:
            root = fromstring(body, forbid_dtd=True)
        except DefusedXmlException:
            raise Refused(400, "ForbiddenXml", "DTDs, entities and external references are "
                          "not allowed") from None
        except ParseError as exc:
            raise Refused(400, "MalformedXml", f"the XML is malformed: {exc}") from None
        raw: dict[str, Any] = {}
        for child in root:
            name = child.tag.rpartition("}")[2]
            if allowed.get(name) is list:
                raw[name] = [(item.text or "").strip() for item in child]
            elif len(child):
                raise Refused(400, "InvalidElement", f"<{name}> takes text, not elements", name)
            else:
                raw[name] = (child.text or "").strip()
    else:
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, "MalformedJson", f"the JSON is malformed: {exc}") from None
        if not isinstance(raw, dict):
            raise Refused(400, "MalformedJson", "send a JSON object")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        kind = allowed.get(name)
        if kind is None:
            raise Refused(400, "UnknownElement", f"unknown element {name!r} (known: "
                          f"{', '.join(allowed)})", name)
        values[name] = _typed(name, value, kind, fmt)
    return values, fmt


def _typed(name: str, value: Any, kind: type, fmt: str) -> Any:
    if kind is int:  # checked by the data layer: a number, its text, or null/empty (default)
        if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)
                             and len(str(value)) <= MAX_TEXT):
            return value
        raise Refused(400, "InvalidElement", f"{name} must be a whole number", name)
    if kind is bool:
        if fmt == "xml" and value in ("true", "false"):
            return value == "true"
        if isinstance(value, bool):
            return value
        raise Refused(400, "InvalidElement", f"{name} must be true or false", name)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Refused(400, "InvalidElement", f"{name} must be a list of names", name)
        if len(value) > MAX_LIST:
            raise Refused(400, "InvalidElement", f"{name} has more than {MAX_LIST} items", name)
        return value
    if not isinstance(value, str):
        raise Refused(400, "InvalidElement", f"{name} must be text", name)
    if len(value) > (MAX_FETCHXML if name == "FetchXml" else MAX_TEXT):
        raise Refused(400, "InvalidElement", f"{name} is too long", name)
    return value


# Which element a data-layer refusal (InvalidInput.field) is about, in these calls.
ELEMENT_OF_FIELD = {"conflict_policy": "ConflictPolicy", "every": "Every", "daily_at": "DailyAt",
                    "schedule": "Every", "filter": "FetchXml", "entities": "Entities",
                    "entity": "Entities", "streams": "Streams"}


@contextmanager
def _elements() -> Iterator[None]:
    """Name the element at fault when the data layer refuses a value."""
    try:
        yield
    except InvalidInput as refused:
        raise Refused(refused.status, refused.code, refused.message,
                      ELEMENT_OF_FIELD.get(refused.field or "", refused.field)) from None


def _connection(org: str) -> Connection:
    _admin(org)
    connection = connections.connection_of_org(get_db(), org)
    if connection is None:
        raise Refused(409, "NotConnected", f"{org} is not connected to a server")
    return connection


def _settings(connection: Connection) -> dict[str, Any]:
    current = connections.get_connection(get_db(), connection.id)
    streams = connections.planned_streams(get_db(), current, current_app.config["SYNC_STREAMS"])
    return {
        "Organization": current.org_name,
        "WriteMode": "offline" if current.write_offline else "instant",
        "ConflictPolicy": current.conflict_policy,
        "Schedule": {"EveryMinutes": current.schedule_every_minutes,
                     "DailyAt": current.schedule_daily_at, "Active": current.schedule_active,
                     "NextRun": current.next_run_at},
        # Setting null: the portal's default. Used/Cap: as known before a run (the
        # server may allow fewer; the run's log says what it used).
        "Streams": {"Setting": current.streams, "Asked": streams.asked, "Used": streams.used,
                    "Cap": streams.cap},
        "Entities": [{"Name": s.entity, "Enabled": s.enabled, "SyncDeletion": s.sync_deletion,
                      "Filter": s.filter}
                     for s in connections.entity_settings(get_db(), current.id)],
    }


@bp.get("/sync/<org>/Settings")
def get_settings(org: str) -> ResponseReturnValue:
    """The connection's settings."""
    fmt = answer_format()
    return answer("SyncSettings", _settings(_connection(org)), 200, fmt)


@bp.patch("/sync/<org>/Settings")
def patch_settings(org: str) -> ResponseReturnValue:
    """Change the write mode (instant / offline), the conflict policy and the streams."""
    connection = _connection(org)
    values, fmt = _read({"WriteMode": str, "ConflictPolicy": str, "Streams": int})
    mode = values.get("WriteMode")
    if mode is not None and mode not in WRITE_MODES:
        raise Refused(400, "InvalidElement", f"WriteMode must be one of {', '.join(WRITE_MODES)}",
                      "WriteMode")
    policy = values.get("ConflictPolicy")
    with _elements():
        if policy is not None:
            connections.check_policy(policy)
        connections.update_settings(get_db(), connection.id,
                                    write_offline=None if mode is None else mode == "offline",
                                    conflict_policy=policy,
                                    streams=values.get("Streams", connections.Keep.KEEP))
    return answer("SyncSettings", _settings(connection), 200, answer_format(fmt))


@bp.patch("/sync/<org>/Entities")
def patch_entities(org: str) -> ResponseReturnValue:
    """Enable or disable entities, or turn their Sync Deletion on or off."""
    connection = _connection(org)
    values, fmt = _read({"Entities": list, "Enabled": bool, "SyncDeletion": bool})
    if "Enabled" not in values and "SyncDeletion" not in values:
        raise Refused(400, "MissingElement", "send Enabled and/or SyncDeletion", "Enabled")
    with _elements():
        connections.configure_entities(get_db(), connection.id, values.get("Entities") or [],
                                       enabled=values.get("Enabled"),
                                       sync_deletion=values.get("SyncDeletion"))
    return answer("SyncSettings", _settings(connection), 200, answer_format(fmt))


@bp.route("/sync/<org>/Entities/<entity>/Filter", methods=["PUT", "DELETE"])
def entity_filter(org: str, entity: str) -> ResponseReturnValue:
    """Set (FetchXml: a <filter> or a <fetch>) or clear an entity's sync filter."""
    connection = _connection(org)
    fmt = answer_format(body_format()) if request.method == "DELETE" else None
    xml = None
    if request.method == "PUT":
        values, fmt = _read({"FetchXml": str})
        if not values.get("FetchXml"):
            raise Refused(400, "MissingElement", "send the filter as FetchXml", "FetchXml")
        xml = values["FetchXml"]
    known = {s.entity for s in connections.entity_settings(get_db(), connection.id)}
    orgs_dir = Path(current_app.instance_path) / current_app.config["ORGS_DIR"]
    with open_org(orgs_dir, org) as opened:
        definition = opened.entities().get(entity)
    if entity not in known or definition is None:
        raise Refused(404, "NotFound", f"the server has no entity {entity!r} in this connection",
                      "{entity}")
    with _elements():
        connections.set_filter(get_db(), connection.id, definition, xml)
    return answer("SyncSettings", _settings(connection), 200, answer_format(fmt))


@bp.put("/sync/<org>/Schedule")
def put_schedule(org: str) -> ResponseReturnValue:
    """Set the sync job: Every ('15m', '2h') or DailyAt ('HH:MM' UTC), and Active."""
    connection = _connection(org)
    values, fmt = _read({"Every": str, "DailyAt": str, "Active": bool})
    with _elements():
        every = connections.parse_every(values["Every"]) if values.get("Every") else None
        connections.set_schedule(get_db(), connection.id, every_minutes=every,
                                 daily_at=values.get("DailyAt") or None,
                                 active=values.get("Active", True))
    return answer("SyncSettings", _settings(connection), 200, answer_format(fmt))

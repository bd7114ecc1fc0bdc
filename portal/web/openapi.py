"""The OpenAPI 3.0 document of the sync web service (/rest/v1/openapi.json)."""

from typing import Any

from portal.backends.registry import BACKEND_TYPES
from portal.sync.connections import ConnectionStatus
from portal.sync.runs import RunStatus
from portal.sync.streams import MAX_STREAMS

TEXT = {"type": "string", "maxLength": 2048}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": kind, "nullable": True}


ERROR = {
    "type": "object",
    "required": ["Error"],
    "properties": {"Error": {
        "type": "object",
        "required": ["Code", "Message"],
        "properties": {"Code": {"type": "string"}, "Message": {"type": "string"},
                       "Element": {"type": "string",
                                   "description": "the element (path) at fault"}},
    }},
}

REGISTRATION_INFO = {
    "type": "object",
    "description": "The new client org's admin. Email and Password are required to create "
                   "the org; Password is this portal's addition (Resco mails one instead).",
    "additionalProperties": False,
    "properties": {name: TEXT for name in ("Email", "FirstName", "LastName", "Company",
                                           "Password", "JobTitle", "Phone", "Country")},
}

SYNC_SETUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ProviderID"],
    "properties": {
        "ProviderID": {**TEXT, "description": "the server's backend type: " + "; ".join(
            f"{t.provider_id} = {t.name}{'' if t.available else ' (not available yet)'}"
            for t in BACKEND_TYPES)},
        "Url": {**TEXT, "description": "the server org's address, e.g. "
                "https://portal.example.com/odata/v4/myorg/"},
        "UserName": TEXT,
        "Password": {**TEXT, "description": "the server user's password"},
        "RegistrationInfo": REGISTRATION_INFO,
        "Entities": {"type": "array", "items": {"type": "string", "maxLength": 64},
                     "maxItems": 1000, "xml": {"wrapped": True},
                     "description": "logical names of the entities to sync (default: all)"},
        "SyncFiltersXml": {"type": "string", "description": "a FetchXML <fetch> with one "
                           "<entity name=...><filter>...</filter></entity> per filtered entity"},
    },
}

CONNECT_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["SyncSetup"],
    "properties": {"SyncSetup": SYNC_SETUP},
    "xml": {"name": "ConnectRequest"},
}

RUN_STATUS = {
    "type": "string",
    "enum": [*(str(s) for s in RunStatus), "abandoned"],
    "description": "the run's state, from the registry for as long as its record exists: "
                   "abandoned = its worker stopped (the next run or the dispatcher resumes "
                   "it); limited = stopped by the server's limits (the next run resumes)",
}

JOB_ACCEPTED = {
    "type": "object",
    "required": ["JobId", "JobStatus", "Organization", "ConnectionStatus", "StatusUrl",
                 "Message"],
    "properties": {
        "JobId": {"type": "string", "description": "<kind>-<connection>-<run>: one run"},
        "RunId": {"type": "integer"},
        "JobStatus": RUN_STATUS,
        "Organization": {"type": "string"},
        "ConnectionStatus": {"type": "string",
                             "enum": [str(s) for s in ConnectionStatus]},
        "StatusUrl": {"type": "string", "description": "GET it for the job's state"},
        "StatusPageUrl": {"type": "string", "description": "the same for people (HTML)"},
        "Message": {"type": "string"},
        "AlreadyQueued": {"type": "boolean"},
    },
}

PROGRESS = {
    "type": "object",
    "properties": {"Step": _nullable("string"), "Entity": _nullable("string"),
                   "Done": _nullable("integer"), "Total": _nullable("integer"),
                   "RunId": _nullable("integer"),
                   "Ended": {**_nullable("string"),
                             "description": "how the run ended, once it has"}},
}

ENTITY_COUNTS = {
    "type": "object",
    "properties": {"Entity": {"type": "string"}, "Downloaded": {"type": "integer"},
                   "Uploaded": {"type": "integer"}, "Deleted": {"type": "integer"},
                   "Conflicts": {"type": "integer"}, "Errors": {"type": "integer"}},
}

JOB_STATUS = {
    "type": "object",
    "required": ["JobId", "JobStatus", "Organization", "ConnectionStatus"],
    "properties": {
        "JobId": {"type": "string"},
        "RunId": {"type": "integer"},
        "Kind": {"type": "string", "enum": ["connect", "sync", "metadata"]},
        "JobStatus": RUN_STATUS,
        "Started": {"type": "string", "description": "when the run began (UTC)"},
        "Ended": {"type": "string", "description": "when the run ended (UTC)"},
        "Counts": {"description": "per-entity counts of a connect or sync run (a metadata "
                   "run: its Changes)",
                   "oneOf": [{"type": "array", "items": ENTITY_COUNTS, "xml": {"wrapped": True}},
                             {"type": "object", "properties": {
                                 "Changes": {"type": "integer"}}}]},
        "Organization": {"type": "string"},
        "ConnectionStatus": {"type": "string",
                             "enum": [str(s) for s in ConnectionStatus]},
        "Error": {"type": "string", "description": "why the run failed (the server's "
                  "message, or that its worker stopped) or was stopped by the server's limits"},
        "Progress": PROGRESS,
        "ConnectionProgress": PROGRESS,
    },
}


def _content(schema: dict[str, Any], xml_root: str) -> dict[str, Any]:
    return {"application/json": {"schema": schema},
            "application/xml": {"schema": {**schema, "xml": {"name": xml_root}}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "bad input: the message names the element", 401: "credentials needed",
               404: "no such organization or job", 409: "the state does not allow it",
               413: "body too large", 415: "neither XML nor JSON",
               422: "a backend type this portal does not offer yet",
               429: "too many requests from this address"}
    return {str(code): {"description": reasons[code], "content": _content(ERROR, "Error")}
            for code in codes}


ORG = {"name": "org", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "the client org's name (its address)"}


SETTINGS = {
    "type": "object",
    "description": "A connection's settings, after the change.",
    "properties": {
        "Organization": {"type": "string"},
        "WriteMode": {"type": "string", "enum": ["instant", "offline"]},
        "ConflictPolicy": {"type": "string",
                           "enum": ["server-wins", "client-wins", "newest-wins"]},
        "Schedule": {"type": "object", "properties": {
            "EveryMinutes": _nullable("integer"), "DailyAt": _nullable("string"),
            "Active": {"type": "boolean"}, "NextRun": _nullable("string")}},
        "Streams": {"type": "object", "description": "entities a run downloads at once: the "
                    "setting (null: the portal's default), asked, what a run may use and why "
                    "fewer (the server may allow fewer still: the run's log says)",
                    "properties": {"Setting": _nullable("integer"), "Asked": {"type": "integer"},
                                   "Used": {"type": "integer"}, "Cap": _nullable("string")}},
        "Entities": {"type": "array", "items": {"type": "object", "properties": {
            "Name": {"type": "string"}, "Enabled": {"type": "boolean"},
            "SyncDeletion": {"type": "boolean"}, "Filter": _nullable("string")}}},
    },
}
SETTINGS_CHANGE = {"type": "object", "additionalProperties": False, "properties": {
    "WriteMode": {"type": "string", "enum": ["instant", "offline"]},
    "ConflictPolicy": {"type": "string", "enum": ["server-wins", "client-wins", "newest-wins"]},
    "Streams": {"type": "integer", "minimum": 1, "maximum": MAX_STREAMS, "nullable": True,
                "description": "entities a run downloads at once; null: the portal's default"}}}
ENTITIES_CHANGE = {"type": "object", "additionalProperties": False, "required": ["Entities"],
                   "properties": {"Entities": {"type": "array", "items": {"type": "string"}},
                                  "Enabled": {"type": "boolean"},
                                  "SyncDeletion": {"type": "boolean"}}}
FILTER_CHANGE = {"type": "object", "additionalProperties": False, "required": ["FetchXml"],
                 "properties": {"FetchXml": {"type": "string", "description": "a FetchXML "
                                             "<filter>, or a <fetch> naming the entity"}}}
SCHEDULE_CHANGE = {"type": "object", "additionalProperties": False, "properties": {
    "Every": {"type": "string", "description": "15m, 2h..."},
    "DailyAt": {"type": "string", "description": "HH:MM (UTC)"}, "Active": {"type": "boolean"}}}


def _settings_call(operation: str, summary: str, body: dict[str, Any] | None,
                   parameters: list[dict[str, Any]]) -> dict[str, Any]:
    call: dict[str, Any] = {
        "operationId": operation, "summary": summary, "parameters": parameters,
        "security": [{"basic": []}],
        "responses": {"200": {"description": "the settings after the change",
                              "content": _content(SETTINGS, "SyncSettings")},
                      **_errors(400, 401, 404, 409, 413, 415)}}
    if body is not None:
        call["requestBody"] = {"required": True, "content": _content(body, "SyncSettings")}
    return call


ENTITY = {"name": "entity", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "a server entity's logical name"}


def openapi_document(server_url: str) -> dict[str, Any]:
    """The service's OpenAPI document, with this portal as its server."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "CRM Sync web service", "version": "1",
                 "description": "Connect a hosted org to a server org and start sync runs, as "
                 "Resco CRM Sync's ConnectRequest does. See docs/web-service.md."},
        "servers": [{"url": server_url}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
        "paths": {
            "/rest/v1/sync/{org}/ConnectAsync": {"post": {
                "operationId": "ConnectAsync",
                "summary": "Create and connect an org; for a connected org, update metadata",
                "parameters": [ORG],
                "security": [{}, {"basic": []}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": CONNECT_REQUEST},
                    "application/xml": {"schema": CONNECT_REQUEST}}},
                "responses": {
                    "202": {"description": "the connect (or update metadata) job is queued",
                            "content": _content(JOB_ACCEPTED, "ConnectResponse")},
                    **_errors(400, 401, 409, 413, 415, 422, 429)},
            }},
            "/rest/v1/sync/{org}/SyncAsync": {"post": {
                "operationId": "SyncAsync",
                "summary": "Start a sync run, unless one is queued or running",
                "parameters": [ORG],
                "security": [{"basic": []}],
                "responses": {
                    "202": {"description": "the run is queued (or was already)",
                            "content": _content(JOB_ACCEPTED, "SyncResponse")},
                    **_errors(400, 401, 409, 413, 415, 429)},
            }},
            "/rest/v1/sync/{org}/jobs/{job}": {"get": {
                "operationId": "JobStatus",
                "summary": "One run's state, progress and outcome, and its connection's",
                "parameters": [ORG, {"name": "job", "in": "path", "required": True,
                                     "schema": {"type": "string"}},
                               {"name": "token", "in": "query", "required": False,
                                "schema": {"type": "string"},
                                "description": "the token of the StatusUrl (else Basic)"}],
                "security": [{}, {"basic": []}],
                "responses": {
                    "200": {"description": "the job's state",
                            "content": _content(JOB_STATUS, "JobStatusResponse")},
                    **_errors(401, 404)},
            }},
            "/rest/v1/sync/{org}/Settings": {
                "get": _settings_call("GetSettings", "The connection's settings", None, [ORG]),
                "patch": _settings_call("ChangeSettings", "Change the write mode or conflict "
                                        "policy", SETTINGS_CHANGE, [ORG])},
            "/rest/v1/sync/{org}/Entities": {
                "patch": _settings_call("ChangeEntities", "Enable or disable entities, or their"
                                        " Sync Deletion", ENTITIES_CHANGE, [ORG])},
            "/rest/v1/sync/{org}/Entities/{entity}/Filter": {
                "put": _settings_call("SetFilter", "Set an entity's sync filter",
                                      FILTER_CHANGE, [ORG, ENTITY]),
                "delete": _settings_call("ClearFilter", "Clear an entity's sync filter", None,
                                         [ORG, ENTITY])},
            "/rest/v1/sync/{org}/Schedule": {
                "put": _settings_call("SetSchedule", "Set the sync job's schedule",
                                      SCHEDULE_CHANGE, [ORG])},
        },
    }

"""The sync web service for programs: ConnectAsync, SyncAsync and their jobs' status.

    POST /rest/v1/sync/{org}/ConnectAsync   Resco's ConnectRequest, XML or JSON
    POST /rest/v1/sync/{org}/SyncAsync      a sync run of a connected org
    GET  /rest/v1/sync/{org}/jobs/{job}     one run's state, progress and outcome
    GET  /rest/v1/openapi.json              this service, described

Requests come as XML (parsed by defusedxml: no DTD, no entities) or JSON with
the same element names; answers are in the request's format unless `Accept`
asks for the other. A connected org's admin authenticates with HTTP Basic
(e-mail and password). Every refusal is a small error document naming the
bad element, with a 4xx, and changes nothing. CSRF-exempt: no browser form
posts here.
"""

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from portal.backends.registry import available_backend
from portal.crypto import load_key
from portal.db import get_db
from portal.errors import PortalError
from portal.extensions import csrf
from portal.orgs import registry
from portal.orgs.store import orgs_path
from portal.queue import Job, fetch_job, get_redis, parse_run_job_id
from portal.sync import connections, registration, runs
from portal.sync.connections import Connection, ConnectionStatus
from portal.sync.registration import ConnectAction, RequestedSetup
from portal.web import auth_throttle, rate_limits
from portal.web.connect import queue_run, status_token, token_connection
from portal.web.connect_request import ConnectRequest, Refused, parse_json, parse_xml
from portal.web.openapi import openapi_document

bp = Blueprint("service", __name__, url_prefix="/rest/v1")
csrf.exempt(bp)

# Which element a data-layer refusal is about (InvalidInput.field -> element).
ELEMENT_OF_FIELD = {"backend": "SyncSetup/ProviderID", "url": "SyncSetup/Url",
                    "username": "SyncSetup/UserName", "entities": "SyncSetup/Entities",
                    "filter": "SyncSetup/SyncFiltersXml", "entity": "SyncSetup/Entities",
                    "name": "{org}", "email": "RegistrationInfo/Email",
                    "tenant": "SyncSetup/TenantId", "authority": "SyncSetup/TenantId",
                    "client_id": "SyncSetup/ClientId", "auth": "SyncSetup/ClientId",
                    "consumer_key": "SyncSetup/ClientId",
                    "consumer_secret": "SyncSetup/ClientSecret",
                    "security_token": "SyncSetup/SecurityToken"}
REALM = 'Basic realm="CRM Sync web service", charset="UTF-8"'


def _unauthorized(message: str = "valid credentials of the organization's admin are required "
                  "(HTTP Basic: e-mail and password)") -> Refused:
    return Refused(401, "Unauthorized", message, headers={"WWW-Authenticate": REALM})


# --- formats -------------------------------------------------------------------

def body_format() -> str | None:
    """'xml' or 'json' by the request's Content-Type (or its first character); None if empty."""
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return "json"
    if mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml"):
        return "xml"
    head = request.get_data(cache=True)[:64].lstrip()
    if not head:
        return None
    if head.startswith(b"<"):
        return "xml"
    if head.startswith(b"{"):
        return "json"
    raise Refused(415, "UnsupportedMediaType",
                  "send the request as XML (application/xml) or JSON (application/json)")


def answer_format(default: str | None = None) -> str:
    """The format to answer in: what Accept names explicitly, else the request's, else JSON."""
    best: tuple[float, str] | None = None
    for mimetype, quality in request.accept_mimetypes:
        kind = ("json" if mimetype == "application/json" or mimetype.endswith("+json") else
                "xml" if mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml")
                else None)
        if kind and quality > 0 and (best is None or quality > best[0]):
            best = (quality, kind)
    return best[1] if best else (default or "json")


def _xml_element(parent: Element | None, name: str, value: Any) -> Element:
    elem = Element(name) if parent is None else SubElement(parent, name)
    if isinstance(value, dict):
        for key, item in value.items():
            if item is not None:
                _xml_element(elem, key, item)
    elif isinstance(value, list):
        for item in value:
            _xml_element(elem, "Item", item)
    elif isinstance(value, bool):
        elem.text = "true" if value else "false"
    else:
        elem.text = str(value)
    return elem


def answer(root: str, document: dict[str, Any], status: int, fmt: str,
           headers: dict[str, str] | None = None) -> Response:
    """A document as XML (<root>...</root>) or JSON ({...}), None values left out."""
    if fmt == "xml":
        body = tostring(_xml_element(None, root, document), encoding="unicode",
                        xml_declaration=True)
        response = Response(body, status=status, mimetype="application/xml")
    else:
        response = jsonify({k: v for k, v in document.items() if v is not None})
        response.status_code = status
    response.headers.update(headers or {})
    return response


def error_answer(status: int, code: str, message: str, element: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    """The service's error document: code, message, and the element at fault."""
    try:
        fmt = answer_format(body_format())
    except (Refused, HTTPException):  # an unreadable or oversize body: Accept decides
        fmt = answer_format()
    document = {"Code": code, "Message": message, "Element": element}
    if fmt == "json":
        response = jsonify(Error={k: v for k, v in document.items() if v is not None})
        response.status_code = status
        response.headers.update(headers or {})
        return response
    return answer("Error", document, status, "xml", headers)


# --- the calls ---------------------------------------------------------------------

def _read_request() -> tuple[ConnectRequest, str]:
    # Read the body under the service's own limit: werkzeug answers 413 beyond it.
    request.max_content_length = current_app.config["SERVICE_MAX_CONTENT_LENGTH"]
    request.get_data(cache=True)
    fmt = body_format()
    if fmt is None:
        raise Refused(400, "MissingElement", "send a ConnectRequest (XML or JSON)",
                      "ConnectRequest")
    body = request.get_data(cache=True)
    return (parse_xml(body) if fmt == "xml" else parse_json(body)), fmt


def _admin(org: str) -> dict[str, Any]:
    """The org admin the request's Basic credentials belong to; 401 otherwise."""
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username or auth.password is None:
        raise _unauthorized()  # no credentials tried: no failed sign-in
    account = auth_throttle.account(org, auth.username)
    auth_throttle.check(account)
    user = registry.authenticate(get_db(), org, auth.username, auth.password)
    if user is None or not user["is_admin"]:
        auth_throttle.failed(account)
        raise _unauthorized()
    return user


def _job_document(connection: Connection, job: Job, run_id: int, message: str,
                  **extra: Any) -> dict[str, Any]:
    token = status_token(connection)
    return {
        "JobId": job.id,
        "RunId": run_id,
        "JobStatus": _run_status(runs.get_run(get_db(), run_id)),
        "Organization": connection.org_name,
        "ConnectionStatus": connection.status,
        "StatusUrl": url_for("service.job_status", org=connection.org_name, job=job.id,
                             token=token, _external=True),
        "StatusPageUrl": url_for("connect.status", org=connection.org_name, token=token,
                                 _external=True),
        "Message": message,
        **extra,
    }


def _run_status(run: dict[str, Any] | None) -> str:
    """A run's state as the service tells it: queued, running, succeeded, failed,
    abandoned (its worker died) or limited (stopped by the server's limits)."""
    if run is None:
        return "unknown"
    return "abandoned" if runs.abandoned(run) else str(run["status"])


def _orgs_dir() -> Path:
    return orgs_path(current_app)


def _setup(parsed: ConnectRequest) -> RequestedSetup:
    return registration.parse_setup(parsed.entities, parsed.filters_xml)


# The run each ConnectAsync decision asks for: (kind, trigger).
CONNECT_RUNS: dict[ConnectAction, tuple[str, str]] = {
    ConnectAction.CREATE: ("connect", "connect"),
    ConnectAction.CONNECT: ("connect", "connect"),
    ConnectAction.UPDATE_METADATA: ("metadata", "api"),
    ConnectAction.RECONNECT: ("connect", "connect"),
}


@bp.post("/sync/<org>/ConnectAsync")
def connect_async(org: str) -> ResponseReturnValue:
    """Connect a new (or unconnected) org to a server; for a connected org: update metadata."""
    rate_limits.hit("connect")
    parsed, fmt = _read_request()
    fmt = answer_format(fmt)
    available_backend(parsed.required("ProviderID"))
    decision = registration.connect_request(
        get_db(), _orgs_dir(), load_key(current_app.instance_path), org, parsed, _setup(parsed),
        authorize=lambda: _admin(org), allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"])
    if decision.action is ConnectAction.BUSY:
        raise Refused(409, "ConnectRunning", f"{decision.message} (job "
                      f"{decision.connection.job_id}); try again when it has ended (a connect "
                      "whose worker died is recognised within a minute, then this request "
                      "resumes or reconnects it)")
    job, run_id, _ = queue_run(decision.connection, *CONNECT_RUNS[decision.action])
    return answer("ConnectResponse", _job_document(decision.connection, job, run_id,
                                                   decision.message), 202, fmt)


@bp.post("/sync/<org>/SyncAsync")
def sync_async(org: str) -> ResponseReturnValue:
    """Start a sync run of a connected org, unless one is queued or running already."""
    rate_limits.hit("sync")
    request.max_content_length = current_app.config["SERVICE_MAX_CONTENT_LENGTH"]
    fmt = answer_format(body_format())
    _admin(org)
    connection = connections.connection_of_org(get_db(), org)
    if connection is None or connection.status != ConnectionStatus.CONNECTED:
        raise Refused(409, "NotConnected", f"{org} is not connected to a server"
                      + (f" (its connection is {connection.status})" if connection else ""))
    job, run_id, running = queue_run(connection, "sync", "api")
    message = (f"a sync run of {org} is {_run_status(runs.get_run(get_db(), run_id))} "
               "already: this is that run" if running else f"sync run of {org} queued")
    return answer("SyncResponse", _job_document(connection, job, run_id, message,
                                                AlreadyQueued=running), 202, fmt)


@bp.get("/sync/<org>/jobs/<job>", endpoint="job_status")
def job_state(org: str, job: str) -> ResponseReturnValue:
    """One run's state, progress and outcome (token of the 202, or Basic auth).

    The run record answers for as long as it exists; Redis, while it keeps
    the job, adds the live progress.
    """
    fmt = answer_format()
    connection = _connection_for_job_request(org)
    parsed = parse_run_job_id(job)
    run = runs.get_run(get_db(), parsed[2]) if parsed else None
    if parsed is None or run is None or parsed[1] != connection.id or run["kind"] != parsed[0] \
            or run["connection_id"] != connection.id:
        raise Refused(404, "NotFound", f"{org} has no job {job!r}", "{job}")
    found = fetch_job(get_redis(), job) if run["status"] in runs.ACTIVE else None
    progress = (found.meta.get("progress") if found else None) or {}
    if not progress and run["status"] == runs.RunStatus.RUNNING and \
            (connection.progress or {}).get("run") == run["id"]:
        progress = connection.progress
    document = {
        "JobId": job,
        "RunId": run["id"],
        "Kind": run["kind"],
        "JobStatus": _run_status(run),
        "Organization": org,
        "ConnectionStatus": connection.status,
        "Started": run["started"] if run["status"] != runs.RunStatus.QUEUED else None,
        "Ended": run["ended"],
        "Error": run["error"],
        "Counts": _counts(run["counts"]) if run["ended"] else None,
        "Progress": _progress(progress),
        "ConnectionProgress": _progress(connection.progress or {}),
    }
    return answer("JobStatusResponse", document, 200, fmt)


def _counts(counts: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
    """Per-entity counts as a list (XML-friendly), or a metadata run's counts as they are."""
    if all(isinstance(c, dict) for c in counts.values()):
        return [{"Entity": name, **{k.capitalize(): v for k, v in c.items()}}
                for name, c in counts.items()]
    return {k.capitalize(): v for k, v in counts.items()}


def _progress(progress: dict[str, Any]) -> dict[str, Any]:
    return {"Step": progress.get("step"), "Entity": progress.get("entity"),
            "Done": progress.get("done"), "Total": progress.get("total"),
            "RunId": progress.get("run"), "Ended": progress.get("ended")}


def _connection_for_job_request(org: str) -> Connection:
    token = request.args.get("token")
    if token:
        connection = token_connection(org, token)
        if connection is None:
            raise _unauthorized("the token does not fit this organization")
        return connection
    _admin(org)
    found = connections.connection_of_org(get_db(), org)
    if found is None:
        raise Refused(404, "NotFound", f"{org} has no connection")
    return found


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI document of this service."""
    return jsonify(openapi_document(request.host_url.rstrip("/")))


# --- errors ------------------------------------------------------------------------

@bp.errorhandler(PortalError)
def portal_error(error: PortalError) -> ResponseReturnValue:
    """A refusal, as the service's error document."""
    if isinstance(error, Refused):
        return error_answer(error.status, error.code, error.message, error.field, error.headers)
    element = ELEMENT_OF_FIELD.get(error.field or "", error.field)
    if error.field == "password":
        # The org admin's password is checked before the data layer is called:
        # a password refused there is the server's.
        element = "SyncSetup/Password"
    return error_answer(error.status, error.code, error.message, element)


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> ResponseReturnValue:
    """Werkzeug's refusals (413, 429...) as the service's error document."""
    code = (error.name or "Error").replace(" ", "")
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return error_answer(error.code or 500, code, error.description or code, None, headers)


@bp.errorhandler(Exception)
def unexpected(error: Exception) -> ResponseReturnValue:
    """Anything else: logged, and a 500 without a stack trace."""
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_answer(500, "InternalServerError",
                        "something went wrong on our side; it has been logged")

"""The Org API: each hosted org as an OData v4 service at /odata/v4/{org}/.

This module is the Flask side only: credentials, the body size limit, the
org's connection and the error answers. The protocol itself lives in
portal/web/odata (dispatch and the handlers), which $batch reuses. `serve`
answers for either dialect; portal/web/dataverse.py mounts the Dataverse root
on it.
"""

from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue
from redis import RedisError
from werkzeug.exceptions import HTTPException

from portal.db import get_db, registry_path
from portal.errors import PortalError
from portal.extensions import csrf
from portal.orgs import transactions
from portal.orgs.store import orgs_path
from portal.queue import enqueue_upload, get_redis
from portal.sync.connections import ConnectionStatus, connection_of_org
from portal.web import auth_throttle, page_cache, service_protection
from portal.web.odata import auth
from portal.web.odata.connections import org_connection
from portal.web.odata.dialect import ORG_API, Dialect
from portal.web.odata.dispatch import dispatch
from portal.web.odata.messages import (
    ODATA_VERSION,
    ApiRequest,
    ApiResponse,
    ErrorKind,
    ProtocolError,
    portal_error_response,
)

bp = Blueprint("api", __name__, url_prefix="/odata/v4")
csrf.exempt(bp)

METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
# The kinds of werkzeug's refusals, for the dialects' error codes.
HTTP_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}


@bp.route("/<org>/", defaults={"resource": ""}, methods=METHODS)
@bp.route("/<org>/<path:resource>", methods=METHODS)
def service(org: str, resource: str) -> ResponseReturnValue:
    """Any request to an org's service: authenticate, then hand it to the OData dispatch."""
    return serve(ORG_API, org, resource)


def serve(dialect: Dialect, org: str, resource: str) -> Response:
    """One request to an org's service root in a dialect: authenticate, limit, dispatch."""
    app = current_app
    account = _account(org)
    auth_throttle.check(account)
    try:
        user = auth.authenticate(get_db, app.config["SECRET_KEY"], str(registry_path(app)),
                                 org, request.authorization, dialect=dialect,
                                 base_url=request.root_url)
    except ProtocolError:
        if request.authorization is not None:  # credentials were tried, and refused
            auth_throttle.failed(account)
        raise
    with service_protection.budget(dialect, org, user) as limits:
        response = _serve(dialect, org, resource, user)
    response.headers.update(limits.headers)
    return response


def _serve(dialect: Dialect, org: str, resource: str, user: dict[str, Any]) -> Response:
    app = current_app
    # Read the body under the API's own limit: werkzeug answers 413 beyond it.
    request.max_content_length = app.config["API_MAX_CONTENT_LENGTH"]
    body = request.get_data(cache=False)
    orgs_dir = orgs_path(app)
    req = ApiRequest(
        method=request.method,
        path=resource,
        args=request.args,
        headers=request.headers,  # type: ignore[arg-type]
        body=body,
        service_root=dialect.service_root(request.root_url, org),
        org=org_connection(orgs_dir, org),
        secret=app.config["SECRET_KEY"],
        user=user,
        error_codes=dialect.error_codes,
        dialect=dialect,
    )
    answer = page_cache.answer(req, dispatch)
    if request.method != "GET" and answer.status < 400 and transactions.is_client(req.org.db):
        _upload_now(org)
    return flask_response(answer)


def _account(org: str) -> str | None:
    """Who a request signs in as, for the throttle (None: an API token, counted by address)."""
    authorization = request.authorization
    if authorization is not None and authorization.type == "basic":
        return auth_throttle.account(org, authorization.username or "")
    return None


def _upload_now(org: str) -> None:
    """Instant mode (WriteOffline off): send the client's new transactions to the server now."""
    connection = connection_of_org(get_db(), org)
    if (connection is None or connection.write_offline
            or connection.status != ConnectionStatus.CONNECTED):
        return
    try:
        enqueue_upload(get_redis(), connection.id)  # coalesced: one queued upload per org
    except RedisError as exc:
        # The write is kept as a pending transaction; the next sync run sends it.
        current_app.logger.warning("instant upload of %s not queued: %s", org, exc)


def flask_response(answer: ApiResponse) -> Response:
    """An ApiResponse as a Flask response, with OData-Version."""
    response = Response(answer.body, status=answer.status, headers=answer.headers)
    response.headers["OData-Version"] = ODATA_VERSION
    return response


def odata_errors(blueprint: Blueprint, dialect: Dialect) -> None:
    """Answer every error of a blueprint serving OData in the OData error format,
    with the dialect's codes (refusals before dispatch: 401, 429, 413...)."""

    @blueprint.errorhandler(PortalError)
    def portal_error(error: PortalError) -> ResponseReturnValue:
        """A refusal of the data layer or the protocol, as an OData error."""
        return flask_response(portal_error_response(error, dialect.error_codes))

    @blueprint.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        """Werkzeug's refusals (413, 405, 429...) in the OData error format, headers kept."""
        status = error.code or 500
        code = (error.name or "Error").replace(" ", "")
        kind = HTTP_KINDS.get(status, ErrorKind.INTERNAL if status >= 500
                              else ErrorKind.BAD_REQUEST)
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        refusal = ProtocolError(status, code, error.description or code, kind=kind,
                                headers=headers)
        return flask_response(portal_error_response(refusal, dialect.error_codes))

    @blueprint.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        """Anything else: logged, and a 500 without a stack trace."""
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        refusal = ProtocolError(500, "InternalServerError",
                                "Something went wrong on our side; it has been logged.",
                                kind=ErrorKind.INTERNAL)
        return flask_response(portal_error_response(refusal, dialect.error_codes))


odata_errors(bp, ORG_API)

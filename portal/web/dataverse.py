"""The Dataverse Web API of every hosted org: /dataverse/{org}/api/data/v9.2/, and its OAuth 2.0.

The API itself is the Org API's OData server in the DATAVERSE dialect
(portal/web/odata/dialect.py): this module only mounts it, and serves what an
OAuth 2.0 client needs to get a token as Microsoft Entra ID gives one for
Dataverse - the token endpoint (client credentials of an application user,
or an org user's e-mail and password) and the OpenID discovery document
MSAL reads when the org's authority `https://<portal>/dataverse/{org}` is
named (with instance discovery off). Errors of the token endpoint have
Entra's shape (error, error_description with an AADSTS code, error_codes,
timestamp, trace_id, correlation_id).
"""

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.extensions import csrf
from portal.orgs import access_tokens, application_users, registry
from portal.orgs.access_tokens import Principal
from portal.web import auth_throttle
from portal.web.api import METHODS, odata_errors, serve
from portal.web.odata.auth import authority
from portal.web.odata.dialect import DATAVERSE

bp = Blueprint("dataverse", __name__, url_prefix="/dataverse")
csrf.exempt(bp)
# MSAL's password grant first asks the authority's host for the user's realm, at
# https://<host>/common/userrealm/<user> (msal.authority.user_realm_discovery).
realm_bp = Blueprint("userrealm", __name__, url_prefix="/common")

# Scopes MSAL adds to a user sign-in; they name no resource.
OIDC_SCOPES = {"openid", "profile", "offline_access"}


@bp.route("/<org>/api/data/v9.2/", defaults={"resource": ""}, methods=METHODS)
@bp.route("/<org>/api/data/v9.2/<path:resource>", methods=METHODS)
def web_api(org: str, resource: str) -> ResponseReturnValue:
    """Any request to an org's Dataverse Web API: the one OData server, Dataverse dialect."""
    return serve(DATAVERSE, org, resource)


@bp.after_request
def parallelism_hint(response: Response) -> Response:
    """Every Web API answer recommends how many requests to send at once, as Dataverse's do
    (x-ms-dop-hint, Microsoft Learn "Send parallel requests"); the token endpoint is Entra's."""
    if request.endpoint == "dataverse.web_api":
        response.headers["x-ms-dop-hint"] = str(current_app.config["DATAVERSE_DOP_HINT"])
    return response


@bp.get("/<org>/v2.0/.well-known/openid-configuration")
@bp.get("/<org>/.well-known/openid-configuration")
def openid_configuration(org: str) -> ResponseReturnValue:
    """The OpenID discovery document of the org's authority (what MSAL reads first)."""
    registry.check_org_name(org)  # any well-formed name: nothing tells whether the org exists
    base = authority(request.root_url, org)
    return jsonify({
        "issuer": f"{base}/v2.0",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["client_credentials", "password"],
        "response_types_supported": ["token"],
        "scopes_supported": [f"{base}/.default", "openid", "profile", "offline_access"],
        "claims_supported": [],
        "tenant_region_scope": None,
    })


@realm_bp.get("/userrealm/<path:username>")
def user_realm(username: str) -> ResponseReturnValue:
    """Every portal user is "Managed" (signs in with a password here, not federated)."""
    return jsonify({"ver": "1.0", "account_type": "Managed",
                    "domain_name": username.rpartition("@")[2],
                    "cloud_instance_name": request.host.split(":")[0],
                    "cloud_audience_urn": "urn:federation:MicrosoftOnline"})


@bp.post("/<org>/oauth2/v2.0/token")
def token(org: str) -> ResponseReturnValue:
    """POST grant_type=client_credentials | password: an access token of this org, as Entra."""
    form = request.form
    grant = form.get("grant_type")
    if not grant:
        return missing("grant_type")
    if grant not in ("client_credentials", "password"):
        return entra_error(400, "unsupported_grant_type", 70003,
                           f"The app requested an unsupported grant type '{grant}'.")
    scope = form.get("scope")
    if not scope:
        return missing("scope")
    if not names_this_org(scope, org):
        return entra_error(400, "invalid_scope", 70011,
                           "The provided value for the input parameter 'scope' is not valid. "
                           f"The scope {scope} is not valid.")
    if grant == "client_credentials":
        return _client_credentials(org, scope)
    return _password(org, scope)


def _client_credentials(org: str, scope: str) -> ResponseReturnValue:
    client_id, secret = form_or_basic("client_id"), form_or_basic("client_secret")
    if not client_id:
        return missing("client_id")
    if not secret:
        return missing("client_secret")
    account = auth_throttle.account(org, client_id)
    auth_throttle.check(account)
    app = application_users.check_client_secret(get_db(), org, client_id, secret)
    if app is None:
        auth_throttle.failed(account)
        # One answer for an unknown org, an unknown client and a wrong secret.
        return entra_error(401, "invalid_client", 7000215,
                           "Invalid client secret provided. Ensure the secret being sent in the "
                           "request is the client secret value, not the client secret ID, for "
                           f"a secret added to app '{client_id}'.")
    return issued(org, Principal.APPLICATION, app["client_id"], scope)


def _password(org: str, scope: str) -> ResponseReturnValue:
    # MSAL always sends a client id; any public client id is accepted (Microsoft's
    # Dataverse samples use 51f81489-12ee-4a9e-aaae-a2591f45987d).
    if not form_or_basic("client_id"):
        return missing("client_id")
    email, password = request.form.get("username"), request.form.get("password")
    if not email:
        return missing("username")
    if not password:
        return missing("password")
    account = auth_throttle.account(org, email)
    auth_throttle.check(account)
    user = registry.authenticate(get_db(), org, email, password)
    if user is None:
        auth_throttle.failed(account)
        return entra_error(400, "invalid_grant", 50126,
                           "Error validating credentials due to invalid username or password.")
    return issued(org, Principal.USER, str(user["id"]), scope)


def issued(org: str, principal: Principal, subject: str, scope: str) -> ResponseReturnValue:
    """Entra's token response: token_type, expires_in, ext_expires_in, access_token."""
    lifetime = int(current_app.config["DATAVERSE_TOKEN_LIFETIME_S"])
    access_token = access_tokens.issue_token(current_app.config["SECRET_KEY"], org, principal,
                                             subject, lifetime_s=lifetime)
    resource = " ".join(s for s in scope.split() if s not in OIDC_SCOPES)
    response = jsonify({"token_type": "Bearer", "scope": resource, "expires_in": lifetime,
                        "ext_expires_in": lifetime, "access_token": access_token})
    response.headers["Cache-Control"] = "no-store"
    return response


def names_this_org(scope: str, org: str) -> bool:
    """True when a scope asks for this org's resource (`<org url>/.default` and the like).

    Only the path is compared: the host a client names may be another name of
    the portal (a proxy, localhost vs 127.0.0.1).
    """
    wanted = f"{urlsplit(request.root_url).path.rstrip('/')}/dataverse/{org}"
    resources = [s for s in scope.split() if s not in OIDC_SCOPES]
    if not resources:
        return False
    for item in resources:
        path = urlsplit(item).path
        resource, _, permission = path.rstrip("/").rpartition("/")
        if permission not in (".default", "user_impersonation") or \
                resource.rstrip("/") != wanted:
            return False
    return True


def form_or_basic(name: str) -> str | None:
    """A client credential from the form (client_secret_post) or Basic (client_secret_basic)."""
    value = request.form.get(name)
    if value:
        return value
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    return auth.username if name == "client_id" else auth.password


def missing(parameter: str) -> Response:
    """Entra's answer to a missing parameter (AADSTS900144)."""
    return entra_error(400, "invalid_request", 900144,
                       f"The request body must contain the following parameter: '{parameter}'.")


def entra_error(status: int, error: str, code: int, description: str) -> Response:
    """An error of the token endpoint in Microsoft Entra's shape."""
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body: dict[str, Any] = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
                             f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}",
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


odata_errors(bp, DATAVERSE)

"""Who is calling: HTTP Basic (an org user's e-mail and password), a Bearer API token, or
(on the Dataverse root) a Bearer OAuth 2.0 access token - as the request's dialect accepts.

Every failure - unknown org, unknown user, wrong password, revoked token, no
credentials - is the same 401, so nothing tells whether another org exists.
On the Dataverse root the 401 names the org's authority in `WWW-Authenticate:
Bearer authorization_uri=..., resource_id=...`, as Dataverse names its
tenant's, so a client finds where to get a token from the org URL alone.
"""

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlite_utils import Database
from werkzeug.datastructures import Authorization

from portal.orgs import access_tokens, application_users, registry, tokens
from portal.web.odata.dialect import ORG_API, AuthKind, Dialect
from portal.web.odata.messages import ErrorKind, ProtocolError

REALM = 'Basic realm="CRM Sync Org API", charset="UTF-8"'

# Checking a password costs one scrypt hash (50-100 ms here); a client paging
# through 100 pages would pay it 100 times. Successful checks are remembered
# for a short while, in-process, under an HMAC of registry+org+e-mail+password
# keyed with the app secret - so the cache holds no password, and a changed or
# wrong password never matches an entry. Bounded, oldest entries dropped first.
# Consequence: a password change or a removed user takes effect within TTL.
CACHE_TTL_S = 60.0
CACHE_SIZE = 1024
_cache: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()
_cache_lock = threading.Lock()


def unauthorized() -> ProtocolError:
    """The one answer to every failed authentication (Org API: a Basic challenge)."""
    return ProtocolError(401, "Unauthorized",
                         "valid credentials of this organization are required",
                         headers={"WWW-Authenticate": REALM}, kind=ErrorKind.UNAUTHORIZED)


def authority(base_url: str, org: str) -> str:
    """The OAuth 2.0 authority of an org (MSAL's `authority`): {base}dataverse/{org}."""
    return f"{base_url}dataverse/{org}"


def bearer_refusal(base_url: str, org: str, *, message: str, error: str | None = None
                   ) -> ProtocolError:
    """The Dataverse 401: a Bearer challenge naming the org's authority and resource.

    Its body has the code of ErrorKind.UNAUTHORIZED in the dialect's error codes; the
    message says what was wrong (missing, expired, another org's, altered, revoked).
    """
    params = []
    if error:
        # RFC 6750 3.1; Dataverse adds these when a token was sent but refused.
        params.append(f'error={error}, error_description="{message}"')
    params.append(f"authorization_uri={authority(base_url, org)}/oauth2/authorize")
    params.append(f"resource_id={authority(base_url, org)}/")
    return ProtocolError(401, "Unauthorized", message, kind=ErrorKind.UNAUTHORIZED,
                         headers={"WWW-Authenticate": "Bearer " + ", ".join(params)})


def _cache_key(secret: str, scope: str, org: str, email: str, password: str) -> bytes:
    message = "\0".join([scope, org, email.lower(), password]).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def authenticate(get_db: Callable[[], Database], secret: str, scope: str, org: str,
                 authorization: Authorization | None, *, dialect: Dialect = ORG_API,
                 base_url: str = "") -> dict[str, Any]:
    """The org user the request's credentials belong to, by the kinds the dialect accepts;
    401 for anything else.

    `scope` names the registry (its path), so two portals in one process never
    share a cache entry. `base_url` (the portal's, ending in '/') is named in
    the Bearer challenge.
    """
    kinds = dialect.auth_kinds
    if authorization is not None and authorization.type == "bearer" and authorization.token:
        if AuthKind.OAUTH in kinds:
            return _oauth_user(get_db, secret, org, authorization.token, base_url)
        if AuthKind.API_TOKEN in kinds:
            user = tokens.check_token(get_db(), org, authorization.token)
            if user is not None:
                return user
    elif authorization is not None and authorization.type == "basic" and \
            AuthKind.BASIC in kinds and authorization.username and \
            authorization.password is not None:
        user = _password_user(get_db, secret, scope, org, authorization.username,
                              authorization.password)
        if user is not None:
            return user
    if dialect.bearer_challenge:
        raise bearer_refusal(base_url, org,
                             message="a Bearer access token of this organization is required")
    raise unauthorized()


def _password_user(get_db: Callable[[], Database], secret: str, scope: str, org: str,
                   email: str, password: str) -> dict[str, Any] | None:
    """The org user of an e-mail and password (successful checks cached), or None."""
    key = _cache_key(secret, scope, org, email, password)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    user = registry.authenticate(get_db(), org, email, password)
    if user is None:
        return None
    with _cache_lock:
        _cache[key] = (now + CACHE_TTL_S, user)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return user


def _oauth_user(get_db: Callable[[], Database], secret: str, org: str, token: str,
                base_url: str) -> dict[str, Any]:
    """The application user or org user an OAuth access token names; Dataverse's 401 else."""
    try:
        claims = access_tokens.read_token(secret, org, token)
    except access_tokens.TokenRefused as refused:
        raise bearer_refusal(base_url, org, message=refused.reason,
                             error="invalid_token") from None
    user = principal_user(get_db(), org, claims.principal, claims.subject)
    if user is None:
        raise bearer_refusal(base_url, org,
                             message="the access token's user no longer exists or was revoked",
                             error="invalid_token")
    return user


def principal_user(db: Database, org: str, principal: access_tokens.Principal, subject: str
                   ) -> dict[str, Any] | None:
    """The user a token's subject names, as a dict with `id`, `kind` and `is_admin`."""
    if principal == access_tokens.Principal.APPLICATION:
        app = application_users.active_application_user(db, org, subject)
        if app is None:
            return None
        return {"id": app["id"], "kind": "application", "client_id": app["client_id"],
                "email": None, "is_admin": app["is_admin"], "name": app["name"]}
    found = registry.get_user(db, org, int(subject)) if subject.isdigit() else None
    return {**found, "kind": "user"} if found is not None else None

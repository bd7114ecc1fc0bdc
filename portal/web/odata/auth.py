"""Who is calling: HTTP Basic (an org user's e-mail and password) or a Bearer API token.

Every failure - unknown org, unknown user, wrong password, revoked token, no
credentials - is the same 401, so nothing tells whether another org exists.
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

from portal.orgs import registry, tokens
from portal.web.odata.messages import ProtocolError

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
    """The one answer to every failed authentication."""
    return ProtocolError(401, "Unauthorized",
                         "valid credentials of this organization are required",
                         headers={"WWW-Authenticate": REALM})


def _cache_key(secret: str, scope: str, org: str, email: str, password: str) -> bytes:
    message = "\0".join([scope, org, email.lower(), password]).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def authenticate(get_db: Callable[[], Database], secret: str, scope: str, org: str,
                 authorization: Authorization | None) -> dict[str, Any]:
    """The org user the request's credentials belong to; 401 for anything else.

    `scope` names the registry (its path), so two portals in one process never
    share a cache entry.
    """
    if authorization is None:
        raise unauthorized()
    if authorization.type == "bearer" and authorization.token:
        user = tokens.check_token(get_db(), org, authorization.token)
        if user is None:
            raise unauthorized()
        return user
    email, password = authorization.username, authorization.password
    if authorization.type != "basic" or not email or password is None:
        raise unauthorized()
    key = _cache_key(secret, scope, org, email, password)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    user = registry.authenticate(get_db(), org, email, password)
    if user is None:
        raise unauthorized()
    with _cache_lock:
        _cache[key] = (now + CACHE_TTL_S, user)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return user

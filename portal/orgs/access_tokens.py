"""OAuth 2.0 access tokens of an org's Dataverse root: signed, bound to the org, expiring.

A token names the org, who signed in (an application user by client id, or
an org user by id) and when it expires. It is signed with the app's secret
key (itsdangerous), so it is checked without a lookup; who it names is then
looked up on every request, so a revoked application user or a removed org
user is refused at once.
"""

import time
from dataclasses import dataclass
from enum import StrEnum

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "dataverse-access-token"
DEFAULT_LIFETIME_S = 3599  # what Entra answers in expires_in


class Principal(StrEnum):
    """Who a token was issued to."""

    APPLICATION = "application"  # client credentials: an application user's client id
    USER = "user"  # password grant: an org user's id


class TokenRefused(Exception):
    """A token that cannot be used here; `reason` says why (for the 401's description)."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True)
class AccessToken:
    """What a valid token says."""

    org: str
    principal: Principal
    subject: str  # client id or org user id
    expires: int  # epoch seconds


def issue_token(secret: str, org: str, principal: Principal, subject: str, *,
                lifetime_s: int = DEFAULT_LIFETIME_S, now: float | None = None) -> str:
    """A signed access token for `subject` on `org`, valid for `lifetime_s` seconds."""
    issued = int(time.time() if now is None else now)
    return URLSafeSerializer(secret, salt=SALT).dumps(
        {"o": org, "p": str(principal), "s": subject, "e": issued + lifetime_s})


def read_token(secret: str, org: str, token: str, *, now: float | None = None) -> AccessToken:
    """The token's claims if it is genuine, of this org and not expired; TokenRefused otherwise."""
    try:
        data = URLSafeSerializer(secret, salt=SALT).loads(token)
    except BadSignature:
        raise TokenRefused("the access token is not valid (altered or from another portal)"
                           ) from None
    if not isinstance(data, dict) or not {"o", "p", "s", "e"} <= data.keys() or \
            data["p"] not in set(Principal) or not isinstance(data["e"], int):
        raise TokenRefused("the access token is not valid")
    if data["o"] != org:
        raise TokenRefused("the access token was issued for another organization")
    if data["e"] <= (time.time() if now is None else now):
        raise TokenRefused("the access token has expired", expired=True)
    return AccessToken(data["o"], Principal(data["p"]), str(data["s"]), data["e"])

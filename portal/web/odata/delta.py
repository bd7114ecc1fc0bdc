"""Change tracking as Dataverse does it: signed delta tokens over the org's change feed.

A delta token is the org version a client has seen everything up to, signed
with the app's secret and bound to the org and the entity set. Following a
delta link reads portal.orgs.changes.changes_since from that version; since
versions are given out in commit order, continuing from ChangePage.next_version
neither skips nor repeats a change, however writes interleave with the reads.
A token the feed cannot continue (older than the history kept, see
portal.orgs.store.feed_start, or newer than the org) is ChangesExpired: a 400
the client answers by reading everything again (Dataverse: ExpiredVersionStamp).
"""

from itsdangerous import BadSignature, URLSafeSerializer

from portal.web.odata.messages import ErrorKind, ProtocolError

SALT = "odata-deltatoken"


def make_deltatoken(secret: str, org: str, set_name: str, version: int) -> str:
    """A signed token for "changes of this set in this org after `version`"."""
    return URLSafeSerializer(secret, salt=SALT).dumps({"o": org, "s": set_name, "v": version})


def token_error(message: str) -> ProtocolError:
    """400 for a delta token that is not ours (Dataverse: ExpiredVersionStamp, start over)."""
    error = ProtocolError(400, "BadRequest", message, kind=ErrorKind.DELTA_TOKEN_UNKNOWN)
    error.field = "$deltatoken"
    return error


def read_deltatoken(secret: str, org: str, set_name: str, token: str) -> int:
    """The version a delta token carries; 400 if altered or issued for another org or set."""
    try:
        data = URLSafeSerializer(secret, salt=SALT).loads(token)
    except BadSignature:
        raise token_error("$deltatoken is not valid (altered or from another portal)") from None
    if not isinstance(data, dict) or data.get("o") != org or data.get("s") != set_name:
        raise token_error("$deltatoken was issued for another organization or entity set")
    version = data.get("v")
    if not isinstance(version, int) or version < 0:
        raise token_error("$deltatoken is not valid")
    return version


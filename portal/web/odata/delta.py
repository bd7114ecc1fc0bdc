"""Change tracking as Dataverse does it: signed delta tokens over the org's change feed.

A delta token is the org version a client has seen everything up to, signed
with the app's secret and bound to the org and the entity set. Following a
delta link reads portal.orgs.changes.changes_since from that version; since
versions are given out in commit order, continuing from ChangePage.next_version
neither skips nor repeats a change, however writes interleave with the reads.
"""

from itsdangerous import BadSignature, URLSafeSerializer

from portal.web.odata.messages import bad_request

SALT = "odata-deltatoken"


def make_deltatoken(secret: str, org: str, set_name: str, version: int) -> str:
    """A signed token for "changes of this set in this org after `version`"."""
    return URLSafeSerializer(secret, salt=SALT).dumps({"o": org, "s": set_name, "v": version})


def read_deltatoken(secret: str, org: str, set_name: str, token: str) -> int:
    """The version a delta token carries; 400 if altered or issued for another org or set."""
    try:
        data = URLSafeSerializer(secret, salt=SALT).loads(token)
    except BadSignature:
        raise bad_request("$deltatoken is not valid (altered or from another portal)",
                          "$deltatoken") from None
    if not isinstance(data, dict) or data.get("o") != org or data.get("s") != set_name:
        raise bad_request("$deltatoken was issued for another organization or entity set",
                          "$deltatoken")
    version = data.get("v")
    if not isinstance(version, int) or version < 0:
        raise bad_request("$deltatoken is not valid", "$deltatoken")
    return version

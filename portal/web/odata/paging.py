"""Server-driven paging: signed $skiptoken values that carry where the next page starts.

A skiptoken holds the sort key of the last record sent (keyset paging), how
many records a $top still allows, the page size and, when changes are
tracked, the org version the read started at. It is signed with the app's
secret and bound to the org, the entity set and the query, so it can neither
be forged nor moved to another query.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from portal.web.odata.messages import bad_request

SALT = "odata-skiptoken"


@dataclass
class PageState:
    """Where a paged read continues."""

    after: list[Any]
    remaining: int | None  # records $top still allows, None without $top
    page_size: int
    version: int | None  # start version of a change-tracked read


def query_digest(org: str, set_name: str, filter_text: str | None, orderby: str | None) -> str:
    """A short fingerprint of what a skiptoken may continue."""
    text = "\0".join([org, set_name, filter_text or "", orderby or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_skiptoken(secret: str, digest: str, state: PageState) -> str:
    """The signed $skiptoken of the next page."""
    return URLSafeSerializer(secret, salt=SALT).dumps(
        {"q": digest, "k": state.after, "n": state.remaining, "p": state.page_size,
         "v": state.version})


def read_skiptoken(secret: str, digest: str, token: str) -> PageState:
    """The state a $skiptoken carries; 400 if it was altered or belongs to another query."""
    try:
        data = URLSafeSerializer(secret, salt=SALT).loads(token)
    except BadSignature:
        raise bad_request("$skiptoken is not valid (altered or from another portal)",
                          "$skiptoken") from None
    if not isinstance(data, dict) or data.get("q") != digest:
        raise bad_request("$skiptoken belongs to another query", "$skiptoken")
    return PageState(list(data["k"]), data["n"], int(data["p"]), data["v"])

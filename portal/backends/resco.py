"""The `resco` backend: an org hosted by a portal like this one, through its Org API."""

from portal.backends.odata import ODataBackend


class RescoBackend(ODataBackend):
    """Our own Org API (/odata/v4/{org}/): OData v4 with Dataverse's conventions, Basic auth."""

    kind = "resco"
    # Four entities at once, as Resco's own tuning found best. Safe: the reads share the
    # session, whose pool (urllib3, thread-safe) holds four connections; Basic auth and
    # headers are fixed at construction, and the backend keeps no other state.
    max_streams = 4

"""The `resco` backend: an org hosted by a portal like this one, through its Org API."""

from portal.backends.odata import ODataBackend


class RescoBackend(ODataBackend):
    """Our own Org API (/odata/v4/{org}/): OData v4 with Dataverse's conventions, Basic auth."""

    kind = "resco"

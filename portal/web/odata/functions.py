"""Dataverse's unbound functions at the service root: WhoAmI().

Microsoft Learn, "WhoAmI Function" / "Use Web API functions": the answer is
a WhoAmIResponse with the caller's UserId, BusinessUnitId and OrganizationId.
A hosted org has one business unit; the ids are stable GUIDs derived from
the org's name and the caller (an org user or an application user).
"""

import uuid
from typing import Any

from portal.web.odata.messages import ApiRequest, ApiResponse, json_response
from portal.web.odata.options import check_options

FUNCTIONS = ("WhoAmI", "WhoAmI()")


def stable_id(*names: object) -> str:
    """A GUID that names the same thing every time (org, business unit, user)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crm-sync:" + "/".join(map(str, names))))


def user_id(org: str, user: dict[str, Any]) -> str:
    """The caller's UserId as WhoAmI gives it."""
    return stable_id(org, user.get("kind", "user"), user["id"])


def whoami(req: ApiRequest) -> ApiResponse:
    """GET WhoAmI(): who the caller is in this org."""
    check_options(req.args, {"$format"})
    org = req.org.name
    return json_response({
        "@odata.context": req.service_root + "$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
        "BusinessUnitId": stable_id(org, "businessunit"),
        "UserId": user_id(org, req.user),
        "OrganizationId": stable_id(org, "organization"),
    })

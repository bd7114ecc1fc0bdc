"""The org admin (/admin/...): sign-in, and each org's CRM Sync section for its own admin.

Every page and action under /admin/{org}/ is for a signed-in admin of that
org only: a signed-out visitor is sent to the sign-in page, the admin of
another org (or a user who is no longer an admin) gets 403. The check runs
before every view of the blueprint (`guard`), so a new view cannot forget it.
"""

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.orgs import registry
from portal.sync import connections

bp = Blueprint("admin", __name__, url_prefix="/admin")

SESSION_KEY = "admin"
# Endpoints a signed-out visitor may reach.
OPEN_ENDPOINTS = {"admin.sign_in", "admin.sign_out"}


def sign_in_session(org: dict[str, Any], user: dict[str, Any]) -> None:
    """Start an admin session for this org and user (a new session: nothing carries over)."""
    session.clear()
    session[SESSION_KEY] = {"org": org["name"], "user": user["id"]}
    session.permanent = True


def signed_in_admin() -> tuple[str, dict[str, Any]] | None:
    """(org name, user row) of the session's admin if they still are one; else None."""
    value = session.get(SESSION_KEY)
    if not isinstance(value, dict) or not isinstance(value.get("user"), int):
        return None
    user = registry.get_user(get_db(), str(value.get("org")), value["user"])
    if user is None:
        return None
    return str(value["org"]), user


def safe_next(target: str | None, org: str) -> str | None:
    """A page of this org's admin to go to after sign-in; anything else (other sites) is None."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(f"/admin/{org}/"):
        return None
    return target


@bp.before_request
def guard() -> ResponseReturnValue | None:
    """Let only the signed-in admin of the org in the URL through."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    org = str((request.view_args or {}).get("org", ""))
    found = signed_in_admin()
    if found is None:
        session.pop(SESSION_KEY, None)
        return redirect(url_for("admin.sign_in", org=org or None,
                                next=request.full_path if request.method == "GET" else None))
    signed_org, user = found
    if signed_org != org:
        abort(403, f"You are signed in as an admin of {signed_org}; this page belongs to "
                   "another organization. Sign out and sign in as its admin.")
    if not user["is_admin"]:
        abort(403, "You are not an administrator of this organization.")
    g.admin = user
    g.org = registry.get_org(get_db(), org)
    g.connection = connections.connection_of_org(get_db(), org)
    return None


@bp.app_context_processor
def admin_context() -> dict[str, Any]:
    """Who is signed in, for the page header."""
    return {"admin_user": g.get("admin"), "admin_org": g.get("org")}


from portal.web.admin import applications, auth, customization, sync, tokens  # noqa: E402, F401  (views)

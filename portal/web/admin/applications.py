"""Application users of an org, for its admin: listed, created (secret shown once), revoked.

The same data-layer calls as `flask applications create|list|revoke`
(portal.orgs.application_users): a program signs in with the client id and
secret at the org's Dataverse token endpoint.
"""

from flask import abort, flash, g, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.errors import PortalError
from portal.orgs import application_users
from portal.web.admin import bp
from portal.web.admin.forms import ActionForm, ApplicationUserForm, add_error


def _page(form: ApplicationUserForm, created: dict[str, str] | None = None,
          status: int = 200) -> ResponseReturnValue:
    return render_template(
        "admin/applications.html", action_form=ActionForm(), form=form, created=created,
        applications=application_users.list_application_users(get_db(), g.org["name"])), status


@bp.route("/<org>/applications", methods=["GET", "POST"])
def applications(org: str) -> ResponseReturnValue:
    """The org's application users; create one (its client secret is shown this once)."""
    form = ApplicationUserForm()
    if form.validate_on_submit():
        try:
            row, secret = application_users.create_application_user(
                get_db(), org, form.name.data, admin=form.admin.data)
        except PortalError as refused:
            add_error(form, refused, {"name": "name"})
        else:
            return _page(ApplicationUserForm(formdata=None),
                         {"client_id": row["client_id"], "secret": secret}, 201)
    return _page(form, status=400 if form.errors or form.form_errors else 200)


@bp.post("/<org>/applications/<client_id>/revoke")
def revoke_application(org: str, client_id: str) -> ResponseReturnValue:
    """Revoke one of the org's application users (404 if it is not this org's, or revoked)."""
    ActionForm().validate_on_submit() or abort(400)
    application_users.revoke_application_user(get_db(), org, client_id)
    flash(f"Application user {client_id} revoked: its secret and tokens stop working now.",
          "info")
    return redirect(url_for("admin.applications", org=org))

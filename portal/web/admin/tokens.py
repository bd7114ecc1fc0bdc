"""API tokens of an org, for its admin: listed, created (shown once) and revoked."""

from flask import flash, g, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.errors import PortalError
from portal.orgs import tokens
from portal.web.admin import bp
from portal.web.admin.forms import ActionForm, TokenForm, add_error
from portal.web.admin.sync import TABS, run_state


def _page(form: TokenForm, created: str | None = None, status: int = 200) -> ResponseReturnValue:
    return render_template("admin/tokens.html", connection=g.connection, tabs=TABS,
                           run=run_state(g.connection), action_form=ActionForm(), form=form,
                           created=created, tokens=tokens.list_tokens(get_db(), g.org["name"])
                           ), status


@bp.route("/<org>/tokens", methods=["GET", "POST"])
def api_tokens(org: str) -> ResponseReturnValue:
    """The org's API tokens; create one for an org user (the token is shown this once)."""
    form = TokenForm()
    if not form.is_submitted():
        form.email.data = g.admin["email"]
    if form.validate_on_submit():
        try:
            _, token = tokens.create_token(get_db(), org, form.email.data)
        except PortalError as refused:
            add_error(form, refused, {"email": "email"})
        else:
            return _page(TokenForm(formdata=None, data={"email": form.email.data}), token, 201)
    return _page(form, status=400 if form.errors else 200)


@bp.post("/<org>/tokens/<int:token_id>/revoke")
def revoke_api_token(org: str, token_id: int) -> ResponseReturnValue:
    """Revoke one of the org's tokens (404 for a token that is not this org's, or revoked)."""
    ActionForm().validate_on_submit()
    tokens.revoke_token(get_db(), org, token_id)
    flash(f"Token {token_id} revoked: programs using it are refused from now on.", "info")
    return redirect(url_for("admin.api_tokens", org=org))

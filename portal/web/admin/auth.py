"""Signing in to and out of an org's admin."""

from flask import flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from portal.db import get_db
from portal.errors import NotFound
from portal.orgs import registry
from portal.web import auth_throttle
from portal.web.admin import SESSION_KEY, bp, safe_next, sign_in_session
from portal.web.admin.forms import ActionForm, SignInForm

REFUSED = "The organization, e-mail or password is wrong, or this user is not its admin."


@bp.route("/", methods=["GET", "POST"])
@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    """Sign in with the org's name, an admin's e-mail and password."""
    form = SignInForm(data={"organization": request.args.get("org", ""),
                            "next": request.args.get("next", "")}
                      if request.method == "GET" else None)
    if form.validate_on_submit():
        db = get_db()
        account = auth_throttle.account(form.organization.data, form.email.data)
        auth_throttle.check(account)  # too many failures: the 429 page, with Retry-After
        user = registry.authenticate(db, form.organization.data, form.email.data,
                                     form.password.data)
        # One answer for every kind of mismatch, a non-admin user included.
        if user is None or not user["is_admin"]:
            auth_throttle.failed(account)
            form.form_errors.append(REFUSED)
            return render_template("admin/sign_in.html", form=form), 401
        try:
            org = registry.get_org(db, form.organization.data)
        except NotFound:  # deleted between the check and now
            form.form_errors.append(REFUSED)
            return render_template("admin/sign_in.html", form=form), 401
        sign_in_session(org, user)
        return redirect(safe_next(form.next.data, org["name"])
                        or url_for("admin.home", org=org["name"]))
    status = 400 if form.errors else 200
    return render_template("admin/sign_in.html", form=form), status


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """End the admin session."""
    form = ActionForm()
    if form.validate_on_submit():
        session.pop(SESSION_KEY, None)
        session.clear()
        flash("You are signed out.", "info")
    return redirect(url_for("admin.sign_in"))

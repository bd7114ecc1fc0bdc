"""The operator's status page (/status): orgs, connections, queues, workers, failed jobs.

Behind an operator sign-in: the operators and their password hashes are the
OPERATORS setting (PORTAL_OPERATORS); with none configured nobody gets in.
The queue part reads RQ's own registries and worker API through portal.queue.
"""

import functools
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import InputRequired, Length

from portal import queue
from portal.db import get_db
from portal.orgs import registry
from portal.sync import connections, runs
from portal.web.forms import strip

bp = Blueprint("operator", __name__, url_prefix="/status")

SESSION_KEY = "operator"
OPEN_ENDPOINTS = {"operator.sign_in", "operator.sign_out"}


class OperatorSignInForm(FlaskForm):
    """Operator sign-in: a user name of the OPERATORS setting and its password."""

    username = StringField("Operator", filters=[strip], validators=[
        InputRequired("Enter your operator name."), Length(max=100)])
    password = PasswordField("Password", validators=[
        InputRequired("Enter your password."), Length(max=1024)])
    submit = SubmitField("Sign in")


class JobActionForm(FlaskForm):
    """Requeue or delete a failed job: only the CSRF token."""


def operators() -> dict[str, str]:
    """The configured operators (name -> password hash)."""
    configured = current_app.config.get("OPERATORS") or {}
    return {str(k): str(v) for k, v in configured.items()} if isinstance(configured, dict) else {}


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash("not-an-operator-0")


def check_operator(name: str, password: str) -> bool:
    """True when the name is an operator's and the password fits (same time either way)."""
    known = operators().get(name)
    if known is None:
        check_password_hash(_dummy_hash(), password)
        return False
    return check_password_hash(known, password)


@bp.before_request
def guard() -> ResponseReturnValue | None:
    """Only a signed-in operator who is still configured gets past the sign-in."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    name = session.get(SESSION_KEY)
    if not isinstance(name, str) or name not in operators():
        session.pop(SESSION_KEY, None)
        return redirect(url_for("operator.sign_in"))
    return None


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    """Operator sign-in."""
    form = OperatorSignInForm()
    if not operators():
        return render_template("operator/sign_in.html", form=None), 403 \
            if request.method == "POST" else 200
    if form.validate_on_submit():
        if check_operator(form.username.data, form.password.data):
            session.pop("admin", None)  # one person, one role per browser session
            session[SESSION_KEY] = form.username.data
            return redirect(url_for("operator.status"))
        form.form_errors.append("The operator name or password is wrong.")
        return render_template("operator/sign_in.html", form=form), 401
    return render_template("operator/sign_in.html", form=form), 400 if form.errors else 200


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """End the operator session."""
    if JobActionForm().validate_on_submit():
        session.pop(SESSION_KEY, None)
    return redirect(url_for("operator.sign_in"))


def _orgs() -> list[dict[str, Any]]:
    db = get_db()
    by_org = {c.org_id: c for c in connections.list_connections(db)}
    last, errors = runs.last_runs(db), runs.last_errors(db)
    rows = []
    for org in registry.list_orgs(db):
        connection = by_org.get(org["id"])
        rows.append({"org": org, "connection": connection,
                     "last_run": last.get(connection.id) if connection else None,
                     "last_error": errors.get(connection.id) if connection else None})
    return rows


@bp.get("")
def status() -> ResponseReturnValue:
    """Every org and connection; queues, workers, failed jobs; the scheduler's heartbeat."""
    redis = queue.get_redis()
    return render_template(
        "operator/status.html", orgs=_orgs(), queues=queue.queue_states(redis),
        workers=queue.worker_states(redis), failed=queue.failed_jobs(redis),
        schedulers=queue.scheduler_states(redis), heartbeat=queue.cron_heartbeat(redis),
        form=JobActionForm(), operator=session.get(SESSION_KEY))


@bp.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str) -> ResponseReturnValue:
    """Requeue or delete a failed job."""
    if action not in ("requeue", "delete"):
        abort(404)
    JobActionForm().validate_on_submit() or abort(400)
    try:
        if action == "requeue":
            queue.requeue_failed(queue.get_redis(), job_id)
            flash(f"Job {job_id} is queued again.", "info")
        else:
            queue.delete_failed(queue.get_redis(), job_id)
            flash(f"Job {job_id} deleted.", "info")
    except LookupError as refused:
        abort(404, str(refused))
    return redirect(url_for("operator.status"))

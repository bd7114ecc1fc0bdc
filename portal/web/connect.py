"""The connect page (a new client org and its server) and the status page of its connection.

The page is at the address Resco users know, /Register.aspx?otype=connect, and
at /connect. After Connect the browser goes to the connection's status page,
reachable only with the signed token in its link, which follows the connect
job (a small script polls status.json; without JavaScript the page refreshes
itself) and, when the job failed or its worker died, lets the person resume
with the same server values (the first sync goes on from its last committed
page) or fix the server values and try again.
"""

from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeSerializer

from portal.crypto import load_key
from portal.db import get_db
from portal.errors import InvalidInput, PortalError
from portal.orgs.store import orgs_path
from portal.queue import Job, enqueue_run, get_redis
from portal.sync import connections, runs
from portal.sync.connections import Connection, ConnectionStatus
from portal.sync.registration import reconnect, register_connection
from portal.web import rate_limits
from portal.web.forms import ConnectForm, ResumeForm, RetryForm

bp = Blueprint("connect", __name__)

TOKEN_SALT = "connect-status"
# The connect job's steps in order, by the `step` it reports in its progress.
STEPS = (
    ("checking credentials", "Checking the server credentials"),
    ("copying metadata", "Copying the server's metadata and creating the client's tables"),
    ("download", "First sync of each entity"),
    ("connected", "Connected"),
)
STEP_INDEX = {key: i for i, (key, _) in enumerate(STEPS)}
FINAL = (ConnectionStatus.CONNECTED, ConnectionStatus.FAILED)


def status_token(connection: Connection) -> str:
    """A signed token for the status of this org's connection (the app secret signs it)."""
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT).dumps(
        [connection.org_name, connection.id])


def token_connection(org: str, token: str | None) -> Connection | None:
    """The connection a status token was made for, if it is this org's; else None."""
    try:
        signed = URLSafeSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT).loads(
            token or "")
    except BadSignature:
        return None
    connection = connections.connection_of_org(get_db(), org)
    # The id is part of the token: a token of a deleted org does not fit a new one of that name.
    if connection is None or signed != [org, connection.id]:
        return None
    return connection


def connection_for_token(org: str, token: str | None) -> Connection:
    """The connection a status token was made for, if it is this org's; else 404."""
    connection = token_connection(org, token)
    if connection is None:
        abort(404)
    return connection


def status_url(connection: Connection, **kwargs: Any) -> str:
    """The status page's address, token included."""
    return url_for("connect.status", org=connection.org_name, token=status_token(connection),
                   **kwargs)


def odata_root(org: str) -> str:
    """Where the org's OData service is (the org admin will replace it as the place to go)."""
    return url_for("api.service", org=org, resource="", _external=True)


def state(connection: Connection) -> dict[str, Any]:
    """What the status page shows, as JSON: status, steps with their state, progress."""
    progress = connection.progress or {}
    current = STEP_INDEX.get(progress.get("step") or "", -1)
    if connection.status == ConnectionStatus.PENDING:
        # Waiting for a worker; progress left by an earlier, failed attempt does not count.
        progress, current = {}, -1
    elif connection.status == ConnectionStatus.CONNECTED:
        current = len(STEPS)
    elif connection.status == ConnectionStatus.FAILED and current < 0:
        current = 0  # failed before its first report: at the start
    steps = []
    for i, (key, label) in enumerate(STEPS):
        if i < current:
            step_state = "done"
        elif i == current:
            step_state = "failed" if connection.status == ConnectionStatus.FAILED else "running"
        else:
            step_state = "todo"
        steps.append({"step": key, "label": label, "state": step_state})
    done, total = progress.get("done"), progress.get("total")
    percent = None
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        percent = min(100, round(100 * done / total))
    # A connect going on from the pages an interrupted one committed (after a kill,
    # a failure): the page says so instead of "connecting".
    resuming = connection.status not in FINAL and runs.resuming(
        get_db(), _orgs_dir(), connection.id, connection.org_name)
    return {"org": connection.org_name, "status": connection.status, "resuming": resuming,
            "error": connection.error, "progress": progress, "percent": percent,
            "steps": steps, "final": connection.status in FINAL,
            "odata_root": odata_root(connection.org_name)}


def queue_run(connection: Connection, kind: str, trigger: str) -> tuple[Job, int, bool]:
    """Ask for a run of the connection and enqueue its job: (job, run id, already there).

    A run of that kind queued or running already is the answer instead of a new one.
    """
    db = get_db()
    run_id, existing = runs.request_run(db, connection.id, connection.org_id, kind, trigger)
    return enqueue_run(get_redis(), kind, connection.id, run_id, trigger), run_id, existing


def _orgs_dir() -> Path:
    return orgs_path(current_app)


@bp.route("/Register.aspx", methods=["GET", "POST"])
@bp.route("/connect", methods=["GET", "POST"])
def connect() -> ResponseReturnValue:
    """The connect page: a new org, its admin, and the server it is to be the client of."""
    if request.path == "/Register.aspx" and request.args.get("otype", "").lower() != "connect":
        abort(404)  # Resco's page does more with other otypes; this portal only connects
    if request.method == "POST":
        rate_limits.hit("connect")
    form = ConnectForm()
    if form.validate_on_submit():
        try:
            connection = register_connection(
                get_db(), _orgs_dir(), load_key(current_app.instance_path),
                form.registration(),
                allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"])
        except InvalidInput as refused:
            form.add_error(refused)
        except PortalError as refused:  # e.g. the name was taken a moment ago
            form.add_error(InvalidInput(refused.message, field=refused.field))
        else:
            queue_run(connection, "connect", "connect")
            flash(f"Organization {connection.org_name} created. Connecting it to the server now; "
                  "keep this page's address to come back to it.", "info")
            return redirect(status_url(connection))
    return render_template("connect/connect.html", form=form)


@bp.get("/connect/<org>/status")
def status(org: str) -> ResponseReturnValue:
    """The connection's status page: steps, progress, and the end (Connected or Failed)."""
    connection = connection_for_token(org, request.args.get("token"))
    form = RetryForm(formdata=None, data={
        "backend": connection.backend, "server_url": connection.url,
        "server_username": connection.username,
        "server_auth": connection.server_options.get("auth", "password"),
        "server_tenant": connection.server_options.get("tenant"),
        "server_client_id": connection.server_options.get("client_id"),
        "server_consumer_key": connection.server_options.get("consumer_key")})
    return _status_page(connection, form)


@bp.get("/connect/<org>/status.json")
def status_json(org: str) -> ResponseReturnValue:
    """The status page's state as JSON, polled by progress.js."""
    connection = connection_for_token(org, request.args.get("token"))
    response = jsonify(state(connection))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/connect/<org>/retry")
def retry(org: str) -> ResponseReturnValue:
    """Fix a failed connection's server values and run the connect job again."""
    connection = connection_for_token(org, request.args.get("token"))
    rate_limits.hit("connect")
    form = RetryForm()
    if connection.status != ConnectionStatus.FAILED:
        flash("The connection has not failed: there is nothing to try again.", "error")
        return redirect(status_url(connection))
    if form.validate_on_submit():
        try:
            connection = reconnect(
                get_db(), orgs_path(current_app), load_key(current_app.instance_path),
                connection, backend=form.backend.data, url=form.server_url.data,
                username=form.server_username.data, password=form.server_password.data,
                allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"],
                server_options=form.server_options())
        except InvalidInput as refused:
            form.add_error(refused)
        else:
            queue_run(connection, "connect", "connect")
            flash("Server details changed. Connecting again.", "info")
            return redirect(status_url(connection))
    return _status_page(connection, form), 400


@bp.post("/connect/<org>/resume")
def resume(org: str) -> ResponseReturnValue:
    """Run a failed (or abandoned) connect again with the same server values; it resumes."""
    connection = connection_for_token(org, request.args.get("token"))
    rate_limits.hit("connect")
    if not ResumeForm().validate_on_submit():
        abort(400)
    if connection.status != ConnectionStatus.FAILED:
        flash("The connection has not failed: there is nothing to resume.", "error")
    else:
        queue_run(connection, "connect", "connect")
        flash("Connecting again with the same server values: the first sync goes on "
              "from where it stopped.", "info")
    return redirect(status_url(connection))


def _status_page(connection: Connection, form: RetryForm) -> str:
    return render_template(
        "connect/status.html", connection=connection, state=state(connection), form=form,
        json_url=url_for("connect.status_json", org=connection.org_name,
                         token=status_token(connection)),
        retry_url=url_for("connect.retry", org=connection.org_name,
                          token=status_token(connection)),
        resume_url=url_for("connect.resume", org=connection.org_name,
                           token=status_token(connection)), resume_form=ResumeForm())


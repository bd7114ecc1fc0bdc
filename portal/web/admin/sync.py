"""The CRM Sync section of an org's admin: toolbar and tabs, each change one data-layer call.

Tabs: Synchronization (entities), Offline Transactions, Sync Job, Connection,
Logs, Runs; toolbar: Sync All, Update Client Metadata (preview, then apply),
Sync Filter (per entity), Connector. Pages are drawn on the server and work
without JavaScript; admin.js only follows a running job's progress.
"""

import json
from pathlib import Path
from typing import Any

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from portal import crypto
from portal.db import get_db
from portal.errors import InvalidInput
from portal.orgs import transactions
from portal.orgs.store import OrgDb, orgs_path
from portal.queue import check_result, enqueue_check, get_redis, is_check_of, job_state
from portal.sync import connections, filters, overview, registration, runs
from portal.sync.connections import Connection
from portal.sync.runs import RunStatus
from portal.sync.streams import MAX_STREAMS
from portal.web.admin import bp, filter_editor
from portal.web.admin.charts import run_chart
from portal.web.admin.forms import (
    ActionForm,
    ConnectorForm,
    CredentialsForm,
    DisconnectForm,
    EntitiesForm,
    FilterXmlForm,
    LogSearchForm,
    ScheduleForm,
    SettingsForm,
    TransactionsForm,
    add_error,
)
from portal.web.connect import queue_run
from portal.web.odata.connections import org_connection

PAGE_SIZE = 50
TABS = (("admin.entities", "Synchronization"), ("admin.transactions", "Offline Transactions"),
        ("admin.job", "Sync Job"), ("admin.connection", "Connection"), ("admin.logs", "Logs"),
        ("admin.runs", "Runs"))


# --- what every page has at hand ---------------------------------------------

def _orgs_dir() -> Path:
    return Path(current_app.instance_path) / current_app.config["ORGS_DIR"]


def _key() -> bytes:
    return crypto.load_key(current_app.instance_path)


def _org() -> OrgDb:
    return org_connection(_orgs_dir(), g.org["name"])


def _connection() -> Connection:
    """The org's connection; pages of a connection redirect (or, posted, 409) without one."""
    connection: Connection | None = g.connection
    if connection is None:
        if request.method == "GET":
            flash("This organization is not connected to a server yet: connect it here.", "info")
            abort(redirect(url_for("admin.connector", org=g.org["name"])))
        abort(409, "This organization is not connected to a server: use the Connector first.")
    return connection


def _back(endpoint: str, **args: Any) -> ResponseReturnValue:
    return redirect(url_for(endpoint, org=g.org["name"], **args))


def run_state(connection: Connection | None) -> dict[str, Any]:
    """Whether a job works on the connection now, and how far it is (for the progress bar)."""
    if connection is None:
        return {"state": "none"}
    running = runs.running_run(get_db(), connection.id)
    if running is None:
        # The registry records a run before its job is queued: a queued run is waiting
        # for a worker (or for the dispatcher to enqueue it again, if Redis lost it).
        queued = runs.running_run(get_db(), connection.id, RunStatus.QUEUED)
        if queued is not None:
            return {"state": "queued", "kind": queued["kind"], "job_status": "queued",
                    "status": connection.status, "resuming": _resuming(connection)}
        return {"state": "idle", "kind": None, "status": connection.status}
    progress = connection.progress or {}
    done, total = progress.get("done"), progress.get("total")
    percent = None
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        percent = min(100, round(100 * done / total))
    return {"state": "running", "kind": running["kind"], "run": running["id"],
            "trigger": running["trigger"], "started": running["started"],
            "progress": progress, "percent": percent, "status": connection.status,
            "resuming": _resuming(connection)}


def _resuming(connection: Connection) -> bool:
    """Whether the queued or running connect or sync goes on from an interrupted one's pages."""
    return runs.resuming(get_db(), orgs_path(current_app), connection.id, connection.org_name)


def _page(template: str, **context: Any) -> str:
    connection: Connection | None = g.connection
    return render_template(template, connection=connection, tabs=TABS,
                           run=run_state(connection), action_form=ActionForm(), **context)


@bp.get("/<org>/")
def home(org: str) -> ResponseReturnValue:
    """The org's admin: Synchronization when connected, else the Connector."""
    if g.connection is None:
        return _back("admin.connector")
    return _back("admin.entities")


@bp.get("/<org>/sync/progress.json")
def progress(org: str) -> ResponseReturnValue:
    """The running job's state as JSON, polled by admin.js."""
    response = jsonify(run_state(g.connection))
    response.headers["Cache-Control"] = "no-store"
    return response


# --- toolbar -----------------------------------------------------------------

@bp.post("/<org>/sync/run")
def sync_all(org: str) -> ResponseReturnValue:
    """Sync All / Run Now: enqueue a sync run (one at a time per connection)."""
    connection = _connection()
    ActionForm().validate_on_submit() or abort(400)
    if connection.status != "connected":
        flash(f"The connection is {connection.status}: it can sync once it is connected.",
              "error")
    else:
        queue_run(connection, "sync", "button")
        flash("Sync run started.", "info")
    return redirect(_return_to() or url_for("admin.runs", org=org))


def _return_to() -> str | None:
    target = request.form.get("return_to", "")
    return target if target.startswith(f"/admin/{g.org['name']}/") else None


def _check(kind: str, connection: Connection) -> dict[str, Any] | None:
    """The check named by ?check= on the page: None for none; 'checking', or its result.

    A check of another connection, or one Redis no longer keeps, is a 404.
    """
    job_id = request.args.get("check")
    if not job_id:
        return None
    if not is_check_of(job_id, kind, connection.id):
        abort(404, "There is no such check of this connection.")
    found = job_state(get_redis(), job_id)
    if found is None:
        abort(404, "This check is no longer kept: start it again.")
    if not found.ended:
        return {"checking": True, "id": job_id}
    if found.status != "finished":
        return {"checking": False, "id": job_id, "error": f"the check failed ({found.failure})"}
    result = check_result(get_redis(), job_id) or {}
    return {"checking": False, "id": job_id, **result}


def _start_check(kind: str, endpoint: str) -> ResponseReturnValue:
    """Enqueue a check of the connection's server and show the page that waits for it."""
    connection = _connection()
    ActionForm().validate_on_submit() or abort(400)
    job = enqueue_check(get_redis(), kind, connection.id)
    return _back(endpoint, check=job.id)


@bp.post("/<org>/sync/metadata/check")
def metadata_check(org: str) -> ResponseReturnValue:
    """Update Client Metadata, first step: read the server's metadata in a job."""
    return _start_check("preview", "admin.metadata_preview")


@bp.get("/<org>/sync/metadata")
def metadata_preview(org: str) -> ResponseReturnValue:
    """Update Client Metadata: "checking…" while the job reads the server, then what changes."""
    check = _check("preview", _connection())
    return _page("admin/metadata.html", check=check,
                 checking=bool(check and check["checking"]))


@bp.post("/<org>/sync/metadata")
def metadata_apply(org: str) -> ResponseReturnValue:
    """Update Client Metadata, second step: enqueue the update job."""
    connection = _connection()
    ActionForm().validate_on_submit() or abort(400)
    if connection.status != "connected":
        abort(409, f"The connection is {connection.status}: metadata can be updated once it is "
                   "connected.")
    queue_run(connection, "metadata", "button")
    flash("Updating the client's metadata from the server.", "info")
    return _back("admin.runs")


@bp.route("/<org>/sync/connector", methods=["GET", "POST"])
def connector(org: str) -> ResponseReturnValue:
    """Connector: connect this org to a server org (again, after a failed connect)."""
    connection: Connection | None = g.connection
    if connection is not None and connection.status in ("connected", "connecting"):
        if request.method == "POST":
            abort(409, f"This organization is {connection.status} already.")
        return _page("admin/connector.html", form=None)
    form = ConnectorForm() if request.method == "POST" else ConnectorForm(
        formdata=None, data={"backend": connection.backend, "server_url": connection.url,
                             "server_username": connection.username} if connection else None)
    if form.validate_on_submit():
        db = get_db()
        allow_private = current_app.config["ALLOW_PRIVATE_SERVERS"]
        try:
            if connection is None:
                connection = registration.connect_existing(
                    db, _key(), g.org["id"], backend=form.backend.data,
                    url=form.server_url.data, username=form.server_username.data,
                    password=form.server_password.data, allow_private=allow_private,
                    server_options=form.server_options())
                queue_run(connection, "connect", "connector")
            else:
                connection = registration.reconnect(
                    db, orgs_path(current_app), _key(), connection, backend=form.backend.data,
                    url=form.server_url.data, username=form.server_username.data,
                    password=form.server_password.data, allow_private=allow_private,
                    server_options=form.server_options())
                queue_run(connection, "connect", "connector")
        except InvalidInput as refused:
            form.add_error(refused)
        else:
            flash("Connecting to the server: the first sync follows.", "info")
            return _back("admin.connector")
    return _page("admin/connector.html", form=form), 400 if form.errors else 200


# --- Synchronization -----------------------------------------------------------

@bp.route("/<org>/sync/", methods=["GET", "POST"])
def entities(org: str) -> ResponseReturnValue:
    """Synchronization: the server's entities; enable/disable or Sync Deletion, many at once."""
    connection = _connection()
    form = EntitiesForm()
    search = request.args.get("q", "")[:overview.MAX_SEARCH_LENGTH]
    if form.validate_on_submit():
        try:
            changed = connections.configure_entities(
                get_db(), connection.id, request.form.getlist("entity"),
                **EntitiesForm.CHANGES[form.action.data])
        except InvalidInput as refused:
            add_error(form, refused, {"entities": "action"})
        else:
            flash(f"{changed} entities changed: the next run follows the new settings.", "info")
            return _back("admin.entities", q=search or None)
    rows = overview.entity_rows(get_db(), _org(), connection.id, search)
    status = 400 if request.method == "POST" else 200
    return _page("admin/entities.html", form=form, rows=rows, search=search), status


def _entity_of(connection: Connection, entity: str) -> Any:
    """An entity of the connection's server with its client metadata; 404 otherwise."""
    settings = {s.entity: s for s in connections.entity_settings(get_db(), connection.id)}
    definition = _org().entities().get(entity)
    if entity not in settings or definition is None:
        abort(404, f"The server has no entity {entity!r} in this connection.")
    return settings[entity], definition


@bp.route("/<org>/sync/entities/<entity>/filter", methods=["GET", "POST"])
def sync_filter(org: str, entity: str) -> ResponseReturnValue:
    """Sync Filter: edit an entity's filter as rows (no script needed); save or clear it."""
    connection = _connection()
    setting, definition = _entity_of(connection, entity)
    form = ActionForm()
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        command = request.form.get("edit", "")
        try:
            tree = filter_editor.from_form(request.form)
            if command == "clear":
                connections.configure_entity(get_db(), connection.id, entity, filter_xml=None)
                flash(f"Sync filter of {entity} cleared: the next run brings all its records.",
                      "info")
                return _back("admin.sync_filter", entity=entity)
            if command == "save":
                built, errors = filter_editor.to_filter(tree, definition)
                if built is not None:
                    connections.configure_entity(get_db(), connection.id, entity,
                                                 filter_xml=built.to_xml())
                    flash(f"Sync filter of {entity} saved: the next run applies it.", "info")
                    return _back("admin.sync_filter", entity=entity)
            else:
                filter_editor.edit(tree, command)
        except InvalidInput as refused:
            errors = {"0": refused.message[:1].upper() + refused.message[1:]}
            tree = filter_editor.from_filter(
                filters.parse_filter(setting.filter) if setting.filter else None)
    else:
        tree = filter_editor.from_filter(
            filters.parse_filter(setting.filter) if setting.filter else None)
    return _filter_page(setting, definition, tree, errors, FilterXmlForm(formdata=None)), \
        400 if errors else 200


def _filter_page(setting: Any, definition: Any, tree: filter_editor.EditGroup,
                 errors: dict[str, str], xml_form: FilterXmlForm) -> str:
    attributes = filter_editor.attributes(definition)
    by_name = {a.logicalname: a for a in attributes}
    return _page("admin/filter.html", setting=setting, entity=definition,
                 rows=filter_editor.rows(tree, errors), attributes=attributes,
                 inputs={name: filter_editor.input_of(a) for name, a in by_name.items()},
                 operators=filter_editor.OPERATOR_LABELS, list_operators=filters.LIST_OPERATORS,
                 no_value_operators=filters.NO_VALUE_OPERATORS, xml_form=xml_form)


@bp.post("/<org>/sync/entities/<entity>/filter/import")
def import_filter(org: str, entity: str) -> ResponseReturnValue:
    """Sync Filter: save a filter pasted as FetchXML (<filter>, or a <fetch> naming the entity)."""
    connection = _connection()
    setting, definition = _entity_of(connection, entity)
    xml_form = FilterXmlForm()
    if xml_form.validate_on_submit():
        try:
            connections.set_filter(get_db(), connection.id, definition, xml_form.fetchxml.data)
        except InvalidInput as refused:
            add_error(xml_form, refused, {"filter": "fetchxml"})
        else:
            flash(f"Sync filter of {entity} imported: the next run applies it.", "info")
            return _back("admin.sync_filter", entity=entity)
    tree = filter_editor.from_filter(
        filters.parse_filter(setting.filter) if setting.filter else None)
    return _filter_page(setting, definition, tree, {}, xml_form), 400


@bp.get("/<org>/sync/entities/<entity>/filter.xml")
def export_filter(org: str, entity: str) -> ResponseReturnValue:
    """Sync Filter: the saved filter as a FetchXML file."""
    setting, _ = _entity_of(_connection(), entity)
    if not setting.filter:
        abort(404, f"{entity} has no sync filter.")
    return Response(setting.filter, mimetype="application/xml", headers={
        "Content-Disposition": f'attachment; filename="{entity}-filter.xml"'})


# --- Offline Transactions ---------------------------------------------------------

def _id_arg(name: str) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit():
        abort(400, f"{name} must be a transaction id.")
    return int(value)


@bp.route("/<org>/sync/transactions", methods=["GET", "POST"], endpoint="transactions")
def transactions_tab(org: str) -> ResponseReturnValue:
    """Offline Transactions by status, newest first; Set to Pending / Archived, Set all."""
    _connection()
    status = request.args.get("status") or None
    if status is not None and status not in set(transactions.TransactionStatus):
        abort(400, f"Unknown status {status!r}.")
    form = TransactionsForm()
    org_db = _org()
    if form.validate_on_submit():
        ids = [int(i) for i in request.form.getlist("id") if i.isdigit()]
        if form.action.data == "all-pending":
            changed = transactions.set_all_pending(org_db)
        elif not ids:
            form.action.errors = ["Tick the transactions to change first."]
            changed = -1
        elif form.action.data == "pending":
            changed = transactions.set_pending(org_db, ids)
        else:
            changed = transactions.set_archived(org_db, ids)
        if changed >= 0:
            flash(f"{changed} transactions changed.", "info")
            return _back("admin.transactions", status=status)
    page = transactions.page_transactions(org_db, status, before=_id_arg("before"),
                                          after=_id_arg("after"), limit=PAGE_SIZE)
    return _page("admin/transactions.html", form=form, page=page, status=status,
                 counts=transactions.counts(org_db),
                 changes=lambda t: json.dumps(t.changes, ensure_ascii=False)[:300]), \
        400 if request.method == "POST" else 200



# --- Sync Job -------------------------------------------------------------------

@bp.route("/<org>/sync/job", methods=["GET", "POST"])
def job(org: str) -> ResponseReturnValue:
    """Sync Job: the schedule (every N minutes/hours or daily at HH:MM UTC), Run Now."""
    connection = _connection()
    if request.method == "POST":
        form = ScheduleForm()
    else:
        every = connection.schedule_every_minutes
        form = ScheduleForm(formdata=None, data={
            "kind": "daily" if connection.schedule_daily_at else "every",
            "every": str((every // 60 if every and every % 60 == 0 else every) or 15),
            "unit": "h" if every and every % 60 == 0 else "m",
            "daily_at": connection.schedule_daily_at or "",
            "active": connection.schedule_active})
    if form.validate_on_submit():
        try:
            connections.set_schedule(get_db(), connection.id, **form.schedule())
        except InvalidInput as refused:
            add_error(form, refused, {"every": "every", "daily_at": "daily_at"})
        else:
            flash("Schedule saved.", "info")
            return _back("admin.job")
    return _page("admin/job.html", form=form), 400 if form.errors else 200


# --- Connection -----------------------------------------------------------------

@bp.get("/<org>/sync/connection")
def connection(org: str) -> ResponseReturnValue:
    """Connection: write mode, conflict policy, streams, server credentials, disconnect."""
    current = _connection()
    return _connection_page(current)


def _connection_page(current: Connection, settings: SettingsForm | None = None,
                     credentials: CredentialsForm | None = None,
                     disconnect_form: DisconnectForm | None = None) -> str:
    settings = settings or SettingsForm(formdata=None, data={
        "write_mode": "offline" if current.write_offline else "instant",
        "conflict_policy": current.conflict_policy,
        "streams": str(current.streams or "")})
    credentials = credentials or CredentialsForm(formdata=None, data={
        "server_username": current.username})
    check = _check("credentials", current) if request.method == "GET" else None
    open_counts = transactions.counts(_org())
    return _page("admin/connection.html", settings=settings, credentials=credentials,
                 check=check, checking=bool(check and check["checking"]),
                 disconnect_form=disconnect_form or DisconnectForm(formdata=None),
                 streams=connections.planned_streams(get_db(), current,
                                                     current_app.config["SYNC_STREAMS"]),
                 default_streams=current_app.config["SYNC_STREAMS"], max_streams=MAX_STREAMS,
                 unsent=sum(open_counts[s] for s in transactions.OPEN))


@bp.post("/<org>/sync/connection/settings")
def connection_settings(org: str) -> ResponseReturnValue:
    """Save the write mode, the conflict policy and the streams."""
    current = _connection()
    form = SettingsForm()
    if form.validate_on_submit():
        connections.update_settings(get_db(), current.id,
                                    write_offline=form.write_mode.data == "offline",
                                    conflict_policy=form.conflict_policy.data,
                                    streams=form.streams.data)
        flash("Settings saved.", "info")
        return _back("admin.connection")
    return _connection_page(current, settings=form), 400


@bp.post("/<org>/sync/connection/credentials")
def connection_credentials(org: str) -> ResponseReturnValue:
    """Change the server user name and password."""
    current = _connection()
    form = CredentialsForm()
    if form.validate_on_submit():
        try:
            connections.change_credentials(get_db(), _key(), current.id,
                                           username=form.server_username.data,
                                           password=form.server_password.data)
        except InvalidInput as refused:
            add_error(form, refused, {"username": "server_username",
                                      "password": "server_password"})
        else:
            flash("Server credentials saved. Test them with Test credentials.", "info")
            return _back("admin.connection")
    return _connection_page(current, credentials=form), 400


@bp.post("/<org>/sync/connection/test")
def connection_test(org: str) -> ResponseReturnValue:
    """Test the stored server credentials, in a job; the Connection tab shows the answer."""
    return _start_check("credentials", "admin.connection")


@bp.post("/<org>/sync/connection/disconnect")
def disconnect(org: str) -> ResponseReturnValue:
    """Disconnect: the org keeps its data and stops syncing; unsent changes only if archived."""
    current = _connection()
    form = DisconnectForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        archived = registration.disconnect(get_db(), _org(), current.id,
                                           archive_open=form.archive_open.data)
    except InvalidInput as refused:
        add_error(form, refused, {"archive_open": "archive_open"})
        return _connection_page(current, disconnect_form=form), 409
    flash("Disconnected. The organization keeps its entities and records."
          + (f" Changes archived that were not on the server: {archived}." if archived
             else ""), "info")
    return _back("admin.connector")


# --- Logs and Runs ---------------------------------------------------------------

@bp.get("/<org>/sync/logs")
def logs(org: str) -> ResponseReturnValue:
    """Logs: level, run, entity, text search; newest first, a page at a time."""
    form = LogSearchForm(request.args)
    page = None
    if form.validate():
        query = runs.LogQuery(level=form.level.data or None, run_id=form.run.data,
                              entity=form.entity.data or None, text=form.text.data or None)
        page = runs.search_logs(get_db(), g.org["id"], query, before=form.before.data,
                                limit=PAGE_SIZE)
    args = {k: v for k, v in request.args.items() if k != "before" and v}
    return _page("admin/logs.html", form=form, page=page, args=args), \
        200 if page is not None else 400


@bp.get("/<org>/sync/runs", endpoint="runs")
def runs_tab(org: str) -> ResponseReturnValue:
    """Runs: history with trigger, duration and counts, and a chart of the last runs."""
    history = runs.list_runs(get_db(), g.org["id"], limit=100)
    return _page("admin/runs.html", history=history, chart=run_chart(history))


"""`flask sync …`: connect orgs to servers, run and watch their jobs, schedule them, see state.

The commands enqueue the same jobs as the web (portal.queue) and leave the
work to a worker. With `--wait` a command polls the job in Redis (its
meta["progress"]) and, once the job is gone, the connection's progress and
run record in the registry, so it works with a worker on any machine that
reaches the same Redis; RQ is reached only through portal.queue. A refused
input prints its reason and exits 1, having written and enqueued nothing.
"""

import sys
import time
from typing import Any

import click
from flask import current_app
from redis import Redis
from sqlite_utils import Database

from portal import crypto
from portal.backends.registry import available_backend
from portal.backends.server_urls import check_server_url
from portal.cli.base import OneOf, PortalGroup
from portal.db import get_db
from portal.errors import InvalidInput, PortalError
from portal.orgs import registry, transactions
from portal.orgs.store import open_org, orgs_path
from portal.queue import JobState, enqueue_run, get_redis, job_state
from portal.sync import connections, registration, runs
from portal.sync.connections import Connection

sync_cli = PortalGroup("sync",
                       help="Connect hosted orgs to server orgs; run, watch and schedule syncs.")

POLL_S = 0.2
COUNTS = ("downloaded", "uploaded", "deleted", "conflicts", "errors")
wait_option = click.option("--wait", is_flag=True,
                           help="Wait for the job, showing its progress; exit 1 if it fails.")
timeout_option = click.option("--timeout", type=float, default=None, metavar="SECONDS",
                              help="With --wait: stop waiting after this long (exit 1); "
                                   "the job carries on.")


# --- looking things up -------------------------------------------------------

def connection_of(db: Database, org: str, *, connected: bool = True) -> Connection:
    """An existing org's connection, refused when it has none (or, if asked, is not connected)."""
    registry.get_org(db, org)  # NotFound names an unknown org before "not connected"
    connection = connections.connection_of_org(db, org)
    if connection is None:
        raise InvalidInput(f"organization {org!r} is not connected (see `flask sync connect`)")
    if connected and connection.status != "connected":
        reason = f": {connection.error}" if connection.error else ""
        if connection.status in ("failed", "pending"):
            reason += (" (`flask sync resume` connects it again with the same server values; "
                       "`flask sync connect` with new ones)")
        raise InvalidInput(f"organization {org!r} is not connected: its connection is "
                           f"{connection.status}{reason}")
    return connection


def queue_run(db: Database, connection: Connection, kind: str) -> tuple[str, int]:
    """Ask for a run of the connection (or find the one queued or running) and enqueue its job.

    Returns the job's id and the run's.
    """
    trigger = "connect" if kind == "connect" else "cli"  # a connect's trigger is itself
    run_id, _ = runs.request_run(db, connection.id, connection.org_id, kind, trigger)
    return enqueue_run(get_redis(), kind, connection.id, run_id, trigger).id, run_id


# --- waiting for a job -------------------------------------------------------

class Progress:
    """A job's progress: one `\\r` bar on a terminal, else a line per step or entity change."""

    WIDTH = 30

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.last: tuple[Any, ...] | None = None
        self.drawn = 0  # length of the bar line on screen, to blank a longer one

    def show(self, state: dict[str, Any] | None) -> None:
        """Render a progress state {"step","entity","done","total"}, if it says something new."""
        if not state or not state.get("step"):
            return
        step, entity = state["step"], state.get("entity")
        done, total = int(state.get("done") or 0), state.get("total")
        label = f"{step} {entity}" if entity else str(step)
        if self.tty:
            if (step, entity, done, total) == self.last:
                return
            if self.last is not None and self.last[:2] != (step, entity):
                self.close()  # a finished step or entity keeps its line; the next gets its own
            self.last = (step, entity, done, total)
            if total:
                filled = min(self.WIDTH, self.WIDTH * done // max(int(total), 1))
                line = f"{label:<32} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
            else:
                line = f"{label:<32} {done}" if done else label
            click.echo("\r" + line.ljust(self.drawn), nl=False)
            self.drawn = len(line)
            return
        # Not a terminal (a log, a pipe): a line per step or entity, never a redraw.
        if (step, entity) == self.last:
            return
        self.last = (step, entity)
        click.echo(label + (f" ({total} records)" if total else ""))

    def close(self) -> None:
        """End the bar's line so what follows starts on its own."""
        if self.tty and self.drawn:
            click.echo()
            self.drawn = 0


def wait_for(db: Database, redis: Redis, job_id: str, connection_id: int,
             timeout: float | None) -> JobState | None:
    """Poll a job until it ends, showing its progress; returns its last state (None: gone)."""
    progress = Progress(sys.stdout.isatty())
    deadline = None if timeout is None else time.monotonic() + timeout
    said_queued = False
    try:
        while True:
            job = job_state(redis, job_id)
            if job is None:
                # A job that keeps no result is deleted as it ends, its last report with it;
                # the registry keeps the same report.
                progress.show(connections.get_connection(db, connection_id).progress)
                return None
            if job.waiting:
                if not said_queued:
                    click.echo("Waiting for a worker to take the job…")
                    said_queued = True
            else:
                progress.show(job.progress)
            if job.ended:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise PortalError(f"job {job_id} is still {job.status} after {timeout:g} s; "
                                  "it carries on (see `flask sync status`)")
            time.sleep(POLL_S)
    finally:
        progress.close()


def finish(db: Database, redis: Redis, job_id: str, connection: Connection, kind: str,
           run_id: int, timeout: float | None) -> dict[str, Any]:
    """Wait for an enqueued job and return its run record; exit 1 with the reason if it failed."""
    ended = wait_for(db, redis, job_id, connection.id, timeout)
    run = runs.get_run(db, run_id)
    if run is None or run["status"] == runs.RunStatus.QUEUED:
        failure = ended.failure if ended is not None else None
        raise PortalError(f"the {kind} job failed: "
                          f"{failure or 'the job ended without recording a run'}")
    if run["status"] == runs.RunStatus.RUNNING:
        raise PortalError(f"the {kind} job ended but run {run['id']} never finished "
                          "(was its worker killed? the dispatcher records it abandoned)")
    if run["status"] != runs.RunStatus.SUCCEEDED:
        if kind in ("sync", "connect") and run["counts"]:
            show_counts(run["counts"])  # what was done before it failed stays done
        what = "was stopped by the server's limits (the next run resumes)" \
            if run["status"] == runs.RunStatus.LIMITED else "failed"
        raise PortalError(f"the {kind} run {what}: {run['error']}")
    return run


# --- showing things ----------------------------------------------------------

def show_counts(counts: dict[str, Any]) -> None:
    """A table of a run's counts per entity, with totals."""
    rows = {name: c for name, c in counts.items() if isinstance(c, dict)}
    if not rows:
        click.echo("Nothing to do: no entity was synced.")
        return
    click.echo(f"{'entity':<30}" + "".join(f"{c:>12}" for c in COUNTS))
    for name, c in rows.items():
        click.echo(f"{name:<30}" + "".join(f"{c.get(k, 0):>12}" for k in COUNTS))
    click.echo(f"{'total':<30}"
               + "".join(f"{sum(c.get(k, 0) for c in rows.values()):>12}" for k in COUNTS))


def schedule_text(connection: Connection) -> str:
    """The schedule as a person says it: 'every 15m', 'daily at 01:00 UTC' or 'off'."""
    if not connection.schedule_active:
        return "off"
    if connection.schedule_every_minutes:
        minutes = connection.schedule_every_minutes
        return f"every {minutes // 60}h" if minutes % 60 == 0 else f"every {minutes}m"
    return f"daily at {connection.schedule_daily_at} UTC"


def show_connection(connection: Connection) -> None:
    """A connection's status, schedule and transaction counts in a few lines."""
    click.echo(f"{connection.org_name}: {connection.status} — {connection.backend} "
               f"{connection.url} as {connection.username}")
    if connection.error:
        click.echo(f"  error: {connection.error}")
    click.echo(f"  schedule: {schedule_text(connection)}; last run: "
               f"{connection.last_run_at or 'never'}; next run: {connection.next_run_at or '-'}")
    with open_org(orgs_path(current_app), connection.org_name) as org:
        counted = transactions.counts(org)
    click.echo(f"  transactions: {counted['pending']} pending, {counted['error']} in error")


# --- sync commands -----------------------------------------------------------

@sync_cli.command("connect")
@click.argument("org")
@click.option("--type", "kind", default="resco", show_default=True,
              help="Backend type: its key (resco, dynamics, …) or its ProviderID GUID.")
@click.option("--url", required=True, help="Service root of the server org (for Dynamics: "
              "the environment URL, e.g. https://contoso.crm4.dynamics.com).")
@click.option("--user", required=True, help="User name on the server (for a Dynamics "
              "application user: its client id).")
@click.option("--password-stdin", is_flag=True,
              help="Read the server password (or client secret) from the first line of stdin "
                   "(else it is prompted for).")
@click.option("--auth", type=click.Choice(["password", "client_credentials", "jwt", "basic",
                                           "bearer"]),
              default=None,
              help="Dynamics, Salesforce: sign in by user name and password (default) or as an "
                   "application user (client credentials); Salesforce also: jwt (JWT bearer, "
                   "the private key PEM as the password). OData: basic (default), bearer (the "
                   "password is the token) or client_credentials (with --token-url).")
@click.option("--tenant", help="Dynamics: the tenant id or domain (default: the one the "
              "environment names).")
@click.option("--client-id", help="Dynamics, user name and password: the public client id "
              "(default: the one Microsoft's samples use).")
@click.option("--consumer-key", help="Salesforce: the connected app's consumer key.")
@click.option("--consumer-secret", envvar="SALESFORCE_CONSUMER_SECRET", show_envvar=True,
              help="Salesforce, user name and password: the connected app's consumer secret "
                   "(better from the environment variable).")
@click.option("--security-token", envvar="SALESFORCE_SECURITY_TOKEN", show_envvar=True,
              help="Salesforce: the user's security token, if not appended to the password.")
@click.option("--token-url", help="OData, client credentials: the OAuth 2.0 token URL.")
@click.option("--scope", help="OData, client credentials: the scope to ask for.")
@click.option("--timestamp-property", help="OData: the modified timestamp of every entity set, "
              "or per set ('Orders=changedAt, Items=stamp') (default: found by name, e.g. "
              "modifiedAt, ModifiedOn, LastModifiedDateTime).")
@click.option("--client-id-property", help="OData: the String property that keeps the "
              "client's GUID on entity sets whose keys the server picks (exactly-once creates), "
              "for every such set or per set ('Tickets=clientRef, Orders=ourId').")
@click.option("--page-size", help="OData: records per page (1-5000).")
@wait_option
@timeout_option
def connect(org: str, kind: str, url: str, user: str, password_stdin: bool, auth: str | None,
            tenant: str | None, client_id: str | None, consumer_key: str | None,
            consumer_secret: str | None, security_token: str | None, token_url: str | None,
            scope: str | None, timestamp_property: str | None,
            client_id_property: str | None, page_size: str | None, wait: bool,
            timeout: float | None) -> None:
    """Connect an existing hosted org to a server org and enqueue the connect job."""
    db = get_db()
    found = registry.get_org(db, org)
    backend = available_backend(kind)
    # The same address check as the web, before anything is written.
    url = check_server_url(url, allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"])
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Server password", hide_input=True)
    key = crypto.load_key(current_app.instance_path)
    options = {k: v for k, v in (("auth", auth), ("tenant", tenant), ("client_id", client_id),
                                 ("consumer_key", consumer_key),
                                 ("consumer_secret", consumer_secret),
                                 ("security_token", security_token),
                                 ("token_url", token_url), ("scope", scope),
                                 ("timestamp_property", timestamp_property),
                                 ("client_id_property", client_id_property),
                                 ("page_size", page_size)) if v}
    existing = connections.connection_of_org(db, org)
    if existing is not None and existing.status in ("failed", "pending"):
        # A connection that never connected: point it at the new values.
        connection = registration.reconnect(
            db, orgs_path(current_app), key, existing, backend=backend.key, url=url,
            username=user, password=password,
            allow_private=current_app.config["ALLOW_PRIVATE_SERVERS"], server_options=options)
        said = "changed"
    else:
        connection = connections.create_connection(
            db, key, found["id"], backend=backend.key, url=url, username=user,
            password=password, server_options=options)
        said = "created"
    job_id, run_id = queue_run(db, connection, "connect")
    click.echo(f"Connection {connection.id} of {org} to {url} {said}; "
               f"connect job {job_id} queued.")
    if not wait:
        return
    run = finish(db, get_redis(), job_id, connection, "connect", run_id, timeout)
    connection = connections.get_connection(db, connection.id)
    if connection.status != "connected":
        raise PortalError(f"the connection is {connection.status}: {connection.error}")
    show_counts(run["counts"])
    click.echo(f"Connected {org} to {url}; sync schedule: {schedule_text(connection)}.")


def queue_and_wait(db: Database, org: str, kind: str, what: str, wait: bool,
                   timeout: float | None, connected: bool = True
                   ) -> tuple[Connection, dict[str, Any] | None]:
    """Enqueue a run on an org's connection; with `wait`, its finished run record."""
    connection = connection_of(db, org, connected=connected)
    job_id, run_id = queue_run(db, connection, kind)
    click.echo(f"{what} queued (job {job_id}).")
    if not wait:
        return connection, None
    return connection, finish(db, get_redis(), job_id, connection, kind, run_id, timeout)


@sync_cli.command("resume")
@click.argument("org")
@wait_option
@timeout_option
def resume(org: str, wait: bool, timeout: float | None) -> None:
    """Connect a failed (or abandoned) connection again with its server values; it resumes."""
    db = get_db()
    connection = connection_of(db, org, connected=False)
    if connection.status not in ("failed", "pending"):
        raise InvalidInput(f"the connection of {org!r} is {connection.status}: "
                           "there is nothing to resume")
    _, run = queue_and_wait(db, org, "connect", f"Connect of {org} (resumed)", wait, timeout,
                            connected=False)
    if run is not None:
        show_counts(run["counts"])
        click.echo(f"Connected {org}.")


@sync_cli.command("run")
@click.argument("org")
@wait_option
@timeout_option
def run_sync(org: str, wait: bool, timeout: float | None) -> None:
    """Enqueue a sync run of a connected org (upload its transactions, download changes)."""
    db = get_db()
    _, run = queue_and_wait(db, org, "sync", f"Sync run of {org}", wait, timeout)
    if run is None:
        return
    show_counts(run["counts"])
    click.echo(f"Sync run {run['id']} of {org} succeeded in {run['duration_s']:.2f} s.")


@sync_cli.command("metadata")
@click.argument("org")
@wait_option
@timeout_option
def update_metadata(org: str, wait: bool, timeout: float | None) -> None:
    """Update Client Metadata: migrate a connected org to its server's metadata."""
    db = get_db()
    connection, run = queue_and_wait(db, org, "metadata",
                                     f"Update Client Metadata of {org}", wait, timeout)
    if run is None:
        return
    # The job's return value is not kept (result_ttl=0); its changes are the run's log lines.
    changes = [line["message"] for line in reversed(runs.list_logs(db, connection.org_id,
                                                                   run["id"]))
               if line["level"] == "info"]
    for line in changes:
        click.echo(f"  {line}")
    click.echo(f"Metadata of {org} updated: "
               + (f"{len(changes)} change(s)." if changes else "no changes."))


@sync_cli.command("status")
@click.argument("org", required=False)
@click.option("--runs", "last", default=5, show_default=True, help="How many last runs to show.")
def status(org: str | None, last: int) -> None:
    """Show the connections (or one org's, with its entities and last runs)."""
    db = get_db()
    if org is None:
        rows = connections.list_connections(db)
        if not rows:
            click.echo("No connections.")
        for connection in rows:
            show_connection(connection)
        return
    connection = connection_of(db, org, connected=False)
    show_connection(connection)
    if connection.progress and connection.status == "connecting":
        click.echo(f"  progress: {connection.progress}")
    click.echo("Entities:")
    settings = connections.entity_settings(db, connection.id)
    if not settings:
        click.echo("  none yet (the connect job copies them from the server)")
    for entity in settings:
        click.echo(f"  {entity.entity:<30} {'enabled' if entity.enabled else 'disabled':<9} "
                   f"sync deletion: {'on' if entity.sync_deletion else 'off':<4} "
                   f"filter: {entity.filter or '-'}")
    click.echo("Last runs:")
    found = runs.list_runs(db, connection.org_id, limit=last)
    if not found:
        click.echo("  none")
    for run in found:
        click.echo(f"  {run['id']:>5} {run['kind']:<8} {run['trigger']:<8} {run['status']:<9} "
                   f"{run['started']} {run['duration_s'] or 0:>6.1f} s  {run_summary(run)}"
                   + (f"  error: {run['error']}" if run["error"] else ""))


def run_summary(run: dict[str, Any]) -> str:
    """A run's counts in one line: totals over its entities, or its metadata changes."""
    if run["kind"] == "metadata":
        return f"changes {run['counts'].get('changes', 0)}"
    entities = [c for c in run["counts"].values() if isinstance(c, dict)]
    return ", ".join(f"{k} {sum(c.get(k, 0) for c in entities)}" for k in COUNTS)


@sync_cli.command("schedule", one_of=OneOf(("every", "daily", "off"),
                                           "choose one of --every, --daily or --off"))
@click.argument("org")
@click.option("--every", help="Run every N minutes or hours: 15m, 2h.")
@click.option("--daily", help="Run daily at HH:MM (UTC).")
@click.option("--off", is_flag=True, help="Stop the scheduled sync job.")
def schedule(org: str, every: str | None, daily: str | None, off: bool) -> None:
    """Set when the sync job of a connected org runs, or turn it off."""
    db = get_db()
    connection = connection_of(db, org, connected=False)
    if off:
        connection = connections.set_schedule(db, connection.id, active=False)
    else:
        connection = connections.set_schedule(
            db, connection.id, every_minutes=parse_every_or_none(every), daily_at=daily)
    click.echo(f"Sync schedule of {org}: {schedule_text(connection)}"
               + (f"; next run {connection.next_run_at}" if connection.next_run_at else ""))


def parse_every_or_none(every: str | None) -> int | None:
    """Minutes of an --every value, None when not given."""
    return None if every is None else connections.parse_every(every)


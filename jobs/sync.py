"""Sync jobs: connect, update metadata, sync run, instant upload, and the schedule's dispatcher.

Each job takes a connection id, opens its own registry and org connections,
holds the connection's lock in Redis while it works (so at most one job works
on a connection at a time), keeps its progress in the job's meta and in the
registry, and leaves a run record with per-entity counts. A failure is
recorded with the server's message on the connection and the run, then
re-raised so RQ keeps it in the failed registry.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from redis.exceptions import LockError
from redis.lock import Lock
from rq import get_current_job
from sqlite_utils import Database

from jobs.context import app_context
from portal import crypto
from portal.backends.base import Backend
from portal.backends.registry import make_backend
from portal.db import get_db
from portal.errors import PortalError
from portal.orgs import transactions
from portal.orgs.store import OrgDb, open_org, orgs_path
from portal.queue import enqueue_sync, get_redis
from portal.sync import connections, engine, registration, runs
from portal.sync.connections import Connection, ConnectionStatus
from portal.sync.metadata import update_client_metadata

LOCK_TTL_S = 10  # renewed on every progress report, so a killed job frees it quickly
LOCK_WAIT_S = 120
DEFAULT_EVERY_MINUTES = 15


class Work:
    """What a job on a connection has at hand: registry, client org, backend, reporter."""

    def __init__(self, db: Database, connection: Connection, org: OrgDb, backend: Backend,
                 lock: Lock, run_id: int) -> None:
        self.db = db
        self.connection = connection
        self.org = org
        self.backend = backend
        self.lock = lock
        self.run_id = run_id
        self.counts: dict[str, Any] = {}  # what the run record gets, kept if the job fails
        self._last_report = 0.0
        self._last_step = ""
        self.reporter = engine.Reporter(progress=self.progress, log=self.log)

    def progress(self, step: str, entity: str | None, done: int, total: int | None) -> None:
        """Keep progress in the job's meta and the registry (at most twice a second)."""
        self.lock.reacquire()
        now = time.monotonic()
        if now - self._last_report < 0.5 and done and step == self._last_step:
            return
        self._last_report = now
        self._last_step = step
        state = {"step": step, "entity": entity, "done": done, "total": total}
        job = get_current_job()
        if job is not None:
            job.meta["progress"] = state
            job.save_meta()
        connections.set_progress(self.db, self.connection.id, state)

    def log(self, level: str, message: str, entity: str | None = None) -> None:
        """Add a line to the org's sync log for this run."""
        runs.log(self.db, self.connection.org_id, self.run_id, level, message, entity)

    def plan(self) -> engine.Plan:
        """The enabled entities and policy, as the registry has them now."""
        config = current_app.config
        return engine.Plan(connections.entity_settings(self.db, self.connection.id),
                           self.connection.conflict_policy, page_size=config["SYNC_PAGE_SIZE"],
                           upload_batch=config["SYNC_UPLOAD_BATCH"])


@contextmanager
def working_on(connection_id: int, kind: str, trigger: str) -> Iterator[Work]:
    """Lock the connection, open everything, and record the run from start to end."""
    with app_context() as app:
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        lock = get_redis().lock(f"portal:lock:connection:{connection_id}", timeout=LOCK_TTL_S,
                                blocking_timeout=LOCK_WAIT_S)
        if not lock.acquire():
            raise PortalError(f"connection {connection_id} is busy with another job")
        job = get_current_job()
        run_id = runs.start_run(db, connection_id, connection.org_id, kind, trigger,
                                job.id if job else None)
        started = time.monotonic()
        orgs_dir = orgs_path(app)
        org: OrgDb | None = None
        backend: Backend | None = None
        work: Work | None = None
        try:
            org = open_org(orgs_dir, connection.org_name)
            # The backend checks the URL again (the name may resolve elsewhere now
            # than when the connection was made) and refuses redirects to private hosts.
            backend = make_backend(
                connection.backend, connection.url, connection.username,
                connections.server_password(db, crypto.load_key(app.instance_path), connection_id),
                retries=app.config["SYNC_HTTP_RETRIES"],
                allow_private=app.config["ALLOW_PRIVATE_SERVERS"], **connection.server_options)
            work = Work(db, connection, org, backend, lock, run_id)
            yield work
        except BaseException as exc:
            reason = exc.message if isinstance(exc, PortalError) else \
                f"{exc.__class__.__name__}: {exc}"
            runs.finish_run(db, run_id, runs.RunStatus.FAILED, work.counts if work else {},
                            time.monotonic() - started, reason)
            runs.log(db, connection.org_id, run_id, "error", reason)
            if kind == "connect":
                connections.set_status(db, connection_id, ConnectionStatus.FAILED, error=reason)
            raise
        else:
            runs.finish_run(db, run_id, runs.RunStatus.SUCCEEDED, work.counts if work else {},
                            time.monotonic() - started)
            connections.record_run_time(db, connection_id)
        finally:
            if backend is not None:
                backend.close()
            if org is not None:
                org.close()
            try:
                lock.release()
            except LockError:  # the lock expired: nothing left to release
                pass


def connect(connection_id: int) -> dict[str, Any]:
    """Check the server, copy its metadata, create the client schema, run the first sync."""
    with app_context():
        connections.set_status(get_db(), connection_id, ConnectionStatus.CONNECTING,
                               job_id=_current_job_id())
    with working_on(connection_id, "connect", "connect") as work:
        work.progress("checking credentials", None, 0, None)
        who = work.backend.check_credentials()
        work.log("info", f"connected to {work.connection.url} as {who}")
        _copy_metadata(work)
        # Entities and sync filters asked for by the web service's ConnectAsync.
        for line in registration.apply_requested_setup(work.db, connection_id,
                                                       work.org.entities()):
            work.log("info", line)
        transactions.set_client(work.org, True)
        plan = work.plan()
        enabled = [work.org.entity(e.entity) for e in plan.entities if e.enabled]
        totals = engine.count_records(work.backend, enabled)
        result = engine.RunResult()
        engine.download(engine.Run(work.org, work.backend, plan, work.reporter, result), totals)
        work.counts = result.as_dict()
        if not work.connection.schedule_active:
            connections.set_schedule(work.db, connection_id, every_minutes=DEFAULT_EVERY_MINUTES)
        connections.set_status(work.db, connection_id, ConnectionStatus.CONNECTED)
        work.progress("connected", None, result.total("downloaded"), None)
        return result.as_dict()


def update_metadata(connection_id: int, trigger: str = "button") -> list[str]:
    """Update Client Metadata: migrate the client to the server's metadata."""
    with working_on(connection_id, "metadata", trigger) as work:
        changes = _copy_metadata(work)
        for line in registration.apply_requested_setup(work.db, connection_id,
                                                       work.org.entities()):
            work.log("info", line)
        work.counts = {"changes": len(changes)}
        return changes


def sync_run(connection_id: int, trigger: str = "schedule") -> dict[str, Any]:
    """One sync run: upload offline transactions, download the server's changes."""
    with working_on(connection_id, "sync", trigger) as work:
        result = engine.RunResult()
        try:
            run = engine.Run(work.org, work.backend, work.plan(), work.reporter, result)
            engine.upload(run)
            engine.download(run)
        finally:
            work.counts = result.as_dict()
        work.log("info", f"run done: uploaded {result.total('uploaded')}, downloaded "
                 f"{result.total('downloaded')}, deleted {result.total('deleted')}, "
                 f"conflicts {result.total('conflicts')}, errors {result.total('errors')}")
        return result.as_dict()


def upload(connection_id: int) -> dict[str, Any]:
    """Instant mode: send the client's pending transactions now."""
    with working_on(connection_id, "upload", "write") as work:
        result = engine.RunResult()
        try:
            engine.upload(engine.Run(work.org, work.backend, work.plan(), work.reporter, result))
        finally:
            work.counts = result.as_dict()
        return result.as_dict()


def dispatch() -> list[int]:
    """The cron entry: enqueue a sync run for every due connection, once each."""
    with app_context():
        db = get_db()
        now = datetime.now(UTC)
        enqueued = []
        for connection in connections.due_connections(db, now):
            # Only the dispatcher that moves next_run_at on enqueues: a second
            # scheduler finds the connection no longer due.
            if connections.advance_schedule(db, connection, now):
                enqueue_sync(get_redis(), connection.id, "schedule")
                enqueued.append(connection.id)
        return enqueued


def _copy_metadata(work: Work) -> list[str]:
    work.progress("copying metadata", None, 0, None)
    server = work.backend.read_metadata()
    known = {e.entity for e in connections.entity_settings(work.db, work.connection.id)}
    changes = update_client_metadata(work.org, server, known)
    connections.set_server_entities(work.db, work.connection.id,
                                    [e.logicalname for e in server
                                     if e.logicalname in work.org.entities()])
    for line in changes:
        work.log("info", line)
    return changes


def _current_job_id() -> str | None:
    job = get_current_job()
    return job.id if job else None


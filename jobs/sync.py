"""Sync jobs: connect, update metadata, sync run, instant upload, and the schedule's dispatcher.

Each job takes a connection id, opens its own registry and org connections,
holds the connection's lock in Redis while it works (so at most one job works
on a connection at a time), keeps its progress in the job's meta and in the
registry, and leaves a run record with per-entity counts. A failure is
recorded with the server's message on the connection and the run, then
re-raised so RQ keeps it in the failed registry.

A job that dies (SIGKILL, OOM, power cut) records nothing itself. Its work is
recognised as abandoned by RQ's own means — the started-job registry's
clean-up and a killed work horse call the job's failure callback
(`job_failed`) — and by the connection lock's TTL: a thread of the job's
process renews the lock, so a lock that expired is a job that died. The
dispatcher then marks the run failed ("abandoned: the worker stopped") and
resumes an abandoned connect from its last committed page.
"""

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from redis import Redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock
from rq import get_current_job
from rq.job import Job
from rq.registry import StartedJobRegistry
from sqlite_utils import Database

from jobs.context import app_context
from portal import crypto
from portal.backends.base import Backend
from portal.backends.registry import make_backend
from portal.db import get_db
from portal.errors import PortalError, ServerLimited
from portal.orgs import transactions
from portal.orgs.store import OrgDb, open_org, orgs_path
from portal.queue import (
    DEFAULT_QUEUE,
    enqueue_run,
    fetch_job,
    get_redis,
    parse_run_job_id,
    run_job_id,
)
from portal.sync import connections, engine, registration, runs
from portal.sync.connections import Connection, ConnectionStatus
from portal.sync.metadata import update_client_metadata

LOCK_TTL_S = 10  # renewed by the job's process every third of it: a killed job frees it soon
LOCK_WAIT_S = 120
DEFAULT_EVERY_MINUTES = 15
RESUMES = 3  # abandoned connects in a row that the dispatcher resumes by itself


def connection_lock(redis: Redis, connection_id: int) -> Lock:
    """The lock a job holds while it works on a connection."""
    # thread_local=False: the keeper thread renews the token the job took.
    return redis.lock(f"portal:lock:connection:{connection_id}", timeout=LOCK_TTL_S,
                      blocking_timeout=LOCK_WAIT_S, thread_local=False)


class LockKeeper(threading.Thread):
    """Renews the connection's lock while the job's process lives; notes when it was lost."""

    def __init__(self, lock: Lock) -> None:
        super().__init__(daemon=True, name="connection-lock-keeper")
        self.lock = lock
        self.lost: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Renew every third of the TTL until stopped, or until the lock is lost."""
        while not self._stop_event.wait(LOCK_TTL_S / 3) and self._renew():
            pass

    def renew(self) -> None:
        """Renew now (the job calls it at every page); PortalError once the lock was lost."""
        if self.lost is None:
            self._renew()
        if self.lost is not None:
            raise PortalError(self.lost)

    def _renew(self) -> bool:
        try:
            self.lock.reacquire()
        except LockNotOwnedError:
            # Redis was emptied or restarted without the key: another job may
            # take the connection now, so this one stops at its next page.
            self.lost = ("the connection's lock in Redis was lost (Redis restarted or "
                         "emptied?): the run stopped so that no other job works beside it")
            return False
        except RedisError:
            pass  # Redis unreachable for now: the next renewal tries again; the TTL decides
        return True

    def stop(self) -> None:
        """Stop renewing (the job releases the lock itself)."""
        self._stop_event.set()
        self.join(timeout=5)


class Work:
    """What a job on a connection has at hand: registry, client org, backend, reporter."""

    def __init__(self, db: Database, connection: Connection, org: OrgDb, backend: Backend,
                 keeper: LockKeeper, run_id: int) -> None:
        self.db = db
        self.connection = connection
        self.org = org
        self.backend = backend
        self.keeper = keeper
        self.run_id = run_id
        self.counts: dict[str, Any] = {}  # what the run record gets, kept if the job fails
        self._last_report = 0.0
        self._last_step = ""
        self.reporter = engine.Reporter(progress=self.progress, log=self.log)

    def progress(self, step: str, entity: str | None, done: int, total: int | None) -> None:
        """Keep progress in the job's meta and the registry (at most twice a second)."""
        self.keeper.renew()
        now = time.monotonic()
        if now - self._last_report < 0.5 and done and step == self._last_step:
            return
        self._last_report = now
        self._last_step = step
        state = {"step": step, "entity": entity, "done": done, "total": total,
                 "run": self.run_id}
        job = get_current_job()
        if job is not None:
            job.meta["progress"] = state
            try:
                job.save_meta()
            except RedisError:
                # Redis unreachable for now (restarting?): the registry keeps the
                # progress, and the lock's renewal decides whether the run goes on.
                pass
        connections.set_progress(self.db, self.connection.id, state)

    def log(self, level: str, message: str, entity: str | None = None) -> None:
        """Add a line to the org's sync log for this run."""
        runs.log(self.db, self.connection.org_id, self.run_id, level, message, entity)

    def plan(self) -> engine.Plan:
        """The enabled entities, policy and streams (the connection's, else SYNC_STREAMS)."""
        config = current_app.config
        return engine.Plan(connections.entity_settings(self.db, self.connection.id),
                           self.connection.conflict_policy, page_size=config["SYNC_PAGE_SIZE"],
                           upload_batch=config["SYNC_UPLOAD_BATCH"],
                           streams=self.connection.streams or config["SYNC_STREAMS"])


@contextmanager
def working_on(connection_id: int, kind: str, trigger: str,
               run_id: int | None = None) -> Iterator[Work]:
    """Lock the connection, open everything, and record the run from start to end."""
    with app_context() as app:
        db = get_db()
        connection = connections.get_connection(db, connection_id)
        lock = connection_lock(get_redis(), connection_id)
        if not lock.acquire():
            reason = f"connection {connection_id} is busy with another job"
            if run_id is not None:
                runs.end_active(db, run_id, reason)
            raise PortalError(reason)
        keeper = LockKeeper(lock)
        keeper.start()
        # Holding the lock proves that no other job works on the connection: a
        # run still recorded as running is one whose worker died.
        _abandon_running(db, connection_id, f"{runs.ABANDONED} (found by the next job)")
        job = get_current_job()
        run_id = runs.start_run(db, connection_id, connection.org_id, kind, trigger,
                                job.id if job else None, run_id)
        # Read again now that the run is recorded: a reconnect to another server
        # committed before this point is seen; one after it is refused (a job works).
        connection = connections.get_connection(db, connection_id)
        if kind == "connect":
            connections.set_status(db, connection_id, ConnectionStatus.CONNECTING,
                                   job_id=job.id if job else None)
        started = time.monotonic()
        orgs_dir = orgs_path(app)
        org: OrgDb | None = None
        backend: Backend | None = None
        work: Work | None = None
        try:
            org = open_org(orgs_dir, connection.org_name)
            # The backend checks the URL again (the name may resolve elsewhere now
            # than when the connection was made) and refuses redirects to private hosts.
            key = crypto.load_key(app.instance_path)
            backend = make_backend(
                connection.backend, connection.url, connection.username,
                connections.server_password(db, key, connection_id),
                retries=app.config["SYNC_HTTP_RETRIES"],
                allow_private=app.config["ALLOW_PRIVATE_SERVERS"],
                **connections.backend_options(key, connection))
            work = Work(db, connection, org, backend, keeper, run_id)
            yield work
        except BaseException as exc:
            reason = failure_reason(exc)
            # Stopped by the server's limits: what was committed stays, the next run resumes.
            status = runs.RunStatus.LIMITED if isinstance(exc, ServerLimited) \
                else runs.RunStatus.FAILED
            runs.finish_run(db, run_id, status, work.counts if work else {},
                            time.monotonic() - started, reason)
            runs.log(db, connection.org_id, run_id, "error", reason)
            if kind == "connect":
                connections.set_status(db, connection_id, ConnectionStatus.FAILED, error=reason)
            _ended(db, connection_id, run_id, status)
            raise
        else:
            runs.finish_run(db, run_id, runs.RunStatus.SUCCEEDED, work.counts if work else {},
                            time.monotonic() - started)
            connections.record_run_time(db, connection_id)
            _ended(db, connection_id, run_id, runs.RunStatus.SUCCEEDED)
        finally:
            keeper.stop()
            if backend is not None:
                backend.close()
            if org is not None:
                org.close()
            try:
                lock.release()
            except (LockError, RedisError):  # expired or Redis gone: nothing left to release
                pass


# SQLite's answers a run can meet on the client org's file, as the admin reads them.
# A page is written in one transaction: whichever it is, nothing of that page is.
SQLITE_REASONS = {
    "SQLITE_FULL": "the disk is full (the client org's file could not grow)",
    # WAL mode: the shared-memory index beside the file could not grow (a full disk).
    "SQLITE_IOERR_SHMSIZE": "the disk is full (the client org's file could not grow)",
    "SQLITE_BUSY": "the client org's file is locked by another writer",
    "SQLITE_LOCKED": "the client org's file is locked by another writer",
    "SQLITE_READONLY": "the client org's file is read-only",
    "SQLITE_IOERR": "the client org's file could not be written (I/O error)",
}


def failure_reason(exc: BaseException) -> str:
    """Why a run failed, in words the org admin can act on."""
    if isinstance(exc, PortalError):
        return exc.message
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        # Extended codes name their kind first: SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT.
        known = next((text for code, text in SQLITE_REASONS.items()
                      if name == code or name.startswith(code + "_")), None)
        if known:
            return (f"{known}: the page being written was not kept; the next run goes on "
                    f"from the last committed page ({name}: {exc})")
    return f"{exc.__class__.__name__}: {exc}"


def _ended(db: Database, connection_id: int, run_id: int, status: str) -> None:
    """The connection's progress says that its run ended, and how."""
    progress = dict(connections.get_connection(db, connection_id).progress or {})
    if progress.get("run") != run_id:  # the run ended before its first report
        progress = {"step": None, "entity": None, "done": 0, "total": None}
    connections.set_progress(db, connection_id, {**progress, "run": run_id,
                                                 "ended": str(status)})


def _abandon(db: Database, run: dict[str, Any], reason: str) -> bool:
    """Record a run whose worker died as failed; a connect's connection fails with it."""
    if not runs.end_active(db, run["id"], reason):
        return False
    runs.log(db, run["org_id"], run["id"], "error", reason)
    if run["kind"] == "connect":
        connection = connections.get_connection(db, run["connection_id"])
        if connection.status in (ConnectionStatus.CONNECTING, ConnectionStatus.PENDING):
            connections.set_status(db, run["connection_id"], ConnectionStatus.FAILED,
                                   error=reason)
    _ended(db, run["connection_id"], run["id"], runs.RunStatus.FAILED)
    return True


def _abandon_running(db: Database, connection_id: int, reason: str) -> None:
    for run in runs.active_runs(db):
        if run["connection_id"] == connection_id and run["status"] == runs.RunStatus.RUNNING:
            _abandon(db, run, reason)


def job_failed(job: Job, connection: Redis, exc_type: type[BaseException] | None = None,
               exc_value: BaseException | None = None, traceback: Any = None) -> None:
    """RQ's failure callback: record a failure the job could not record itself on its run.

    RQ calls it when its started-job clean-up finds a job whose worker died
    (AbandonedJobError) and when a work horse is killed (jobs.worker); a job
    that failed on its own has recorded its run already, and nothing changes.
    """
    parsed = parse_run_job_id(job.id)
    if parsed is None:
        return
    with app_context():
        db = get_db()
        run = runs.get_run(db, parsed[2])
        if run is None or run["status"] not in runs.ACTIVE:
            return
        detail = f"{exc_type.__name__}" if exc_type else "unknown"
        if exc_value is not None and str(exc_value):
            detail += f": {exc_value}"
        _abandon(db, run, f"{runs.ABANDONED} (RQ: {detail})")


def connect(connection_id: int, run_id: int | None = None) -> dict[str, Any]:
    """Check the server, copy its metadata, create the client schema, run the first sync.

    Run again after a failure or a kill, it resumes each entity's download from
    its last committed page.
    """
    with working_on(connection_id, "connect", "connect", run_id) as work:
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


def update_metadata(connection_id: int, trigger: str = "button",
                    run_id: int | None = None) -> list[str]:
    """Update Client Metadata: migrate the client to the server's metadata."""
    with working_on(connection_id, "metadata", trigger, run_id) as work:
        changes = _copy_metadata(work)
        for line in registration.apply_requested_setup(work.db, connection_id,
                                                       work.org.entities()):
            work.log("info", line)
        work.counts = {"changes": len(changes)}
        return changes


def sync_run(connection_id: int, trigger: str = "schedule",
             run_id: int | None = None) -> dict[str, Any]:
    """One sync run: upload offline transactions, download the server's changes."""
    with working_on(connection_id, "sync", trigger, run_id) as work:
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


def request(db: Database, redis: Redis, connection: Connection, kind: str,
            trigger: str) -> tuple[Job, int, bool]:
    """Ask for a run and enqueue its job: (job, run id, whether it was queued or running)."""
    run_id, existing = runs.request_run(db, connection.id, connection.org_id, kind, trigger)
    return enqueue_run(redis, kind, connection.id, run_id, trigger), run_id, existing


def dispatch() -> list[int]:
    """The cron entry: recover abandoned work, then enqueue a sync run of each due connection."""
    with app_context():
        db = get_db()
        redis = get_redis()
        recover(db, redis)
        now = datetime.now(UTC)
        enqueued = []
        for connection in connections.due_connections(db, now):
            # Only the dispatcher that moves next_run_at on enqueues: a second
            # scheduler finds the connection no longer due.
            if connections.advance_schedule(db, connection, now):
                request(db, redis, connection, "sync", "schedule")
                enqueued.append(connection.id)
        return enqueued


def recover(db: Database, redis: Redis) -> list[str]:
    """Find work whose worker died or whose job Redis lost, and set it going; what was done.

    * RQ's started-job clean-up moves jobs whose worker stopped heartbeating to
      the failed registry and calls their failure callback (`job_failed`);
    * a run recorded running whose connection lock can be taken has no live job
      (the lock's keeper died with it): it is abandoned;
    * a queued run whose job is not in Redis (restarted, emptied) is enqueued again;
    * an abandoned connect is resumed (from its last committed page), up to
      RESUMES times in a row; after that it waits for a person (retry, reconnect).
    """
    done = []
    StartedJobRegistry(DEFAULT_QUEUE, connection=redis).cleanup()
    for run in runs.active_runs(db):
        if run["status"] == runs.RunStatus.RUNNING:
            lock = connection_lock(redis, run["connection_id"])
            if lock.acquire(blocking=False):
                try:
                    if _abandon(db, run, f"{runs.ABANDONED} (its lock expired)"):
                        done.append(f"run {run['id']} abandoned")
                finally:
                    try:
                        lock.release()
                    except LockError:
                        pass
        elif fetch_job(redis, run_job_id(run["kind"], run["connection_id"], run["id"])) is None:
            enqueue_run(redis, run["kind"], run["connection_id"], run["id"], run["trigger"])
            done.append(f"run {run['id']} enqueued again")
    for connection in connections.list_connections(db):
        if connection.status == ConnectionStatus.FAILED and 0 < runs.abandoned_streak(
                db, connection.id, "connect") <= RESUMES:
            _, run_id, _ = request(db, redis, connection, "connect", "connect")
            done.append(f"connect of {connection.org_name} resumed (run {run_id})")
    return done


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


"""The job queue: one Redis client per app, the one helper that enqueues jobs, job states.

Jobs are referred to by their dotted name ("jobs.maintenance.count_orgs"), so
the web layer enqueues work without importing the jobs package.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Callback, Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

DEFAULT_QUEUE = "default"
# Set by the scheduler's heartbeat job (jobs.maintenance.heartbeat): proof that the
# scheduler enqueues and a worker runs what it enqueues.
CRON_HEARTBEAT_KEY = "portal:cron:heartbeat"
ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}  # no worker yet
WAITING_OR_RUNNING = WAITING | {JobStatus.STARTED}
DEFAULT_TIMEOUT_S = 3600
RESULT_TTL_S = 24 * 3600
FAILURE_TTL_S = 7 * 24 * 3600


def connect_redis(url: str) -> Redis:
    """A Redis client for this URL (redis://, rediss:// or unix://)."""
    # No backoff: a missing server is reported at once (health checks, shutdown)
    # instead of after redis-py's default retries. One immediate retry on a new
    # connection: a restarted Redis is reached again by the next command.
    return Redis.from_url(url, retry=RedisRetry(NoBackoff(), 1), socket_connect_timeout=5)


def get_redis() -> Redis:
    """The app's Redis client, created on first use and shared by its requests."""
    client = current_app.extensions.get("redis")
    if client is None:
        client = current_app.extensions["redis"] = connect_redis(current_app.config["REDIS_URL"])
    return client


def enqueue(redis: Redis, func: str | Callable[..., Any], *args: Any,
            queue: str = DEFAULT_QUEUE, job_id: str | None = None, unique: bool = False,
            retries: int = 0, retry_intervals: list[int] | None = None,
            timeout: int = DEFAULT_TIMEOUT_S, result_ttl: int = RESULT_TTL_S,
            failure_ttl: int = FAILURE_TTL_S, meta: dict[str, Any] | None = None,
            **kwargs: Any) -> Job:
    """Enqueue a job the one way the portal does it; returns the job.

    With `unique`, a job whose id is already queued or running is not enqueued
    again: the existing job is returned instead. A finished or failed job of
    that id (kept for its result or reason) is replaced by the new one.
    Keyword arguments beyond these are the job's. Every job has the failure
    callback that records a reason RQ found (a worker that died) on its run.
    """
    q = Queue(queue, connection=redis)
    retry = Retry(max=retries, interval=retry_intervals or [10, 60, 300]) if retries else None
    for _ in range(2):
        try:
            return q.enqueue(  # type: ignore[type-var]
                func, args=args, kwargs=kwargs, job_id=job_id, unique=unique,
                job_timeout=timeout, result_ttl=result_ttl, failure_ttl=failure_ttl,
                meta=meta or {}, retry=retry, on_failure=Callback(FAILURE_CALLBACK),
            )
        except DuplicateJobError:
            assert job_id is not None
            try:
                existing = Job.fetch(job_id, connection=redis)
                if existing.get_status() not in ENDED:
                    return existing
            except (NoSuchJobError, InvalidJobOperation):
                continue  # it ended and RQ removed it (result_ttl=0) since: enqueue anew
            existing.delete()  # its result or reason is kept in the run record
    raise RuntimeError(f"job {job_id} could not be enqueued")


# --- the portal's jobs on connections: one job id per run ---------------------
#
# The registry's run record is what was asked for (portal.sync.runs.request_run
# keeps at most one queued or running run of a kind per connection); its job is
# `<kind>-<connection>-<run>`, so a status URL names one run, and enqueuing a
# run again (after Redis lost it) cannot queue it twice. The connection's lock
# (jobs.sync) keeps two jobs from working on one connection at once.

RUN_JOBS = {"connect": "jobs.sync.connect", "sync": "jobs.sync.sync_run",
            "metadata": "jobs.sync.update_metadata"}
# Records on the run a failure the job could not record itself (its worker
# died: RQ's started-job clean-up, or a killed work horse).
FAILURE_CALLBACK = "jobs.sync.job_failed"


def run_job_id(kind: str, connection_id: int, run_id: int) -> str:
    """The RQ job id of one run (letters, digits, '-')."""
    return f"{kind}-{connection_id}-{run_id}"


def parse_run_job_id(job_id: str) -> tuple[str, int, int] | None:
    """(kind, connection id, run id) of a run's job id; None if it is not one."""
    parts = job_id.split("-")
    if len(parts) != 3 or parts[0] not in RUN_JOBS or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2])


def enqueue_run(redis: Redis, kind: str, connection_id: int, run_id: int,
                trigger: str) -> Job:
    """Enqueue the job of a queued run (again, if Redis lost it); returns the job."""
    args: tuple[Any, ...] = (connection_id,) if kind == "connect" else (connection_id, trigger)
    return enqueue(redis, RUN_JOBS[kind], *args, job_id=run_job_id(kind, connection_id, run_id),
                   unique=True, meta={"run_id": run_id}, run_id=run_id,
                   result_ttl=3600 if kind == "connect" else 0, failure_ttl=3600)


def enqueue_upload(redis: Redis, connection_id: int) -> Job:
    """Enqueue an upload of pending transactions (instant mode), coalesced per connection."""
    # One queued upload per connection, whatever the number of writes: the
    # upload job records its own run when it starts. A write coming while the
    # upload runs may be past what it reads, so it queues the second id, which
    # runs next (the connection's lock keeps them in turn): at most one waits.
    job: Job | None = None
    for job_id in (f"upload-{connection_id}", f"upload-{connection_id}-next"):
        job = enqueue(redis, "jobs.sync.upload", connection_id, job_id=job_id,
                      unique=True, result_ttl=0, failure_ttl=300, retries=3)
        if job.get_status(refresh=False) != JobStatus.STARTED:
            return job
    assert job is not None
    return job  # both running: the second has yet to take the lock, and reads after it


# --- the admin's checks of a connection's server: short jobs with a result ------
#
# A person waits for them on a page that reloads until the job ended: the
# result (or the reason of a failure) is kept a while for that page to read.
# The id names the connection and a random part, so that a page can only
# read the checks of its own connection and two admins do not share one.

CHECK_JOBS = {"preview": "jobs.checks.preview_metadata",
              "credentials": "jobs.checks.check_credentials"}
CHECK_TTL_S = 900


def enqueue_check(redis: Redis, kind: str, connection_id: int) -> Job:
    """Enqueue a check of the connection's server (metadata preview, credentials test)."""
    job_id = f"{kind}-{connection_id}-{secrets.token_hex(16)}"
    return enqueue(redis, CHECK_JOBS[kind], connection_id, job_id=job_id, timeout=300,
                   result_ttl=CHECK_TTL_S, failure_ttl=CHECK_TTL_S)


def is_check_of(job_id: str, kind: str, connection_id: int) -> bool:
    """True when job_id is a check of this kind made for this connection."""
    parts = job_id.split("-")
    return (len(parts) == 3 and parts[0] == kind and kind in CHECK_JOBS
            and parts[1] == str(connection_id) and len(parts[2]) == 32
            and all(c in "0123456789abcdef" for c in parts[2]))


def check_result(redis: Redis, job_id: str) -> Any:
    """The value a finished check returned (None while it works, or if it left none)."""
    job = fetch_job(redis, job_id)
    return job.return_value() if job is not None else None


# --- reading jobs ----------------------------------------------------------------

def fetch_job(redis: Redis, job_id: str) -> Job | None:
    """The job of this id, or None when RQ keeps none (never enqueued, or ended and removed)."""
    try:
        return Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return None


def job_status(job: Job | None) -> str:
    """A job's state as RQ names it (queued, started, finished, failed...); 'unknown' for none."""
    status = job.get_status(refresh=False) if job is not None else None
    return "unknown" if status is None else str(getattr(status, "value", status))


def waiting_or_running(job: Job | None) -> bool:
    """True when the job is queued, scheduled, deferred or being worked on."""
    return job is not None and job_status(job) in WAITING_OR_RUNNING


# --- watching a job ----------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """A job as someone waiting for it sees it: status, last reported progress, failure."""

    id: str
    status: str  # RQ's name for it (JobStatus values): queued, started, finished, failed, …
    progress: dict[str, Any] | None  # what the job keeps in meta["progress"]
    failure: str | None  # the last line of its exception, once it ended failed

    @property
    def waiting(self) -> bool:
        """No worker has taken the job yet."""
        return self.status in WAITING

    @property
    def running(self) -> bool:
        """A worker is working on the job."""
        return self.status == JobStatus.STARTED

    @property
    def ended(self) -> bool:
        """The job finished, failed, or was stopped or canceled."""
        return self.status in ENDED


def job_state(redis: Redis, job_id: str) -> JobState | None:
    """A job's state; None once Redis no longer keeps it (result_ttl=0 deletes it as it ends)."""
    job = fetch_job(redis, job_id)
    if job is None:
        return None
    status = job.get_status(refresh=False)
    name = str(getattr(status, "value", status))
    failed = name in ENDED and name != JobStatus.FINISHED
    result = job.latest_result() if failed else None  # one more read, only once it failed
    text = (result.exc_string or "").strip() if result is not None else ""
    failure = text.splitlines()[-1] if text else None
    return JobState(job.id, name, job.meta.get("progress"), failure)

# --- what the operator's status page shows: RQ's own registries and worker API ---

@dataclass
class QueueState:
    """One queue's lengths."""

    name: str
    queued: int
    started: int
    scheduled: int
    failed: int


@dataclass
class WorkerState:
    """One worker and what it does now."""

    name: str
    state: str
    queues: list[str]
    job_id: str | None
    job: str | None  # the current job's description
    last_heartbeat: datetime | None


@dataclass
class FailedJob:
    """A job in a failed registry, with the last line of its exception as the reason."""

    id: str
    queue: str
    job: str
    reason: str
    ended_at: datetime | None


@dataclass
class SchedulerState:
    """An `rq cron` scheduler process and its last heartbeat."""

    name: str
    hostname: str
    pid: int
    last_heartbeat: datetime | None


def queue_states(redis: Redis) -> list[QueueState]:
    """Every queue RQ knows (the default one at least), with its registries' lengths."""
    queues = {q.name: q for q in Queue.all(connection=redis)}
    queues.setdefault(DEFAULT_QUEUE, Queue(DEFAULT_QUEUE, connection=redis))
    return [QueueState(name, len(q), q.started_job_registry.count, q.scheduled_job_registry.count,
                       q.failed_job_registry.count) for name, q in sorted(queues.items())]


def worker_states(redis: Redis) -> list[WorkerState]:
    """Every live worker, with its current job."""
    from rq import Worker

    states = []
    for worker in sorted(Worker.all(connection=redis), key=lambda w: w.name):
        job = worker.get_current_job()
        states.append(WorkerState(worker.name, str(worker.get_state()), worker.queue_names(),
                                  job.id if job else None, job.description if job else None,
                                  worker.last_heartbeat))
    return states


def failed_jobs(redis: Redis, limit: int = 100) -> list[FailedJob]:
    """The newest failed jobs of every queue, with their reasons."""
    found = []
    for state in queue_states(redis):
        registry = Queue(state.name, connection=redis).failed_job_registry
        for job in Job.fetch_many(registry.get_job_ids(0, limit - 1), connection=redis):
            if job is None:
                continue
            result = job.latest_result()
            lines = ((result.exc_string if result else None) or "").strip().splitlines()
            found.append(FailedJob(job.id, state.name, job.description or job.func_name or job.id,
                                   lines[-1] if lines else "(no reason recorded)", job.ended_at))
    return sorted(found, key=lambda j: j.ended_at.timestamp() if j.ended_at else 0.0,
                  reverse=True)[:limit]


def _failed(redis: Redis, job_id: str) -> tuple[Job, Queue]:
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        raise LookupError(f"job {job_id} does not exist (any more)") from None
    if job.get_status() != JobStatus.FAILED:
        raise LookupError(f"job {job_id} has not failed: it is {job.get_status().value}")
    return job, Queue(job.origin, connection=redis)


def requeue_failed(redis: Redis, job_id: str) -> None:
    """Put a failed job back in its queue (RQ's failed registry requeue); LookupError if none."""
    _, queue = _failed(redis, job_id)
    queue.failed_job_registry.requeue(job_id)


def delete_failed(redis: Redis, job_id: str) -> None:
    """Delete a failed job and its record in the failed registry; LookupError if none."""
    job, _ = _failed(redis, job_id)
    job.delete()


def scheduler_states(redis: Redis) -> list[SchedulerState]:
    """The `rq cron` schedulers registered in Redis, with their heartbeats."""
    from rq.cron import CronScheduler

    return [SchedulerState(s.name, s.hostname, s.pid, s.last_heartbeat)
            for s in CronScheduler.all(connection=redis)]


def cron_heartbeat(redis: Redis) -> str | None:
    """When the scheduler's heartbeat job last ran on a worker (UTC), if ever."""
    value = redis.get(CRON_HEARTBEAT_KEY)
    return value.decode() if isinstance(value, bytes) else value

"""Jobs enqueued through the one helper run on a real RQ worker against a real Redis."""

from flask import Flask
from redis import Redis
from rq import SimpleWorker
from rq.job import JobStatus

from portal.db import get_db
from portal.orgs import registry
from portal.queue import enqueue, job_state
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, orgs_dir


def test_job_enqueued_by_the_helper_runs_on_a_worker(app: Flask, redis: Redis) -> None:
    with app.app_context():
        for name in ("alpha", "bravo"):
            registry.create_org(get_db(), orgs_dir(app), name, email=ADMIN_EMAIL,
                                password=ADMIN_PASSWORD)
        job = enqueue(redis, "jobs.maintenance.count_orgs", job_id="count-orgs")
        assert job.get_status() == JobStatus.QUEUED
        SimpleWorker(["default"], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 2


def test_unique_job_is_enqueued_once(app: Flask, redis: Redis) -> None:
    first = enqueue(redis, "jobs.maintenance.count_orgs", job_id="only-once", unique=True)
    second = enqueue(redis, "jobs.maintenance.count_orgs", job_id="only-once", unique=True)
    assert first.id == second.id == "only-once"
    assert redis.llen("rq:queue:default") == 1


def test_failed_job_keeps_its_reason_in_the_failed_registry(app: Flask, redis: Redis) -> None:
    with app.app_context():
        job = enqueue(redis, "jobs.maintenance.no_such_job")
        SimpleWorker(["default"], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert "no_such_job" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_heartbeat_job_records_the_time(app: Flask, redis: Redis) -> None:
    from jobs.maintenance import CRON_HEARTBEAT_KEY

    with app.app_context():
        enqueue(redis, "jobs.maintenance.heartbeat")
        SimpleWorker(["default"], connection=redis).work(burst=True)
    assert redis.get(CRON_HEARTBEAT_KEY).decode().endswith("Z")  # type: ignore[union-attr]


def test_job_state_is_what_a_waiter_sees(app: Flask, redis: Redis) -> None:
    with app.app_context():
        enqueue(redis, "jobs.maintenance.count_orgs", job_id="counted")
        enqueue(redis, "jobs.maintenance.no_such_job", job_id="broken")
        queued = job_state(redis, "counted")
        assert queued is not None and queued.status == "queued"
        assert queued.waiting and not queued.running and not queued.ended
        SimpleWorker(["default"], connection=redis).work(burst=True)
    finished, failed = job_state(redis, "counted"), job_state(redis, "broken")
    assert finished is not None and finished.ended and finished.failure is None
    assert failed is not None and failed.status == "failed" and failed.ended
    # The last line of the exception only, as the CLI prints it.
    assert failed.failure is not None and "no_such_job" in failed.failure
    assert "\n" not in failed.failure
    assert job_state(redis, "no-such-id") is None

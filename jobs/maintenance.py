"""Small jobs that keep the portal healthy and prove the queue works end to end."""

from jobs.context import app_context
from portal.db import get_db, utcnow
from portal.orgs.registry import list_orgs
from portal.queue import CRON_HEARTBEAT_KEY, get_redis


def count_orgs() -> int:
    """Count the hosted orgs in the registry (a worker reads the same database as the web)."""
    with app_context():
        return len(list_orgs(get_db()))


def heartbeat() -> str:
    """Record that the scheduler and a worker are alive; the status page shows it."""
    with app_context():
        now = utcnow()
        get_redis().set(CRON_HEARTBEAT_KEY, now)
        return now

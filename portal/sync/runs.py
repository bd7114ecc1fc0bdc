"""Sync runs and their log (Resco's migrate_log), kept per org in the registry."""

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import InvalidInput
from portal.orgs import store, sync_state

KINDS = ("connect", "sync", "metadata", "upload")
LEVELS = ("info", "conflict", "error")
MAX_SEARCH_LENGTH = 200
TRIGGERS = ("connect", "button", "schedule", "api", "cli", "write")


class RunStatus(StrEnum):
    """Where a run stands: queued (asked for), running, or how it ended."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LIMITED = "limited"  # stopped by the server's limits (429 budget spent); resumes next run


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
# The reason of a run whose worker died (RQ's clean-up, or the connection lock's TTL).
ABANDONED = "abandoned: the worker stopped"


def request_run(db: Database, connection_id: int, org_id: int, kind: str,
                trigger: str) -> tuple[int, bool]:
    """A queued run of this kind, or the one queued or running already: (run id, existing).

    The registry, not the queue, keeps what was asked for: a job lost with
    Redis is enqueued again from its queued run, and at most one run of a kind
    per connection is queued or running.
    """
    with immediate(db):
        row = db.execute("SELECT id FROM sync_runs WHERE connection_id = ? AND kind = ? "
                         "AND status IN (?, ?) ORDER BY id DESC LIMIT 1",
                         [connection_id, kind, *ACTIVE]).fetchone()
        if row is not None:
            return int(row[0]), True
        return int(db.table("sync_runs").insert({
            "connection_id": connection_id, "org_id": org_id, "kind": kind, "trigger": trigger,
            "status": RunStatus.QUEUED, "started": utcnow()}).last_pk or 0), False


def start_run(db: Database, connection_id: int, org_id: int, kind: str, trigger: str,
              job_id: str | None = None, run_id: int | None = None) -> int:
    """Record that a run began (the queued run `run_id`, else a new one); returns its id."""
    with immediate(db):
        # A queued run is taken up; one that ended meanwhile (abandoned while its
        # job waited) is not reopened: the job records a run of its own.
        if run_id is not None and db.execute(
                "SELECT 1 FROM sync_runs WHERE id = ? AND connection_id = ? AND status = ?",
                [run_id, connection_id, RunStatus.QUEUED]).fetchone():
            db.execute("UPDATE sync_runs SET status = ?, started = ?, ended = NULL, "
                       "error = NULL, job_id = ? WHERE id = ?",
                       [RunStatus.RUNNING, utcnow(), job_id, run_id])
            return run_id
        return int(db.table("sync_runs").insert({
            "connection_id": connection_id, "org_id": org_id, "kind": kind, "trigger": trigger,
            "status": RunStatus.RUNNING, "started": utcnow(), "job_id": job_id}).last_pk or 0)


def finish_run(db: Database, run_id: int, status: RunStatus, counts: dict[str, Any],
               duration_s: float | None, error: str | None = None) -> None:
    """Record how a run ended, with its per-entity counts."""
    with immediate(db):
        db.execute("UPDATE sync_runs SET status = ?, ended = ?, duration_s = ?, counts = ?, "
                   "error = ? WHERE id = ?",
                   [RunStatus(status), utcnow(),
                    None if duration_s is None else round(duration_s, 3),
                    json.dumps(counts), error, run_id])


def end_active(db: Database, run_id: int, error: str) -> bool:
    """Mark a queued or running run failed with this reason; False if it had ended already."""
    with immediate(db):
        return db.execute("UPDATE sync_runs SET status = ?, ended = ?, error = ? "
                          "WHERE id = ? AND status IN (?, ?)",
                          [RunStatus.FAILED, utcnow(), error, run_id, *ACTIVE]).rowcount == 1


def get_run(db: Database, run_id: int) -> dict[str, Any] | None:
    """One run by id, counts decoded; None if there is none."""
    rows = list(db.query("SELECT * FROM sync_runs WHERE id = ?", [run_id]))
    return dict(rows[0], counts=json.loads(rows[0]["counts"] or "{}")) if rows else None


def active_runs(db: Database) -> list[dict[str, Any]]:
    """Every queued or running run, oldest first."""
    return list(db.query("SELECT * FROM sync_runs WHERE status IN (?, ?) ORDER BY id",
                         [*ACTIVE]))


def abandoned(run: dict[str, Any]) -> bool:
    """Whether a run ended because its worker stopped."""
    return run["status"] == RunStatus.FAILED and (run["error"] or "").startswith(ABANDONED)


def resuming(db: Database, orgs_dir: str | Path, connection_id: int, org_name: str) -> bool:
    """Whether the connect or sync run queued or going on now resumes one that stopped short.

    It does when the run of its kind before it did not succeed (killed, failed,
    stopped by the server's limits) and the client org holds committed pages
    to go on from, committed before this run began; a reconnect to another server
    drops those, so it starts fresh (and stays so while it commits pages of its own).
    """
    active = db.execute(
        "SELECT id, kind, started FROM sync_runs WHERE connection_id = ? AND status IN (?, ?) "
        "AND kind IN ('connect', 'sync') ORDER BY id DESC LIMIT 1",
        [connection_id, *ACTIVE]).fetchone()
    if active is None:
        return False
    before = db.execute("SELECT status FROM sync_runs WHERE connection_id = ? AND kind = ? "
                        "AND id < ? ORDER BY id DESC LIMIT 1",
                        [connection_id, active[1], active[0]]).fetchone()
    if before is None or before[0] == RunStatus.SUCCEEDED:
        return False
    with store.open_org(orgs_dir, org_name) as org:
        # Pages committed before this run began (or was asked for), not by this run itself.
        return any(moved < active[2] for moved in sync_state.last_downloads(org).values())


def abandoned_streak(db: Database, connection_id: int, kind: str) -> int:
    """How many of the connection's last runs of this kind in a row were abandoned."""
    streak = 0
    for row in db.query("SELECT status, error FROM sync_runs WHERE connection_id = ? AND "
                        "kind = ? ORDER BY id DESC LIMIT 10", [connection_id, kind]):
        if not abandoned(dict(row)):
            break
        streak += 1
    return streak


def log(db: Database, org_id: int, run_id: int | None, level: str, message: str,
        entity: str | None = None) -> None:
    """Add one line to the org's sync log."""
    with immediate(db):
        db.table("sync_logs").insert({"run_id": run_id, "org_id": org_id, "at": utcnow(),
                                      "level": level, "entity": entity, "message": message})


def list_runs(db: Database, org_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The org's newest runs first, counts decoded."""
    rows = db.query("SELECT * FROM sync_runs WHERE org_id = ? ORDER BY id DESC LIMIT ?",
                    [org_id, limit])
    return [dict(r, counts=json.loads(r["counts"] or "{}")) for r in rows]


def list_logs(db: Database, org_id: int, run_id: int | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
    """The org's newest log lines first (of one run, if given)."""
    if run_id is None:
        return list(db.query("SELECT * FROM sync_logs WHERE org_id = ? ORDER BY id DESC LIMIT ?",
                             [org_id, limit]))
    return list(db.query("SELECT * FROM sync_logs WHERE org_id = ? AND run_id = ? "
                         "ORDER BY id DESC LIMIT ?", [org_id, run_id, limit]))


def running_run(db: Database, connection_id: int,
                status: RunStatus = RunStatus.RUNNING) -> dict[str, Any] | None:
    """The connection's newest run in this state (by default: going on now), if any."""
    rows = list(db.query("SELECT * FROM sync_runs WHERE connection_id = ? AND status = ? "
                         "ORDER BY id DESC LIMIT 1", [connection_id, status]))
    return dict(rows[0], counts=json.loads(rows[0]["counts"] or "{}")) if rows else None


@dataclass
class LogQuery:
    """What the Logs tab searches for; None means any."""

    level: str | None = None
    run_id: int | None = None
    entity: str | None = None
    text: str | None = None


@dataclass
class LogPage:
    """Log lines, newest first, and the key of the next (older) page."""

    lines: list[dict[str, Any]]
    older: int | None


def search_logs(db: Database, org_id: int, query: LogQuery, *, before: int | None = None,
                limit: int = 100) -> LogPage:
    """The org's log lines matching the query, newest first, by keyset paging on their ids."""
    where: list[str] = ["org_id = ?"]
    params: list[Any] = [org_id]
    if query.level is not None:
        if query.level not in LEVELS:
            raise InvalidInput(f"unknown level {query.level!r} (one of {', '.join(LEVELS)})",
                               field="level")
        where.append("level = ?")
        params.append(query.level)
    if query.run_id is not None:
        where.append("run_id = ?")
        params.append(query.run_id)
    if query.entity:
        where.append("entity = ?")
        params.append(query.entity)
    if query.text:
        if len(query.text) > MAX_SEARCH_LENGTH:
            raise InvalidInput(f"search at most {MAX_SEARCH_LENGTH} characters", field="text")
        escaped = query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("message LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if before is not None:
        where.append("id < ?")
        params.append(before)
    rows = list(db.query(f"SELECT * FROM sync_logs WHERE {' AND '.join(where)} "
                         "ORDER BY id DESC LIMIT ?", [*params, limit + 1]))
    more = len(rows) > limit
    rows = rows[:limit]
    return LogPage(rows, rows[-1]["id"] if more and rows else None)


def last_runs(db: Database) -> dict[int, dict[str, Any]]:
    """Each connection's newest run, by connection id (the operator's overview)."""
    rows = db.query("SELECT * FROM sync_runs WHERE id IN "
                    "(SELECT max(id) FROM sync_runs GROUP BY connection_id)")
    return {r["connection_id"]: dict(r, counts=json.loads(r["counts"] or "{}")) for r in rows}


def last_errors(db: Database) -> dict[int, dict[str, Any]]:
    """Each connection's newest failed run, by connection id."""
    rows = db.query("SELECT * FROM sync_runs WHERE id IN (SELECT max(id) FROM sync_runs "
                    "WHERE status = 'failed' GROUP BY connection_id)")
    return {r["connection_id"]: dict(r) for r in rows}

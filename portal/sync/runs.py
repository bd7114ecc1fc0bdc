"""Sync runs and their log (Resco's migrate_log), kept per org in the registry."""

import json
from enum import StrEnum
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow

KINDS = ("connect", "sync", "metadata", "upload")
TRIGGERS = ("connect", "button", "schedule", "api", "cli", "write")


class RunStatus(StrEnum):
    """How a run stands: running, or how it ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def start_run(db: Database, connection_id: int, org_id: int, kind: str, trigger: str,
              job_id: str | None = None) -> int:
    """Record that a run began; returns its id."""
    with immediate(db):
        return int(db.table("sync_runs").insert({
            "connection_id": connection_id, "org_id": org_id, "kind": kind, "trigger": trigger,
            "status": RunStatus.RUNNING, "started": utcnow(), "job_id": job_id}).last_pk or 0)


def finish_run(db: Database, run_id: int, status: RunStatus, counts: dict[str, Any],
               duration_s: float, error: str | None = None) -> None:
    """Record how a run ended, with its per-entity counts."""
    with immediate(db):
        db.execute("UPDATE sync_runs SET status = ?, ended = ?, duration_s = ?, counts = ?, "
                   "error = ? WHERE id = ?",
                   [status, utcnow(), round(duration_s, 3), json.dumps(counts), error, run_id])


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

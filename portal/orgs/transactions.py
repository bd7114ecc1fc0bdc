"""Offline transactions of a sync client org (Resco's migrate_transaction).

Every change made to a client org — through the Org API or the admin, not by
the sync engine's downloads — is recorded here in the same SQLite transaction
as the change itself, with status pending. The sync engine uploads pending
transactions in order and marks them processed, or error with the server's
message; the admin can set them back to pending or archive them.
"""

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.errors import InvalidInput
from portal.orgs.store import OrgDb


class TransactionStatus(StrEnum):
    """Where an offline transaction stands (Resco's migrate_transaction statuses)."""

    PENDING = "pending"  # to be uploaded
    PROCESSED = "processed"  # the server has it
    ERROR = "error"  # refused or lost a conflict: waits for the admin
    ARCHIVED = "archived"  # never to be uploaded


OPERATIONS = ("create", "update", "delete")
# Changes not yet on the server.
OPEN = (TransactionStatus.PENDING, TransactionStatus.ERROR)


@dataclass
class Transaction:
    """One recorded change of a client org."""

    id: int
    entity: str
    record_id: str
    operation: str
    changes: dict[str, Any]
    client_version: int
    status: TransactionStatus
    error: str | None
    attempts: int
    created: str
    updated: str


def is_client(db: Database) -> bool:
    """True when the org is the client of a connection, so its changes are recorded."""
    row = db.execute("SELECT value FROM _org WHERE key = 'sync_client'").fetchone()
    return bool(row and row[0])


def set_client(org: OrgDb, on: bool) -> None:
    """Start or stop recording the org's changes as offline transactions."""
    with immediate(org.db):
        org.db.execute("UPDATE _org SET value = ? WHERE key = 'sync_client'", [int(on)])


def record(db: Database, entity: str, record_id: str, operation: str, changes: dict[str, Any],
           client_version: int) -> None:
    """Record one change; called by the write path inside the change's transaction."""
    now = utcnow()
    db.execute(
        "INSERT INTO _transactions (entity, record_id, operation, changes, client_version, "
        "status, attempts, created, updated) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
        [entity, record_id, operation, json.dumps(changes), client_version,
         TransactionStatus.PENDING, now, now])


def _from_row(row: dict[str, Any]) -> Transaction:
    return Transaction(**{**row, "changes": json.loads(row["changes"]),
                          "status": TransactionStatus(row["status"])})


def list_transactions(org: OrgDb, status: str | None = None, *, limit: int = 100,
                      offset: int = 0) -> list[Transaction]:
    """Transactions, oldest first, optionally of one status."""
    if status is not None and status not in set(TransactionStatus):
        raise InvalidInput(f"unknown status {status!r} (one of {', '.join(TransactionStatus)})",
                           field="status")
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    rows = org.db.query(f"SELECT * FROM _transactions {where} ORDER BY id LIMIT ? OFFSET ?",
                        [*params, limit, offset])
    return [_from_row(r) for r in rows]


@dataclass
class TransactionPage:
    """One page of transactions, newest first, with the keys of the pages around it."""

    items: list[Transaction]
    newer: int | None  # pass as `after` for the page of newer transactions
    older: int | None  # pass as `before` for the page of older ones


def page_transactions(org: OrgDb, status: str | None = None, *, before: int | None = None,
                      after: int | None = None, limit: int = 50) -> TransactionPage:
    """A page of transactions, newest first, by keyset (ids), so deep pages stay fast."""
    if status is not None and status not in set(TransactionStatus):
        raise InvalidInput(f"unknown status {status!r} (one of {', '.join(TransactionStatus)})",
                           field="status")
    where: list[str] = ["1"]
    params: list[Any] = []
    if status:
        where.append("status = ?")
        params.append(status)
    if after is not None:
        where.append("id > ?")
        params.append(after)
        order = "ASC"  # the page just above `after`, read upwards, then turned round
    else:
        if before is not None:
            where.append("id < ?")
            params.append(before)
        order = "DESC"
    rows = [_from_row(r) for r in org.db.query(
        f"SELECT * FROM _transactions WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
        [*params, limit + 1])]
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
    newest, oldest = (rows[0].id, rows[-1].id) if rows else (None, None)
    if after is not None:
        newer = newest if more else None
        older = oldest
    else:
        newer = newest if before is not None else None
        older = oldest if more else None
    # A neighbour page that turns out empty is harmless: it shows "no transactions".
    return TransactionPage(rows, newer, older)


def counts(org: OrgDb) -> dict[str, int]:
    """Number of transactions by status (every status present, zero or not)."""
    found = dict(org.db.execute(
        "SELECT status, count(*) FROM _transactions GROUP BY status").fetchall())
    return {str(s): int(found.get(s, 0)) for s in TransactionStatus}


def uploadable(org: OrgDb, limit: int) -> list[Transaction]:
    """Pending transactions in order, skipping records that wait behind an error.

    A transaction in error does not block other records, but later
    transactions of the same record stay behind it until it is resolved.
    """
    rows = org.db.query(
        "SELECT * FROM _transactions t WHERE status = 'pending' AND NOT EXISTS ("
        "  SELECT 1 FROM _transactions e WHERE e.entity = t.entity "
        "  AND e.record_id = t.record_id AND e.status = 'error' AND e.id < t.id) "
        "ORDER BY id LIMIT ?", [limit])
    return [_from_row(r) for r in rows]


def pending_records(org: OrgDb, entity: str) -> set[str]:
    """Ids of an entity's records with changes not yet on the server (pending or error)."""
    return {r[0] for r in org.db.execute(
        "SELECT DISTINCT record_id FROM _transactions WHERE entity = ? "
        "AND status IN ('pending', 'error')", [entity])}


def open_ids(org: OrgDb, entity: str, record_id: str) -> list[int]:
    """Ids of one record's transactions not yet on the server (pending or error), in order."""
    return [r[0] for r in org.db.execute(
        "SELECT id FROM _transactions WHERE entity = ? AND record_id = ? "
        "AND status IN ('pending', 'error') ORDER BY id", [entity, record_id])]


def mark(db: Database, ids: list[int], status: TransactionStatus,
         error: str | None = None) -> None:
    """Set the status of transactions (inside the caller's transaction); counts an attempt."""
    if status not in set(TransactionStatus):
        raise InvalidInput(f"unknown status {status!r}", field="status")
    now = utcnow()
    db.conn.executemany(
        "UPDATE _transactions SET status = ?, error = ?, attempts = attempts + 1, updated = ? "
        "WHERE id = ?", [(status, error, now, i) for i in ids])


def set_pending(org: OrgDb, ids: list[int]) -> int:
    """Admin: put error or archived transactions back in the queue; returns how many."""
    return _set(org, ids, TransactionStatus.PENDING,
                (TransactionStatus.ERROR, TransactionStatus.ARCHIVED))


def set_archived(org: OrgDb, ids: list[int]) -> int:
    """Admin: archive transactions so they are never uploaded; returns how many."""
    return _set(org, ids, TransactionStatus.ARCHIVED, OPEN)


def set_all_pending(org: OrgDb) -> int:
    """Admin: put every transaction in error back in the queue; returns how many."""
    with immediate(org.db):
        cursor = org.db.execute(
            "UPDATE _transactions SET status = 'pending', error = NULL, updated = ? "
            "WHERE status = 'error'", [utcnow()])
        return cursor.rowcount


def archive_open(org: OrgDb) -> int:
    """Archive every transaction not yet on the server (pending or error); returns how many."""
    with immediate(org.db):
        return org.db.execute(
            "UPDATE _transactions SET status = 'archived', updated = ? "
            "WHERE status IN ('pending', 'error')", [utcnow()]).rowcount


def _set(org: OrgDb, ids: list[int], status: TransactionStatus,
         allowed_from: tuple[TransactionStatus, ...]) -> int:
    if not ids:
        return 0
    marks = ",".join("?" * len(allowed_from))
    with immediate(org.db):
        changed = 0
        for i in ids:
            cursor = org.db.execute(
                f"UPDATE _transactions SET status = ?, error = NULL, updated = ? "
                f"WHERE id = ? AND status IN ({marks})", [status, utcnow(), i, *allowed_from])
            changed += cursor.rowcount
        return changed

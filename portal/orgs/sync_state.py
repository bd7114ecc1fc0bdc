"""Where a client org's download stands, and the server versions of its records.

Both live in the client org's own file so that the sync engine commits a
downloaded page, its records' server versions and the new checkpoint in one
transaction: a run killed anywhere resumes from the last committed page.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
from sqlite_utils import Database

from portal.db import immediate, utcnow
from portal.orgs.store import OrgDb


@dataclass
class Checkpoint:
    """An entity's download position: the server's next link, or its delta link once complete."""

    entity: str
    link: str | None
    complete: bool
    filter: str | None


def checkpoint(org: OrgDb, entity: str) -> Checkpoint:
    """The entity's checkpoint (no link yet: download from the start)."""
    row = org.db.execute("SELECT checkpoint, complete, filter FROM _sync_state WHERE entity = ?",
                         [entity]).fetchone()
    if row is None:
        return Checkpoint(entity, None, False, None)
    return Checkpoint(entity, row[0], bool(row[1]), row[2])


def save_checkpoint(db: Database, point: Checkpoint) -> None:
    """Store a checkpoint; call inside the transaction that writes the page it follows."""
    db.execute(
        "INSERT INTO _sync_state (entity, checkpoint, complete, filter, updated) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(entity) DO UPDATE SET checkpoint = excluded.checkpoint,"
        " complete = excluded.complete, filter = excluded.filter, updated = excluded.updated",
        [point.entity, point.link, int(point.complete), point.filter, utcnow()])


def reset(org: OrgDb, entity: str | None = None) -> None:
    """Forget where the download stands, so the next run reads the entity (or all) again."""
    with immediate(org.db):
        if entity is None:
            org.db.execute("DELETE FROM _sync_state")
        else:
            org.db.execute("DELETE FROM _sync_state WHERE entity = ?", [entity])


def server_versions(org: OrgDb, entity: str, ids: list[str]) -> dict[str, str]:
    """The server versions last seen of these records (those known)."""
    if not ids:
        return {}
    # The ids travel as one JSON array: one statement for a whole page of ids.
    return dict(org.db.execute(
        "SELECT id, version FROM _server_versions WHERE entity = ? AND id IN "
        "(SELECT value FROM json_each(?))", [entity, orjson.dumps(ids).decode()]).fetchall())


def save_server_versions(db: Database, entity: str, versions: dict[str, str]) -> None:
    """Remember the server versions of records (inside the caller's transaction)."""
    db.conn.executemany(
        "INSERT INTO _server_versions (entity, id, version) VALUES (?, ?, ?) "
        "ON CONFLICT(entity, id) DO UPDATE SET version = excluded.version",
        [(entity, i, v) for i, v in versions.items()])


def forget_server_versions(db: Database, entity: str, ids: list[str]) -> None:
    """Forget records the server no longer has (inside the caller's transaction)."""
    db.conn.executemany("DELETE FROM _server_versions WHERE entity = ? AND id = ?",
                        [(entity, i) for i in ids])


class ListedIds:
    """The ids a server lists now, kept in a temporary table of the client org's connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, ids: list[str]) -> None:
        """Note a page of ids the server lists."""
        self.db.conn.executemany("INSERT OR IGNORE INTO temp._server_ids (id) VALUES (?)",
                                 [(i,) for i in ids])

    def unlisted(self, entity: str) -> list[str]:
        """Ids of records the server had (a server version is kept) and no longer lists."""
        return [i for (i,) in self.db.execute(
            "SELECT id FROM _server_versions WHERE entity = ? "
            "AND id NOT IN (SELECT id FROM temp._server_ids)", [entity])]


@contextmanager
def listed_ids(org: OrgDb) -> Iterator[ListedIds]:
    """An empty list of the server's ids, emptied again on exit (flat memory for any size)."""
    db = org.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS _server_ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM temp._server_ids")
    try:
        yield ListedIds(db)
    finally:
        db.execute("DELETE FROM temp._server_ids")


def last_downloads(org: OrgDb) -> dict[str, str]:
    """When each entity's download last moved (its checkpoint's time), by entity."""
    return dict(org.db.execute("SELECT entity, updated FROM _sync_state").fetchall())

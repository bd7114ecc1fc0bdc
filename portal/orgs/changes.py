"""The change feed of an org: what changed in an entity after a given version.

It is what OData change tracking (delta links) and the sync engine read. A
page holds upserts (the record as it is now) and deletions (tombstones) in
version order, and the version to continue from. Because versions are given
out under the org's write lock, in commit order, a reader that continues from
the returned version neither misses nor repeats a change.
"""

import heapq
from dataclasses import dataclass
from typing import Any

from portal.db import immediate, snapshot
from portal.errors import ChangesExpired
from portal.orgs.records import codec
from portal.orgs.store import OrgDb, current_version, feed_start, set_feed_start

DEFAULT_PAGE = 1000


@dataclass
class Change:
    """One change: the record as it is now, or None when it was deleted."""

    version: int
    id: str
    record: dict[str, Any] | None

    @property
    def deleted(self) -> bool:
        """True for a tombstone."""
        return self.record is None


@dataclass
class ChangePage:
    """A page of the change feed and where the next page starts."""

    changes: list[Change]
    next_version: int
    more: bool


def changes_since(org: OrgDb, entity_name: str, after_version: int, *,
                  limit: int = DEFAULT_PAGE) -> ChangePage:
    """Changes of one entity with versionnumber > after_version, oldest first, paged.

    ChangesExpired when the feed cannot continue from after_version exactly.
    """
    c = codec(org, entity_name)
    db = org.db
    with snapshot(db):
        top = current_version(db)
        if after_version < feed_start(db, entity_name):
            raise ChangesExpired(f"the changes of {entity_name} after version {after_version} "
                                 "are no longer kept; read the entity again from the start")
        if after_version > top:
            raise ChangesExpired(f"version {after_version} is newer than this organization's "
                                 "changes (made again or restored since); read the entity "
                                 "again from the start")
        rows = list(db.query(
            f"SELECT * FROM [{entity_name}] WHERE versionnumber > ? "
            "ORDER BY versionnumber LIMIT ?", [after_version, limit + 1]))
        tombstones = db.execute(
            "SELECT versionnumber, id FROM _tombstones WHERE entity = ? AND versionnumber > ? "
            "ORDER BY versionnumber LIMIT ?", [entity_name, after_version, limit + 1]).fetchall()
    upserts = (Change(row["versionnumber"], row[c.pk], c.record(row)) for row in rows)
    deletions = (Change(version, record_id, None) for version, record_id in tombstones)
    merged = list(heapq.merge(upserts, deletions, key=lambda ch: ch.version))
    if len(merged) > limit:
        page = merged[:limit]
        return ChangePage(page, page[-1].version, True)
    # Everything of this entity up to `top` was visible in the snapshot.
    return ChangePage(merged, max(top, after_version), False)


def forget_tombstones(org: OrgDb, deleted_before: str) -> int:
    """Drop the tombstones of deletions older than a timestamp; how many were dropped.

    Tombstones are the only history the feed keeps, so each entity's feed start
    moves past the newest one forgotten: delta tokens from before it expire (their
    holders start over) rather than silently missing those deletions.
    """
    db = org.db
    with immediate(db):
        newest = db.execute(
            "SELECT entity, max(versionnumber) FROM _tombstones WHERE deletedon < ? "
            "GROUP BY entity", [deleted_before]).fetchall()
        for entity_name, version in newest:
            set_feed_start(db, entity_name, version)
        cursor = db.execute("DELETE FROM _tombstones WHERE deletedon < ?", [deleted_before])
    return cursor.rowcount

"""What the Synchronization tab lists: each server entity with its settings and its state."""

from dataclasses import dataclass

from sqlite_utils import Database

from portal.orgs import queries, sync_state
from portal.orgs.store import OrgDb
from portal.sync import connections

MAX_SEARCH_LENGTH = 100


@dataclass
class EntityRow:
    """One server entity as the admin sees it."""

    entity: str
    displayname: str
    enabled: bool
    sync_deletion: bool
    filter: str | None
    records: int | None  # None: the client has no table for it (yet)
    last_sync: str | None


def entity_rows(db: Database, org: OrgDb, connection_id: int,
                search: str | None = None) -> list[EntityRow]:
    """The connection's entities, by logical name; `search` matches either name, any case."""
    needle = (search or "").strip().lower()[:MAX_SEARCH_LENGTH]
    known = org.entities()
    last = sync_state.last_downloads(org)
    rows = []
    for setting in connections.entity_settings(db, connection_id):
        entity = known.get(setting.entity)
        displayname = (entity.displayname if entity else "") or setting.entity
        if needle and needle not in setting.entity.lower() and needle not in displayname.lower():
            continue
        rows.append(EntityRow(setting.entity, displayname, setting.enabled, setting.sync_deletion,
                              setting.filter, queries.count(org, entity) if entity else None,
                              last.get(setting.entity)))
    return rows

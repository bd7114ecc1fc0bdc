"""The sync run: upload the client's offline transactions, then download the server's changes.

Pure logic over two parts: a Backend (the server org, any protocol) and an
OrgDb (the client org). No Flask, no RQ: the jobs glue it to the registry and
the queue. Exactness rests on three rules:

* every downloaded page commits with its records, their server versions and
  the entity's checkpoint in one transaction of the client org's file, so a
  run killed anywhere resumes from the last committed page;
* every upload is idempotent: creates are upserts of the record's own GUID,
  updates and deletes carry the server version last seen (If-Match), and a
  412 whose server record already holds our values is recognised as our own
  write whose answer was lost;
* records written by downloads are not offline transactions, so nothing that
  came from the server goes back to it; our own uploads coming back in the
  server's change feed are recognised by their version and skipped.
"""

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from portal.backends.base import Backend, ChangesPage, Write, WriteResult
from portal.db import immediate
from portal.errors import BackendError
from portal.orgs import records, sync_state, transactions
from portal.orgs.metadata import Entity
from portal.orgs.store import OrgDb
from portal.orgs.transactions import Transaction
from portal.sync import filters
from portal.sync.connections import EntitySettings


@dataclass
class EntityCounts:
    """What a run did to one entity."""

    downloaded: int = 0
    uploaded: int = 0
    deleted: int = 0
    conflicts: int = 0
    errors: int = 0


@dataclass
class Reporter:
    """Where the engine tells progress and log lines (the job stores them)."""

    progress: Callable[[str, str | None, int, int | None], None] = lambda *a: None
    log: Callable[[str, str, str | None], None] = lambda *a: None


@dataclass
class RunResult:
    """Counts per entity of a run."""

    counts: dict[str, EntityCounts] = field(default_factory=dict)

    def of(self, entity: str) -> EntityCounts:
        """The counts of one entity, created on first use."""
        return self.counts.setdefault(entity, EntityCounts())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Counts as plain dicts (for the run record)."""
        return {name: vars(c) for name, c in sorted(self.counts.items())}

    def total(self, what: str) -> int:
        """Sum of one count over all entities."""
        return sum(getattr(c, what) for c in self.counts.values())


@dataclass
class Plan:
    """What to sync: the enabled server entities, their settings, the conflict policy."""

    entities: list[EntitySettings]
    conflict_policy: str = "server-wins"
    page_size: int = 1000  # records per downloaded page
    upload_batch: int = 1000  # transactions per upload round

    def setting(self, entity: str) -> EntitySettings | None:
        """The settings of a server entity, or None when it is not synced."""
        return next((e for e in self.entities if e.entity == entity), None)


# --- upload ------------------------------------------------------------------

@dataclass
class _Group:
    """Consecutive transactions of one record, folded into one write."""

    entity: str
    record_id: str
    items: list[Transaction]

    @property
    def created_here(self) -> bool:
        return self.items[0].operation == "create"

    @property
    def deletes(self) -> bool:
        return self.items[-1].operation == "delete"

    def values(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for item in self.items:
            merged.update(item.changes)
        return merged


def _fold(batch: list[Transaction]) -> list[_Group]:
    """Group a batch per record, in order; a record's group ends at its delete."""
    groups: dict[tuple[str, str], _Group] = {}
    closed: set[tuple[str, str]] = set()
    for item in batch:
        key = (item.entity, item.record_id)
        if key in closed:
            continue  # after a delete: waits for the next round, in order
        group = groups.setdefault(key, _Group(item.entity, item.record_id, []))
        group.items.append(item)
        if item.operation == "delete":
            closed.add(key)
    return list(groups.values())


def upload(org: OrgDb, backend: Backend, plan: Plan, reporter: Reporter,
           result: RunResult) -> None:
    """Send pending offline transactions to the server, in order, in batches."""
    entities = org.entities()
    done = 0
    while True:
        batch = transactions.uploadable(org, plan.upload_batch)
        if not batch:
            return
        sendable = []
        with immediate(org.db):
            for g in _fold(batch):
                ids = [t.id for t in g.items]
                if plan.setting(g.entity) is None or g.entity not in entities:
                    transactions.mark(org.db, ids, "archived",
                                      "not an entity of the server: kept on the client only")
                elif g.created_here and g.deletes:
                    # Created and deleted here before any upload: the server never knew it.
                    transactions.mark(org.db, ids, "processed")
                else:
                    sendable.append(g)
        if not sendable:
            continue
        known: dict[tuple[str, str], str] = {}
        for name in {g.entity for g in sendable}:
            record_ids = [g.record_id for g in sendable if g.entity == name]
            known.update({(name, i): v for i, v in
                          sync_state.server_versions(org, name, record_ids).items()})
        writes = [_write(entities[g.entity], g, known.get((g.entity, g.record_id)))
                  for g in sendable]
        answers = backend.apply_writes(writes)
        # The server's records of refused writes are read before the write lock is
        # taken: API writers of the client org must not wait on the network.
        servers = {n: backend.get_record(w.entity, w.record_id)
                   for n, (w, a) in enumerate(zip(writes, answers, strict=True))
                   if _needs_server_record(w, a)}
        retry: list[tuple[_Group, Write]] = []
        with immediate(org.db):
            for n, (group, write, answer) in enumerate(zip(sendable, writes, answers,
                                                           strict=True)):
                outcome = _settle(org, plan, reporter, result, group, write, answer,
                                  servers.get(n))
                if outcome is not None:
                    retry.append((group, outcome))
        if retry:  # client-wins and newest-wins-by-client: write again without a condition
            answers = backend.apply_writes([w for _, w in retry])
            with immediate(org.db):
                for (group, write), answer in zip(retry, answers, strict=True):
                    _settle(org, plan, reporter, result, group, write, answer, None,
                            forced=True)
        done += len(batch)
        reporter.progress("upload", None, done, None)


def _write(entity: Entity, group: _Group, known_version: str | None) -> Write:
    if group.deletes:
        return Write(entity, group.record_id, "delete", if_match=known_version)
    if group.created_here:
        # Create-only: if our first attempt's answer was lost, the repeat gets 412
        # and the engine finds its own record there, instead of writing it twice.
        return Write(entity, group.record_id, "upsert", group.values(), create_only=True)
    return Write(entity, group.record_id, "upsert", group.values(), if_match=known_version)


def _needs_server_record(write: Write, answer: WriteResult) -> bool:
    """A refused write (version changed, or record gone) is judged against the server's record."""
    return answer.status == "conflict" or (answer.status == "missing"
                                           and write.operation != "delete")


def _settle(org: OrgDb, plan: Plan, reporter: Reporter, result: RunResult, group: _Group,
            write: Write, answer: WriteResult, server: tuple[dict[str, Any], str] | None,
            forced: bool = False) -> Write | None:
    """Record one write's outcome; returns a write to send again unconditionally, if any.

    `server` is the server's record (and version) when the write was refused.
    """
    ids = [t.id for t in group.items]
    counts = result.of(group.entity)
    name, record_id = group.entity, group.record_id
    if answer.status == "ok":
        _accepted(org, group, answer.version, answer.record)
        counts.uploaded += 1
        return None
    if answer.status == "missing" and group.deletes:
        transactions.mark(org.db, ids, "processed")  # gone already (perhaps by our lost answer)
        _remember(org, name, record_id, None, deleted=True)
        counts.uploaded += 1
        return None
    if answer.status in ("conflict", "missing") and not forced:
        if server is not None and not group.deletes and _holds(server[0], write.values):
            # The server already has exactly our change: our earlier answer was lost.
            _accepted(org, group, server[1], server[0])
            counts.uploaded += 1
            return None
        return _conflict(org, plan, reporter, counts, group, write, server)
    transactions.mark(org.db, ids, "error", answer.message or answer.status)
    counts.errors += 1
    reporter.log("error", f"{name} {record_id}: {answer.message}", name)
    return None


def _accepted(org: OrgDb, group: _Group, version: str | None,
              server_record: dict[str, Any] | None) -> None:
    """The server has the group's change: mark it processed and take the server's times."""
    transactions.mark(org.db, [t.id for t in group.items], "processed")
    _remember(org, group.entity, group.record_id, version, deleted=group.deletes)
    if server_record and not group.deletes:
        # The server stamped the record with its own times: take them, so both
        # sides hold the same values (the other values are ours already).
        records.set_timestamps(org, group.entity, group.record_id,
                               server_record.get("createdon"), server_record.get("modifiedon"))


def _holds(server_record: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(server_record.get(k) == v for k, v in values.items())


def _conflict(org: OrgDb, plan: Plan, reporter: Reporter, counts: EntityCounts, group: _Group,
              write: Write, server: tuple[dict[str, Any], str] | None) -> Write | None:
    """Both sides changed the record since the last run: apply the connection's policy."""
    counts.conflicts += 1
    name, record_id = group.entity, group.record_id
    client_record = records.get_record(org, name, record_id)
    kind = ("update" if not group.deletes else "delete") + "/" + (
        "update" if server is not None else "delete")
    winner = plan.conflict_policy.split("-")[0]
    if winner == "newest":
        client_time = group.items[-1].created
        server_time = str(server[0].get("modifiedon") or "") if server else ""
        # A deletion on the server has no time we can see: it counts as newest.
        winner = "client" if server is not None and client_time > server_time else "server"
    reporter.log("conflict", f"{kind} conflict on {name} {record_id}, {winner} wins; "
                 f"client: {client_record}; server: {server[0] if server else 'deleted'}", name)
    ids = [t.id for t in group.items]
    if winner == "client":
        # Resend without a condition; a client delete of a server-deleted record is done.
        if group.deletes and server is None:
            transactions.mark(org.db, ids, "processed")
            _remember(org, name, record_id, None, deleted=True)
            return None
        values = group.values() if group.deletes else {
            **(client_record or {}), **group.values()}
        values = {k: v for k, v in values.items()
                  if k not in ("createdon", "modifiedon", "versionnumber")}
        return Write(write.entity, record_id, write.operation, values, if_match=None)
    # Server wins: bring the server's version (or its deletion) to the client now.
    transactions.mark(org.db, ids, "error",
                      f"conflict ({kind}): the server's version was kept")
    if server is None:
        records.delete_records(org, name, [record_id], from_server=True)
        _remember(org, name, record_id, None, deleted=True)
    else:
        records.save_records(org, name, [_project(_names(org.entity(name)), server[0])],
                             from_server=True)
        _remember(org, name, record_id, server[1])
    return None


def _remember(org: OrgDb, entity: str, record_id: str, version: str | None,
              deleted: bool = False) -> None:
    """Note what the server now holds of a record: its version ("" if it gave none), or nothing."""
    if deleted:
        sync_state.forget_server_versions(org.db, entity, [record_id])
    else:
        sync_state.save_server_versions(org.db, entity, {record_id: version or ""})


def _names(entity: Entity) -> set[str]:
    """The attributes a downloaded record may bring to the client entity."""
    return {a.logicalname for a in entity.attributes}  # save_records leaves versionnumber out


def _project(names: set[str], record: dict[str, Any]) -> dict[str, Any]:
    """The server record's values of the attributes the client entity has."""
    if record.keys() <= names:
        return record  # the common case: the server has no attribute the client lacks
    return {k: v for k, v in record.items() if k in names}


# --- download ----------------------------------------------------------------

def download(org: OrgDb, backend: Backend, plan: Plan, reporter: Reporter,
             result: RunResult, totals: dict[str, int] | None = None) -> None:
    """Bring each enabled entity's server changes since its checkpoint, page by page."""
    for setting in plan.entities:
        if setting.enabled and setting.entity in org.entities():
            download_entity(org, backend, plan, setting, reporter, result,
                            (totals or {}).get(setting.entity))


def download_entity(org: OrgDb, backend: Backend, plan: Plan, setting: EntitySettings,
                    reporter: Reporter, result: RunResult, total: int | None = None) -> None:
    """Download one entity's changes, committing each page with its checkpoint."""
    name = setting.entity
    entity = org.entity(name)
    names = _names(entity)
    rule = filters.parse_filter(setting.filter).check(entity) if setting.filter else None
    point = sync_state.checkpoint(org, name)
    link = point.link
    if (point.filter or None) != (setting.filter or None):
        link = None  # a new filter: read the entity again, so records now outside it leave
        reporter.log("info", "sync filter changed: reading the entity again", name)
    counts = result.of(name)
    done = 0
    started = time.monotonic()
    delta_link = None
    # Closed on any exit: the backend may be reading the next page in a thread.
    with closing(backend.read_changes(entity, link, page_size=plan.page_size)) as pages:
        for page in pages:
            delta_link = page.link
            with immediate(org.db):
                waiting = transactions.pending_records(org, name)
                rows, leaving, versions = _page_writes(org, plan, reporter, counts, entity,
                                                       names, rule, page, waiting)
                deleted = [i for i in page.deleted if i not in waiting] \
                    if setting.sync_deletion else []
                records.save_records(org, name, rows, from_server=True)
                gone = records.delete_records(org, name, deleted + leaving, from_server=True)
                sync_state.save_server_versions(org.db, name, versions)
                sync_state.forget_server_versions(org.db, name, deleted + leaving)
                sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
                    name, page.link, page.complete, setting.filter))
            counts.downloaded += len(rows)
            counts.deleted += gone
            done += len(page.upserts) + len(page.deleted)
            reporter.progress("download", name, done, total)
    if delta_link is None and setting.sync_deletion:
        # The read ended without a delta link: the server does not track deletions.
        counts.deleted += reconcile_deletions(org, backend, entity)
    reporter.log("info", f"downloaded {counts.downloaded}, deleted {counts.deleted} "
                 f"in {time.monotonic() - started:.2f} s", name)


def reconcile_deletions(org: OrgDb, backend: Backend, entity: Entity) -> int:
    """Delete client records the server had and no longer lists; returns how many.

    For servers that cannot report deletions. The server's ids are streamed
    into a temporary table of the client org's connection (flat memory for
    any size); a record counts as the server's when the client holds a server
    version of it, so records created here and not yet uploaded never leave.
    """
    name = entity.logicalname
    db = org.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS _server_ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM temp._server_ids")
    try:
        for ids in backend.read_ids(entity):
            db.conn.executemany("INSERT OR IGNORE INTO temp._server_ids (id) VALUES (?)",
                                [(i,) for i in ids])
        with immediate(db):
            waiting = transactions.pending_records(org, name)
            gone = [i for (i,) in db.execute(
                "SELECT id FROM _server_versions WHERE entity = ? "
                "AND id NOT IN (SELECT id FROM temp._server_ids)", [name]) if i not in waiting]
            deleted = records.delete_records(org, name, gone, from_server=True)
            sync_state.forget_server_versions(db, name, gone)
    finally:
        db.execute("DELETE FROM temp._server_ids")
    return deleted


def _page_writes(org: OrgDb, plan: Plan, reporter: Reporter, counts: EntityCounts,
                 entity: Entity, names: set[str], rule: filters.Filter | None, page: ChangesPage,
                 waiting: set[str]) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """A page's records to write, ids leaving the filter, and server versions to keep.

    Whole-page steps, so an initial download costs one pass over its records.
    """
    pk = entity.primaryidattribute
    upserts, leaving = page.upserts, []
    if rule is not None:
        upserts = []
        for record in page.upserts:
            if filters.matches(rule, record):
                upserts.append(record)
            else:
                leaving.append(record[pk])
    known = sync_state.server_versions(org, entity.logicalname, [r[pk] for r in upserts])
    # Our own upload coming back, or a page read twice: the server has the version we hold.
    skip = {i for i, v in known.items() if v and page.versions.get(i) == v}
    for record in [r for r in upserts if r[pk] in waiting and r[pk] not in skip]:
        if not _server_beats_client(org, plan, reporter, counts, entity, record):
            # The client's change wins: not written here; its version is kept so the
            # upload may now overwrite the server's record.
            skip.add(record[pk])
    rows = [_project(names, r) for r in upserts if r[pk] not in skip]
    if upserts is page.upserts and len(page.versions) == len(upserts):
        versions = page.versions  # the common case: every record came with its version
    else:  # records leaving the filter are forgotten; one without a version is known by ""
        versions = {r[pk]: page.versions.get(r[pk], "") for r in upserts}
    return rows, leaving, versions


def _server_beats_client(org: OrgDb, plan: Plan, reporter: Reporter, counts: EntityCounts,
                         entity: Entity, server_record: dict[str, Any]) -> bool:
    """A downloaded record the client also changed: does the server's version win?"""
    counts.conflicts += 1
    name, pk = entity.logicalname, entity.primaryidattribute
    client_record = records.get_record(org, name, server_record[pk])
    winner = plan.conflict_policy.split("-")[0]
    if winner == "newest":
        client_time = str((client_record or {}).get("modifiedon") or "")
        winner = "client" if client_time > str(server_record.get("modifiedon") or "") \
            else "server"
    reporter.log("conflict", f"update/update conflict on {name} {server_record[pk]} while "
                 f"downloading, {winner} wins; client: {client_record}; server: {server_record}",
                 name)
    if winner == "server":
        waiting = transactions.open_ids(org, name, server_record[pk])
        transactions.mark(org.db, waiting, "error",
                          "conflict (update/update): the server's version was kept")
        return True
    return False


# --- whole runs --------------------------------------------------------------

def run(org: OrgDb, backend: Backend, plan: Plan, reporter: Reporter) -> RunResult:
    """One sync run: upload, then download every enabled entity."""
    result = RunResult()
    reporter.progress("upload", None, 0, None)
    upload(org, backend, plan, reporter, result)
    download(org, backend, plan, reporter, result)
    return result


def count_records(backend: Backend, entities: list[Entity]) -> dict[str, int]:
    """How many records each entity has on the server, where the server says (for progress)."""
    totals = {}
    for entity in entities:
        try:
            counted = backend.count(entity)
        except BackendError:
            continue  # progress without a total is still progress
        if counted is not None:
            totals[entity.logicalname] = counted
    return totals

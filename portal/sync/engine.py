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

import dataclasses
import time
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from portal.backends.base import Backend, ChangesPage, Write, WriteResult
from portal.backends.prefetch import interleaved
from portal.db import immediate
from portal.errors import BackendError
from portal.orgs import records, sync_state, transactions
from portal.orgs.metadata import Entity
from portal.orgs.store import OrgDb
from portal.orgs.transactions import Transaction, TransactionStatus
from portal.sync import filters, streams
from portal.sync.connections import ConflictPolicy, EntitySettings


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
    conflict_policy: ConflictPolicy = ConflictPolicy.SERVER_WINS
    page_size: int = 1000  # records per downloaded page
    streams: int = 4  # entities downloaded at once (capped by the backend's max_streams)
    upload_batch: int = 1000  # transactions per upload round

    def __post_init__(self) -> None:
        self.conflict_policy = ConflictPolicy(self.conflict_policy)  # a name is taken too

    def setting(self, entity: str) -> EntitySettings | None:
        """The settings of a server entity, or None when it is not synced."""
        return next((e for e in self.entities if e.entity == entity), None)


@dataclass
class Run:
    """One run's context: the client org, the server, what to sync, where to report, counts."""

    org: OrgDb
    backend: Backend
    plan: Plan
    reporter: Reporter = field(default_factory=Reporter)
    result: RunResult = field(default_factory=RunResult)


# --- conflicts ---------------------------------------------------------------

class Side(StrEnum):
    """The side whose version a conflict keeps."""

    CLIENT = "client"
    SERVER = "server"


@dataclass
class Conflict:
    """A record both sides changed since the last run, as the engine found it."""

    entity: str
    record_id: str
    kind: str  # client's change / server's: "update/update", "delete/update", "update/delete"
    client_time: str  # when the client changed it
    client_record: dict[str, Any] | None
    server_record: dict[str, Any] | None  # None: deleted on the server
    transaction_ids: list[int]  # the client's changes of the record
    while_downloading: bool = False


def winner(policy: ConflictPolicy, client_time: str, server_record: dict[str, Any] | None) -> Side:
    """Which side a conflict's policy keeps; newest-wins compares the times of the changes."""
    if policy is ConflictPolicy.CLIENT_WINS:
        return Side.CLIENT
    if policy is ConflictPolicy.SERVER_WINS or server_record is None:
        # A deletion on the server has no time we can see: it counts as newest.
        return Side.SERVER
    server_time = str(server_record.get("modifiedon") or "")
    return Side.CLIENT if client_time > server_time else Side.SERVER


def resolve(run: Run, conflict: Conflict) -> Side:
    """Count, log and decide a conflict; the server winning puts the client's changes in error.

    The one resolution of uploads and downloads: the caller then applies the
    winner (sends the client's version again, or writes the server's).
    """
    run.result.of(conflict.entity).conflicts += 1
    side = winner(run.plan.conflict_policy, conflict.client_time, conflict.server_record)
    where = " while downloading" if conflict.while_downloading else ""
    server = conflict.server_record if conflict.server_record is not None else "deleted"
    run.reporter.log("conflict", f"{conflict.kind} conflict on {conflict.entity} "
                     f"{conflict.record_id}{where}, {side} wins; client: "
                     f"{conflict.client_record}; server: {server}", conflict.entity)
    if side is Side.SERVER:
        transactions.mark(run.org.db, conflict.transaction_ids, TransactionStatus.ERROR,
                          f"conflict ({conflict.kind}): the server's version was kept")
    return side


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

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.items]

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


def upload(run: Run) -> None:
    """Send pending offline transactions to the server, in order, in batches."""
    org, backend = run.org, run.backend
    entities = org.entities()
    done = 0
    while True:
        batch = transactions.uploadable(org, run.plan.upload_batch)
        if not batch:
            return
        sendable = []
        with immediate(org.db):
            for g in _fold(batch):
                if run.plan.setting(g.entity) is None or g.entity not in entities:
                    transactions.mark(org.db, g.ids, TransactionStatus.ARCHIVED,
                                      "not an entity of the server: kept on the client only")
                elif g.created_here and g.deletes:
                    # Created and deleted here before any upload: the server never knew it.
                    transactions.mark(org.db, g.ids, TransactionStatus.PROCESSED)
                else:
                    sendable.append(g)
        if not sendable:
            continue
        known: dict[tuple[str, str], str] = {}
        keys: dict[tuple[str, str], str] = {}
        for name in {g.entity for g in sendable}:
            record_ids = [g.record_id for g in sendable if g.entity == name]
            known.update({(name, i): v for i, v in
                          sync_state.server_versions(org, name, record_ids).items()})
            # Keyed servers' records, and N:N rows (they may have server ids), have keys.
            if backend.is_keyed(entities[name]) or entities[name].isintersect:
                keys.update({(name, i): k for i, k in
                             sync_state.keys_for_ids(org.db, name, record_ids).items()})
        writes = [_write(entities[g.entity], g, known.get((g.entity, g.record_id)),
                         keys.get((g.entity, g.record_id))) for g in sendable]
        _reference_keys(org, backend, entities, writes)
        answers = backend.apply_writes(writes)
        # The server's records of refused writes are read before the write lock is
        # taken: API writers of the client org must not wait on the network.
        created = {(w.entity.logicalname, w.record_id): a.server_key
                   for w, a in zip(writes, answers, strict=True) if a.server_key}
        servers = {n: _server_record(org, backend, w, a, created)
                   for n, (w, a) in enumerate(zip(writes, answers, strict=True))
                   if _needs_server_record(w, a)}
        retry: list[tuple[_Group, Write]] = []
        with immediate(org.db):
            for n, (group, write, answer) in enumerate(zip(sendable, writes, answers,
                                                           strict=True)):
                outcome = _settle(run, group, write, answer, servers.get(n))
                if outcome is not None:
                    retry.append((group, outcome))
        if retry:  # the client won: write again without a condition
            _reference_keys(org, backend, entities, [w for _, w in retry])
            answers = backend.apply_writes([w for _, w in retry])
            with immediate(org.db):
                for (group, write), answer in zip(retry, answers, strict=True):
                    _settle(run, group, write, answer, None, forced=True)
        done += len(batch)
        run.reporter.progress("upload", None, done, None)


def _write(entity: Entity, group: _Group, known_version: str | None,
           server_key: str | None) -> Write:
    if group.deletes:
        return Write(entity, group.record_id, "delete", if_match=known_version,
                     server_key=server_key)
    if group.created_here:
        # Create-only: if our first attempt's answer was lost, the repeat gets 412
        # and the engine finds its own record there, instead of writing it twice.
        return Write(entity, group.record_id, "upsert", group.values(), create_only=True,
                     server_key=server_key)
    return Write(entity, group.record_id, "upsert", group.values(), if_match=known_version,
                 server_key=server_key)


def _reference_keys(org: OrgDb, backend: Backend, entities: dict[str, Entity],
                    writes: list[Write]) -> None:
    """Give writes the server keys of the records their lookups point to, where keyed."""
    wanted: dict[str, set[str]] = {}  # keyed target entity -> client GUIDs
    for write in writes:
        for attr in write.entity.attributes:
            value = write.values.get(attr.logicalname)
            if attr.type == "lookup" and isinstance(value, str):
                for target in attr.targets:
                    if target in entities and backend.is_keyed(entities[target]):
                        wanted.setdefault(target, set()).add(value)
    if not wanted:
        return
    found: dict[str, str] = {}
    for target, ids in wanted.items():
        found.update(sync_state.keys_for_ids(org.db, target, ids))
    for write in writes:
        write.references = {v: found[v] for v in write.values.values()
                            if isinstance(v, str) and v in found}


def _server_record(org: OrgDb, backend: Backend, write: Write, answer: WriteResult,
                   created: dict[tuple[str, str], str]) -> tuple[dict[str, Any], str] | None:
    """The server's record of a write, under the client's ids (a keyed server's by its key).

    A refused create of a keyed record names the key it collided with in its answer.
    `created`: the keys this chunk's creates got, (entity, client GUID) -> key.
    """
    keyed = backend.is_keyed(write.entity)
    key = (write.server_key or answer.server_key) if keyed else write.record_id
    if key is None:
        return None  # the server never told us this record's key: it has no such record
    found = backend.get_record_references(write.entity, key)
    if found is None:
        return None
    record, version, references = found
    record = {**record, write.entity.primaryidattribute: write.record_id}
    # Its lookups to keyed records come under their targets' derived GUIDs: each
    # is the client's GUID of that key, as a download maps it; the keys this chunk's
    # creates got are not stored yet.
    made = {(target, k): guid for (target, guid), k in created.items()}
    refs = _client_references(org, references, made)
    swapped = {a.logicalname: refs[record[a.logicalname]] for a in write.entity.attributes
               if a.type == "lookup" and record.get(a.logicalname) in refs}
    return {**record, **swapped}, version


def _needs_server_record(write: Write, answer: WriteResult) -> bool:
    """A refused write (version changed, or record gone) is judged against the server's record."""
    return answer.status == "conflict" or (answer.status == "missing"
                                           and write.operation != "delete")


def _settle(run: Run, group: _Group, write: Write, answer: WriteResult,
            server: tuple[dict[str, Any], str] | None, forced: bool = False) -> Write | None:
    """Record one write's outcome; returns a write to send again unconditionally, if any.

    `server` is the server's record (and version) when the write was refused.
    """
    org = run.org
    counts = run.result.of(group.entity)
    name, record_id = group.entity, group.record_id
    if answer.status == "ok":
        _accepted(org, group, answer.version, answer.record, answer.server_key)
        counts.uploaded += 1
        return None
    if answer.status == "missing" and group.deletes:
        # Gone already (perhaps by our lost answer).
        transactions.mark(org.db, group.ids, TransactionStatus.PROCESSED)
        _remember(org, name, record_id, None, deleted=True)
        counts.uploaded += 1
        return None
    if answer.status in ("conflict", "missing") and not forced:
        if write.server_key is None and answer.server_key:
            # A keyed create that collided with a record of its key: judged as that record.
            write = dataclasses.replace(write, server_key=answer.server_key)
        if server is not None and not group.deletes and _holds(server[0], write.values):
            # The server already has exactly our change: our earlier answer was lost.
            # A create's record may hold values the service set itself (defaults, a
            # lookup): no version is kept, so this run's download brings it whole.
            version = None if group.created_here else server[1]
            _accepted(org, group, version, server[0], write.server_key)
            counts.uploaded += 1
            return None
        return _upload_conflict(run, group, write, server)
    transactions.mark(org.db, group.ids, TransactionStatus.ERROR, answer.message or answer.status)
    counts.errors += 1
    run.reporter.log("error", f"{name} {record_id}: {answer.message}", name)
    return None


def _accepted(org: OrgDb, group: _Group, version: str | None,
              server_record: dict[str, Any] | None, server_key: str | None = None) -> None:
    """The server has the group's change: mark it processed and take the server's times.

    A keyed server's key for a record created here is kept with its version.
    """
    transactions.mark(org.db, group.ids, TransactionStatus.PROCESSED)
    _remember(org, group.entity, group.record_id, version, deleted=group.deletes,
              server_key=server_key)
    if server_record and not group.deletes:
        # The server stamped the record with its own times: take them, so both
        # sides hold the same values (the other values are ours already).
        records.set_timestamps(org, group.entity, group.record_id,
                               server_record.get("createdon"), server_record.get("modifiedon"))


def _holds(server_record: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(server_record.get(k) == v for k, v in values.items())


def _upload_conflict(run: Run, group: _Group, write: Write,
                     server: tuple[dict[str, Any], str] | None) -> Write | None:
    """A write refused because the server's record changed or went: resolve, then apply."""
    org = run.org
    name, record_id = group.entity, group.record_id
    client_record = records.get_record(org, name, record_id)
    kind = ("update" if not group.deletes else "delete") + "/" + (
        "update" if server is not None else "delete")
    side = resolve(run, Conflict(name, record_id, kind, group.items[-1].created, client_record,
                                 server[0] if server else None, group.ids))
    if side is Side.CLIENT:
        # Resend without a condition; a client delete of a server-deleted record is done.
        if group.deletes and server is None:
            transactions.mark(org.db, group.ids, TransactionStatus.PROCESSED)
            _remember(org, name, record_id, None, deleted=True)
            return None
        values = group.values() if group.deletes else {
            **(client_record or {}), **group.values()}
        values = {k: v for k, v in values.items()
                  if k not in ("createdon", "modifiedon", "versionnumber")}
        return Write(write.entity, record_id, write.operation, values, if_match=None,
                     server_key=write.server_key)
    # Server wins: bring the server's version (or its deletion) to the client now.
    if server is None:
        records.delete_records(org, name, [record_id], from_server=True)
        _remember(org, name, record_id, None, deleted=True)
    else:
        records.save_checked(org, records.check_records(records.codec(org, name), [server[0]],
                                                        project=True), from_server=True)
        _remember(org, name, record_id, server[1], server_key=write.server_key)
    return None


def _remember(org: OrgDb, entity: str, record_id: str, version: str | None,
              deleted: bool = False, server_key: str | None = None) -> None:
    """Note what the server now holds of a record: its version ("" if it gave none), or nothing."""
    if deleted:
        sync_state.forget_server_versions(org.db, entity, [record_id])
    else:
        sync_state.save_server_versions(org.db, entity, {record_id: version or ""},
                                        {record_id: server_key} if server_key else None)


# --- download ----------------------------------------------------------------

def download(run: Run, totals: dict[str, int] | None = None) -> None:
    """Bring each enabled entity's server changes since its checkpoint, page by page.

    Up to `streams` entities are read at once (the plan's, capped by what the
    backend allows); this thread alone writes, one page with its checkpoint per
    transaction, so a run killed anywhere resumes as from a sequential one.
    """
    settings = [s for s in run.plan.entities if s.enabled and s.entity in run.org.entities()]
    if not settings:
        return  # nothing to read: the backend is not asked what it allows
    decided = streams.decide(run.plan.streams, [
        run.backend.allowed_streams(),
        (len(settings), f"{len(settings)} {'entity' if len(settings) == 1 else 'entities'} "
                        "to download")])
    run.reporter.log("info", decided.log_line(), None)
    downloads = (_EntityDownload(run, s, (totals or {}).get(s.entity)) for s in settings)
    # Closed on any exit: the readers stop and release the backend's connections.
    with closing(interleaved(((d, d.pages()) for d in downloads), decided.used)) as pages:
        for entity_download, page in pages:
            if page is None:
                entity_download.finish()
            else:
                entity_download.write(page)


def download_entity(run: Run, setting: EntitySettings, total: int | None = None) -> None:
    """Download one entity's changes, committing each page with its checkpoint."""
    entity_download = _EntityDownload(run, setting, total)
    # Closed on any exit: the backend may be reading the next page in a thread.
    with closing(entity_download.pages()) as pages:
        for page in pages:
            entity_download.write(page)
    entity_download.finish()


@dataclass(frozen=True)
class _ReadPage:
    """A page as read, with what can be made of it without the client's database."""

    page: ChangesPage
    upserts: list[dict[str, Any]]  # the page's records inside the sync filter
    leaving: list[str]  # ids of the page's records outside it
    checked: records.CheckedRecords  # `upserts` checked against the client's entity


class _EntityDownload:
    """One entity's download in a run: where it starts, each page written, how it ends."""

    def __init__(self, run: Run, setting: EntitySettings, total: int | None) -> None:
        self.run, self.setting, self.total = run, setting, total
        self.name = setting.entity
        self.entity = run.org.entity(self.name)
        self.codec = records.codec(run.org, self.name)
        self.rule = filters.parse_filter(setting.filter).check(self.entity) \
            if setting.filter else None
        point = sync_state.checkpoint(run.org, self.name)
        self.link = point.link
        if (point.filter or None) != (setting.filter or None):
            # A new filter: read the entity again, so records now outside it leave.
            self.link = None
            run.reporter.log("info", "sync filter changed: reading the entity again", self.name)
        self.counts = run.result.of(self.name)
        self.done = 0
        self.started = time.monotonic()
        self.delta_link: str | None = None
        self.reconcile = False
        # The filter may go to the server (fewer records over the wire) only where the
        # run ends by reconciling against the same filtered listing: Sync Deletion on.
        self.sent = self.rule if setting.sync_deletion else None

    def pages(self) -> Generator[_ReadPage, None, None]:
        """The backend's pages of this entity's changes since its checkpoint, each `read`.

        Iterated by the thread reading them (under `interleaved`), so filtering and
        type checks run there, beside the writer committing the page before.
        """
        for page in self.run.backend.read_changes(self.entity, self.link,
                                                  page_size=self.run.plan.page_size,
                                                  filter=self.sent):
            yield self.read(page)

    def read(self, page: ChangesPage) -> _ReadPage:
        """Filter and check a page's records (no database: the reading thread may do it)."""
        pk = self.entity.primaryidattribute
        upserts, leaving = page.upserts, []
        if self.rule is not None:
            upserts = []
            for record in page.upserts:
                if filters.matches(self.rule, record):
                    upserts.append(record)
                else:
                    leaving.append(record[pk])
        return _ReadPage(page, upserts, leaving,
                         records.check_records(self.codec, upserts, project=True))

    def write(self, read: _ReadPage) -> None:
        """Write one page with its server versions and the entity's checkpoint, atomically."""
        run, org, name, setting = self.run, self.run.org, self.name, self.setting
        page = read.page
        self.delta_link = page.link
        self.reconcile = self.reconcile or page.reconcile
        if page.note:
            run.reporter.log("info", page.note, name)
        with immediate(org.db):
            mapped = _client_ids(org, self.entity, page, run.backend.is_keyed(self.entity))
            if mapped is not page:  # records under the client's GUIDs: checked again
                read = self.read(mapped)
            waiting = transactions.pending_records(org, name)
            checked, versions = _page_writes(run, self.entity, read, waiting)
            deleted = [i for i in read.page.deleted if i not in waiting] \
                if setting.sync_deletion else []
            records.save_checked(org, checked, from_server=True)
            gone = records.delete_records(org, name, deleted + read.leaving, from_server=True)
            sync_state.save_server_versions(org.db, name, versions, read.page.keys)
            sync_state.forget_server_versions(org.db, name, deleted + read.leaving)
            sync_state.save_checkpoint(org.db, sync_state.Checkpoint(
                name, page.link, page.complete, setting.filter))
        self.counts.downloaded += len(checked)
        self.counts.deleted += gone
        self.done += len(page.upserts) + len(page.deleted)
        run.reporter.progress("download", name, self.done, self.total)

    def finish(self) -> None:
        """After the last page: compare ids where deletions are unknown, and log the counts."""
        counts = self.counts
        if (self.delta_link is None or self.reconcile) and self.setting.sync_deletion:
            # The read ended without a delta link, or the backend says its deletions are
            # unknown (no change tracking, a read started over): compare ids.
            counts.deleted += reconcile_deletions(self.run.org, self.run.backend, self.entity,
                                                  self.sent)
        self.run.reporter.log("info", f"downloaded {counts.downloaded}, deleted "
                              f"{counts.deleted} in {time.monotonic() - self.started:.2f} s",
                              self.name)


def reconcile_deletions(org: OrgDb, backend: Backend, entity: Entity,
                        rule: filters.Filter | None = None) -> int:
    """Delete client records the server had and no longer lists (under `rule`); how many.

    For servers that cannot report deletions. The server's ids are streamed
    into `sync_state.listed_ids` (flat memory for any size); a record counts
    as the server's when the client holds a server version of it, so records
    created here and not yet uploaded never leave.
    """
    name = entity.logicalname
    with sync_state.listed_ids(org) as listing:
        for ids in backend.read_ids(entity, rule):
            keyed = backend.is_keyed(entity)
            if keyed or entity.isintersect:  # server keys (N:N rows' too), as the client's GUIDs
                ids = list(sync_state.ids_for_keys(org.db, name, ids, keyed).values())
            listing.add(ids)
        with immediate(org.db):
            waiting = transactions.pending_records(org, name)
            gone = [i for i in listing.unlisted(name) if i not in waiting]
            deleted = records.delete_records(org, name, gone, from_server=True)
            sync_state.forget_server_versions(org.db, name, gone)
    return deleted


def _client_ids(org: OrgDb, entity: Entity, page: ChangesPage, derive: bool) -> ChangesPage:
    """A keyed server's page under the client's GUIDs: a stored mapping wins over the derived one.

    The backend gives each record the GUID derived from its key; a record created
    here kept its own random GUID, learnt with its key from the create's answer.
    (Without `derive`: the keys are GUIDs, ids of their own unless mapped: N:N rows.)
    """
    if not page.keys and not page.references:
        return page
    ids = sync_state.ids_for_keys(org.db, entity.logicalname, page.keys.values(), derive)
    moved = {i: ids[k] for i, k in page.keys.items() if ids[k] != i}
    refs = _client_references(org, page.references)
    if not moved and not refs:
        return page
    pk = entity.primaryidattribute
    lookups = [a.logicalname for a in entity.attributes if a.type == "lookup"]

    def client_record(record: dict[str, Any]) -> dict[str, Any]:
        swapped = {n: refs[record[n]] for n in lookups if record.get(n) in refs}
        if record[pk] in moved:
            swapped[pk] = moved[record[pk]]
        return {**record, **swapped} if swapped else record

    return dataclasses.replace(
        page,
        upserts=[client_record(r) for r in page.upserts],
        versions={moved.get(i, i): v for i, v in page.versions.items()},
        deleted=[moved.get(i, i) for i in page.deleted],
        keys={moved.get(i, i): k for i, k in page.keys.items()})


def _client_references(org: OrgDb, references: dict[str, tuple[str, str]],
                       made: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """Derived GUIDs of lookups' targets -> the client's GUIDs, where they differ.

    A target created on the client keeps its random GUID, stored with its key
    (`made`: (target, key) -> client GUID, for keys learnt but not stored yet).
    """
    made = made or {}
    refs: dict[str, str] = {}
    for target in {t for t, _ in references.values()}:
        wanted = {g: k for g, (t, k) in references.items() if t == target}
        stored = sync_state.ids_for_keys(org.db, target, wanted.values())
        stored.update({k: made[(target, k)] for k in wanted.values() if (target, k) in made})
        refs.update({g: stored[k] for g, k in wanted.items() if stored[k] != g})
    return refs


def _page_writes(run: Run, entity: Entity, read: _ReadPage,
                 waiting: set[str]) -> tuple[records.CheckedRecords, dict[str, str]]:
    """A page's records to write, and the server versions to keep.

    Whole-page steps, so an initial download costs one pass over its records.
    """
    pk, page, upserts = entity.primaryidattribute, read.page, read.upserts
    known = sync_state.server_versions(run.org, entity.logicalname, [r[pk] for r in upserts])
    # Our own upload coming back, or a page read twice: the server has the version we hold.
    skip = {i for i, v in known.items() if v and page.versions.get(i) == v}
    for record in [r for r in upserts if r[pk] in waiting and r[pk] not in skip]:
        if _download_conflict(run, entity, record) is Side.CLIENT:
            # The client's change wins: not written here; its version is kept so the
            # upload may now overwrite the server's record.
            skip.add(record[pk])
    checked = read.checked.without({n for n, r in enumerate(upserts) if r[pk] in skip}) \
        if skip else read.checked
    if upserts is page.upserts and len(page.versions) == len(upserts):
        versions = page.versions  # the common case: every record came with its version
    else:  # records leaving the filter are forgotten; one without a version is known by ""
        versions = {r[pk]: page.versions.get(r[pk], "") for r in upserts}
    return checked, versions


def _download_conflict(run: Run, entity: Entity, server_record: dict[str, Any]) -> Side:
    """A downloaded record the client also changed: which version stays?"""
    name, record_id = entity.logicalname, server_record[entity.primaryidattribute]
    client_record = records.get_record(run.org, name, record_id)
    return resolve(run, Conflict(
        name, record_id, "update/update", str((client_record or {}).get("modifiedon") or ""),
        client_record, server_record, transactions.open_ids(run.org, name, record_id),
        while_downloading=True))


# --- whole runs --------------------------------------------------------------

def sync(run: Run) -> RunResult:
    """One sync run: upload, then download every enabled entity; returns its counts."""
    run.reporter.progress("upload", None, 0, None)
    upload(run)
    download(run)
    return run.result


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

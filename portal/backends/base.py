"""The one small interface every backend implements; the sync engine sees only this.

A backend reaches one server org: it checks credentials, reads metadata,
reads changes since a link (paged, with upserts and deletions), reads all
ids (for servers without deletion tracking), reads one record, and applies a
batch of writes with a result per write. Records travel as our JSON form
(attribute logical name -> value; lookups as GUIDs); each backend maps its
protocol's form to that. A backend is made with the server's URL, user name,
password and `allow_private`: without it, a URL on a private host, or a
redirect to one, is refused (`server_urls`).
"""

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from portal.orgs.metadata import Entity

if TYPE_CHECKING:
    from portal.sync.filters import Filter


@dataclass
class ChangesPage:
    """One page of a server's changes to an entity and where to continue."""

    upserts: list[dict[str, Any]]
    versions: dict[str, str]  # record id -> the server's version (ETag) of it
    deleted: list[str]
    link: str | None  # the next page, or once `complete` the delta link for the next run
    complete: bool
    # The server does not report this read's deletions (no change tracking, or
    # a read started over): at its end the engine compares ids (read_ids).
    reconcile: bool = False
    note: str | None = None  # something the run's log should say (e.g. a read started over)
    # Where the server's keys are not GUIDs (`Backend.keyed`): record id (upserts and
    # deletions, each `sync_state.server_key_id` of its key) -> the server's key.
    keys: dict[str, str] = field(default_factory=dict)
    # A keyed server's lookup values travel as the GUIDs derived from their targets'
    # keys: derived GUID -> (target entity, server key), so the engine can swap in the
    # client's own GUID of a target created on the client.
    references: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Write:
    """One write to the server: upsert (create or update) or delete of one record."""

    entity: Entity
    record_id: str
    operation: str  # "upsert" | "delete"
    values: dict[str, Any] = field(default_factory=dict)
    if_match: str | None = None  # the server version this write expects, if any
    create_only: bool = False  # If-None-Match: *, so a repeated create is recognised
    server_key: str | None = None  # the record's key on a keyed server, once known
    # A keyed server's keys of the records the values' lookups point to (client GUID ->
    # server key), where known.
    references: dict[str, str] = field(default_factory=dict)


@dataclass
class WriteResult:
    """What the server said to one write."""

    status: str  # "ok" | "conflict" (version changed) | "missing" (no such record) | "error"
    version: str | None = None
    message: str | None = None
    record: dict[str, Any] | None = None  # the record as the server stored it, if it said
    server_key: str | None = None  # the key a keyed server gave the record (creates)


class Backend(ABC):
    """A server org reached through one protocol."""

    kind: ClassVar[str]
    supports_delta: bool = False  # change and deletion tracking (per backend object)
    supports_batch: ClassVar[bool] = False
    supports_etags: ClassVar[bool] = False
    # The server knows records by keys that are not GUIDs (integers, strings,
    # composite keys, Salesforce ids): pages carry `keys`, `read_ids` yields
    # server keys and `get_record` takes one. See docs/architecture.md.
    keyed: ClassVar[bool] = False
    # How many entities a run may read at once through this backend: its
    # read_changes, read_ids and count are then called from that many threads
    # (never apply_writes). 1, the default, is one thread, as before.
    max_streams: ClassVar[int] = 1

    @classmethod
    def most_streams(cls) -> tuple[int, str]:
        """The most entities this backend type reads at once, and why (before a server says)."""
        return cls.max_streams, f"the {cls.kind} backend allows {cls.max_streams}"

    def allowed_streams(self) -> tuple[int, str]:
        """The entities this server may be read at once now, and why (the run's limit)."""
        return self.most_streams()

    def is_keyed(self, entity: Entity) -> bool:
        """Whether this entity's records have server keys (a backend may key only some)."""
        return self.keyed

    @abstractmethod
    def check_credentials(self) -> str:
        """Verify the user name and password; returns who the server says we are."""

    @abstractmethod
    def read_metadata(self) -> list[Entity]:
        """The server's entities and attributes."""

    @abstractmethod
    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: "Filter | None" = None) -> Generator[ChangesPage, None, None]:
        """Pages of changes since `link` (None: everything), the last one `complete`.

        `filter` (checked against the entity) is the connection's sync filter: a
        backend may ask the server for matching records only, where its protocol
        can say so; the engine filters every page all the same. A caller that
        stops before the last page closes the generator.
        """

    def count(self, entity: Entity) -> int | None:
        """How many records the entity has on the server, or None if the server won't say."""
        return None

    @abstractmethod
    def read_ids(self, entity: Entity, filter: "Filter | None" = None) -> Iterator[list[str]]:
        """Pages of the ids (server keys, if `keyed`) of every record (deletion reconciliation).

        With `filter`, a backend may list only the records that match it: the
        client keeps no other, so the ones it holds and the server no longer
        lists under the filter leave it either way.
        """

    @abstractmethod
    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        """One record and its version by id (server key, if `keyed`), or None when it has none."""

    def get_record_references(self, entity: Entity, record_id: str
                              ) -> tuple[dict[str, Any], str, dict[str, tuple[str, str]]] | None:
        """`get_record`, with its lookups to keyed records as a page's `references`.

        Backends whose lookups hold derived GUIDs override it (the engine maps them
        to the client's GUIDs as for a downloaded page); others note none.
        """
        found = self.get_record(entity, record_id)
        return None if found is None else (*found, {})

    @abstractmethod
    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        """Apply writes in order; one result per write, in the same order."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

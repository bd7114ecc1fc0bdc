"""The server's shared page cache: a page of an entity set built once, served to every
client that asks for exactly the same page of the same data.

Several client orgs syncing from one server org read the same pages (the same
set, query, Prefer and skiptoken: the tokens are deterministic), and without
this each of them makes the server build each page again. An entry is keyed by
everything the answer depends on:

* the portal (its orgs folder), the org and its file's identity (device, inode, change
  time: a re-created org never meets the old one's entries);
* the caller (user kind, id and admin flag: two users never share an entry, whatever
  rights they may be given later);
* the request: service root (scheme, host, dialect), path, query string, and the
  headers that change the answer (Prefer: maxpagesize, track-changes, annotations);
* the org's data version: every value of its `_org` table, where the store keeps the
  counters its writes bump (`version` by every record write and delete, sync writes
  included, `metadata_version` by every metadata change, `feed_start:*` when history
  is given up). Any write makes the old entries unreachable.

A page is kept only when the data version read after building it is the one read
before, so an entry holds exactly the state its key names. Only GETs of an entity
set answered 200 are kept; FetchXML and $filter with Dataverse query functions (Today,
LastXDays... depend on the clock) are never kept. Each worker process has its own
cache, bounded in bytes (least recently used out first) and in age (ENTRY_TTL_S).
"""

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flask import current_app

from portal.orgs.store import org_file, orgs_path
from portal.web.odata.messages import ApiRequest, ApiResponse

# An entity set without a key, a function or a segment after it: "accounts".
SET_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The headers a collection's answer may depend on; every other one is ignored.
ANSWER_HEADERS = ("Prefer", "Accept", "OData-MaxVersion", "OData-Version")
# Query functions: some are relative to the clock (Today, LastXDays, OlderThanXHours...).
CLOCK_MARK = "microsoft.dynamics.crm."
# Entries are unreachable once the org changes; the age limit only bounds how long an
# org file restored in place under a running portal could meet its old entries.
ENTRY_TTL_S = 60.0


@dataclass(frozen=True)
class Page:
    """A kept answer."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expires: float


class PageCache:
    """A byte-bounded, age-bounded LRU of answers, safe to share between threads."""

    def __init__(self) -> None:
        self._pages: OrderedDict[Hashable, Page] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> ApiResponse | None:
        """The kept answer of `key` (a copy), or None."""
        with self._lock:
            page = self._pages.get(key)
            if page is None or page.expires <= time.monotonic():
                if page is not None:
                    self._drop(key)
                self.misses += 1
                return None
            self._pages.move_to_end(key)
            self.hits += 1
        return ApiResponse(page.status, page.body, dict(page.headers))

    def put(self, key: Hashable, answer: ApiResponse, max_bytes: int) -> None:
        """Keep an answer, dropping the least recently used beyond `max_bytes`."""
        if len(answer.body) > max_bytes:
            return
        page = Page(answer.status, bytes(answer.body), tuple(answer.headers.items()),
                    time.monotonic() + ENTRY_TTL_S)
        with self._lock:
            if key in self._pages:
                self._drop(key)
            self._pages[key] = page
            self._bytes += len(page.body)
            while self._bytes > max_bytes:
                self._drop(next(iter(self._pages)))

    def _drop(self, key: Hashable) -> None:
        self._bytes -= len(self._pages.pop(key).body)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._pages.clear()
            self._bytes = 0


PAGES = PageCache()  # this worker process's


def data_version(req: ApiRequest) -> tuple[tuple[str, int], ...]:
    """Every counter of the org's `_org` table: it changes with every write to the org."""
    return tuple(req.org.db.execute("SELECT key, value FROM _org ORDER BY key").fetchall())


def cacheable(req: ApiRequest) -> bool:
    """Whether a request's answer depends on nothing but the key (and may be kept)."""
    if req.method != "GET" or not SET_PATH_RE.match(req.path) or "fetchXml" in req.args:
        return False
    # An entity set's name, not EntityDefinitions or WhoAmI (which look the same).
    if all(e.entitysetname != req.path for e in req.org.entities().values()):
        return False
    return all(CLOCK_MARK not in value.lower() for value in req.args.getlist("$filter"))


def page_key(req: ApiRequest, version: Hashable) -> Hashable:
    """Everything the answer to `req` depends on."""
    orgs_dir = orgs_path(current_app)
    stat = os.stat(org_file(orgs_dir, req.org.name))
    # The file's inode and change time: an org deleted and made again (same name, maybe
    # the same inode number and counters) is another file.
    return (str(orgs_dir), req.org.name, stat.st_dev, stat.st_ino, stat.st_ctime_ns,
            req.user.get("kind", "user"), req.user.get("id"), bool(req.user.get("is_admin")),
            req.service_root, req.path, tuple(req.args.items(multi=True)),
            tuple(tuple(req.headers.getlist(name)) for name in ANSWER_HEADERS), version)


def answer(req: ApiRequest, build: Callable[[ApiRequest], ApiResponse]) -> ApiResponse:
    """The answer to `req`: a kept page when the same page of the same data was built
    already, else `build(req)` (kept for the next caller when it may be)."""
    config = current_app.config
    if not config["PAGE_CACHE"] or not cacheable(req):
        return build(req)
    # Read before building: the page then holds this state or a later one, and is kept
    # only if nothing was written in between (the same version after).
    version = data_version(req)
    key = page_key(req, version)
    kept = PAGES.get(key)
    if kept is not None:
        return kept
    built = build(req)
    if built.status == 200 and data_version(req) == version:
        PAGES.put(key, built, config["PAGE_CACHE_MB"] * 1024 * 1024)
    return built

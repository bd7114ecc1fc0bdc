"""The `odata` backend: any OData v4 service (SAP CAP, odatapy, Olingo, ...), from its CSDL.

It is the OData client of `odata.py` (transport, retries, `read_record`,
`write_headers`) with what a service without Dataverse's conventions needs:

* metadata from `$metadata` (CSDL XML, `csdl_metadata`), mapped to our
  entities by `odata_mapping` (names, keys that are not GUIDs, timestamps,
  lookups, enums, Capabilities);
* changes: an entity set with change tracking (Capabilities.ChangeTracking,
  or a delta link the service gives when asked) is read with `Prefer:
  odata.track-changes` and its delta link (absolute or relative; tombstones
  `$deletedEntity` / `@removed` whose id is a URL); any other is read in
  windows in a stable order: (modified timestamp, key) after the watermark,
  or by key for a full read, each window starting after the last record of
  the one before (no `$skip`, so a record changed during the read does not
  shift the rest), and deletions are found by the engine's id reconciliation;
  server paging (next links, relative or absolute) is followed within a window;
* writes: POST creates (the client's GUID as a GUID key; a value key from
  the record; a server-picked key with a look-up by the client-id property
  first, so a create whose answer was lost is found, not repeated), PATCH
  and DELETE with `If-Match` (the ETag known, else `*`: CAP answers 428
  without one), in JSON `$batch` requests of independent writes where the
  service takes them, else multipart `$batch` with a change set per write,
  else one request at a time;
* auth: Basic, a bearer token, or OAuth 2.0 client credentials against a
  token URL (`auth.TokenUrlCredentials`).
"""

import dataclasses
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from portal import multipart
from portal.backends import odata_mapping
from portal.backends.auth import BearerAuth, StaticToken, TokenSource, TokenUrlCredentials
from portal.backends.base import ChangesPage, Write, WriteResult
from portal.backends.csdl_json import read_csdl_json
from portal.backends.csdl_metadata import CsdlService, check_size, read_csdl
from portal.backends.odata import (
    RETRIES,
    RETRY_METHODS,
    ODataBackend,
    batch_answers,
    error_message,
    server_retry,
    write_headers,
)
from portal.backends.odata_mapping import EntityMap, literal
from portal.backends.prefetch import prefetched
from portal.errors import BackendError, InvalidInput
from portal.orgs.metadata import Entity

if TYPE_CHECKING:
    from portal.sync.filters import Filter  # the engine filters every page too

AUTH_KINDS = ("basic", "bearer", "client_credentials")
OPTIONS = ("auth", "token_url", "scope", "timestamp_property", "client_id_property",
           "page_size")
MAX_PAGE_SIZE = 5000
# A $batch refused as a whole by these: the service does not take that form (nothing ran).
BATCH_REFUSED = (400, 404, 405, 406, 415, 501)
# One write as a request: method, path under the root, headers, JSON body (None: none).
_Plan = tuple[str, str, dict[str, str], dict[str, Any] | None]
# A write's answer: status, headers (lower-case names), decoded body.
_Answer = tuple[int, dict[str, str], Any]
BATCH_LIMIT = 100  # writes per $batch: CAP and odatapy take more, small answers keep it safe
CHUNK_LOOKUPS = 40  # client ids per look-up request (URL length)
# Our own read state, kept in the checkpoint's link (the engine stores it as is).
STATE = "odata-read:"
# A refused delta link: the read starts over, with reconciliation.
REFUSED_DELTA = (400, 404, 410, 501)


def check_options(options: dict[str, str]) -> dict[str, str]:
    """A connection's OData options checked: auth, token_url, scope, timestamp, page size."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown OData option {unknown[0]!r} (one of {', '.join(OPTIONS)})",
                           field="auth")
    auth = options.get("auth") or "basic"
    if auth not in AUTH_KINDS:
        raise InvalidInput(f"unknown sign-in {auth!r} (one of {', '.join(AUTH_KINDS)})",
                           field="auth")
    if auth == "client_credentials":
        parts = urlsplit(options.get("token_url") or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("client credentials need the token URL (https://...)",
                               field="token_url")
    for option in ("timestamp_property", "client_id_property"):
        odata_mapping.names_per_set(options.get(option), option)  # InvalidInput
    size = options.get("page_size")
    if size is not None and not (size.isdigit() and 1 <= int(size) <= MAX_PAGE_SIZE):
        raise InvalidInput(f"the page size must be a number from 1 to {MAX_PAGE_SIZE}",
                               field="page_size")
    return {**options, "auth": auth}


class ODataV4Backend(ODataBackend):
    """An OData v4 service described by its CSDL `$metadata`."""

    kind = "odata"
    supports_batch = True
    supports_etags = True
    keyed = True  # per entity set: `is_keyed`

    def __init__(self, url: str, username: str, password: str, *, auth: str | None = None,
                 token_url: str | None = None, scope: str | None = None,
                 timestamp_property: str | None = None,
                 client_id_property: str | None = None, page_size: str | int | None = None,
                 allow_private: bool = False, session: requests.Session | None = None,
                 retries: int = RETRIES) -> None:
        """`username`/`password`: Basic's, or (client_credentials) the client id and secret;
        with `bearer` the password is the token."""
        super().__init__(url, username, password, allow_private=allow_private,
                         session=session, retries=retries)
        # A POST is never resent by the transport: a create of a key the service picks
        # would be made twice. `apply_writes` retries a lost batch itself, after
        # looking up the creates it may have made.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=server_retry(
            retries).new(allowed_methods=RETRY_METHODS - {"POST"}))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.retries = retries
        self.username = username
        self.auth_kind = check_options({"auth": auth or "basic",
                                        **({"token_url": token_url} if token_url else {})})["auth"]
        self.bearer: BearerAuth | None = None
        if self.auth_kind != "basic":
            self.session.auth = None
            source: TokenSource = StaticToken(password) if self.auth_kind == "bearer" else \
                TokenUrlCredentials(self.session, str(token_url), username, password, scope)
            self.bearer = BearerAuth(source)
        self.timestamp_property = timestamp_property or None
        self.client_id_property = client_id_property or None
        self.page_size = int(page_size) if page_size else None
        self._maps: dict[str, EntityMap] | None = None
        # How writes are sent: JSON $batch until refused, then multipart, then one by one.
        self._batch_kind: str | None = "json"

    # --- transport ---------------------------------------------------------

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request, with the bearer token where the connection signs in with one."""
        if self.bearer is not None:
            kwargs.setdefault("auth", self.bearer)
        return super().request(method, url, **kwargs)

    # --- metadata ----------------------------------------------------------

    def check_credentials(self) -> str:
        """A readable OData v4 `$metadata` (valid credentials), then the service document."""
        self.maps()  # first: an OData v2 service is named as such, not as a bad document
        document = self.get_json("")
        if not isinstance(document, dict) or not isinstance(document.get("value"), list):
            raise BackendError(f"{self.root} is not an OData v4 service document")
        return self.username or self.auth_kind

    def read_metadata(self) -> list[Entity]:
        """Every entity set of the service as our entity."""
        return [m.entity for m in self.maps().values()]

    def maps(self) -> dict[str, EntityMap]:
        """The entity sets' maps, read from `$metadata` once per backend (per run)."""
        if self._maps is None:
            service = self._read_service()
            self._maps = odata_mapping.entity_maps(
                service, timestamp_property=self.timestamp_property,
                client_id_property=self.client_id_property)
        return self._maps

    def _read_service(self) -> CsdlService:
        """`$metadata` read: CSDL XML, or CSDL JSON from a service that serves only JSON."""
        content, content_type = self._metadata_document()
        return read_csdl_json(content) if content_type.startswith("application/json") \
            else read_csdl(content)

    def _metadata_document(self) -> tuple[bytes, str]:
        """`$metadata` and its content type, read no further than the size limit."""
        # XML first: every OData v4 service has it, and a v2/v3 one answers it too
        # (to be refused by name); JSON CSDL is the form some services add.
        response = self.request("GET", "$metadata", headers={
            "Accept": "application/xml, application/json;q=0.9"}, stream=True)
        try:
            if response.status_code != 200:
                raise BackendError(f"{self.root}$metadata answered {response.status_code}: "
                                   f"{error_message(response)} — is this an OData v4 service?")
            content = bytearray()
            for chunk in response.iter_content(65536):
                content += chunk
                check_size(len(content))
            return bytes(content), response.headers.get("Content-Type", "").lower()
        finally:
            response.close()

    def entity_map(self, entity: Entity) -> EntityMap:
        """The map of one of our entities; BackendError if the service changed it beneath us."""
        found = self.maps().get(entity.logicalname)
        if found is None:
            raise BackendError(f"the service has no entity set {entity.entitysetname} any more")
        ours = {a.logicalname: a.type for a in entity.attributes}
        theirs = {a.logicalname: a.type for a in found.entity.attributes}
        keys = [found.entity.primaryidattribute] + [found.to_logical.get(k.name, "")
                                                    for k in found.keys]
        changed = [k for k in keys if k and ours.get(k) != theirs.get(k)]
        if entity.primaryidattribute != found.entity.primaryidattribute or changed:
            raise BackendError(
                f"the key of {found.entity_set} changed on the service ("
                f"{', '.join(f'{k}: {ours.get(k)} -> {theirs.get(k)}' for k in changed) or 'id'}"
                "): its records cannot be matched with the ones synced; reconnect to sync it")
        # Connected when such foreign keys were plain values: they stay so.
        plain = {p for p, t in found.keyed_lookups.items()
                 if ours.get(found.to_logical[p], "lookup") != "lookup"}
        if plain:
            found = dataclasses.replace(found, keyed_lookups={
                p: t for p, t in found.keyed_lookups.items() if p not in plain})
        return found.with_plain({n for n in found.composite_lookups if ours.get(n) != "lookup"})

    def is_keyed(self, entity: Entity) -> bool:
        """Entity sets keyed by one Edm.Guid keep it as the record id; others have server keys."""
        found = (self._maps or {}).get(entity.logicalname)
        if found is None:
            found = self.maps().get(entity.logicalname)
        return found is None or found.keyed

    def record_from_server(self, entity: Entity, item: dict[str, Any]) -> dict[str, Any]:
        """The service's JSON record in our form."""
        return self.entity_map(entity).from_server(item)

    # --- changes -----------------------------------------------------------

    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: "Filter | None" = None) -> Generator[ChangesPage, None, None]:
        """Delta pages where the set tracks changes, else windows after the watermark."""
        emap = self.entity_map(entity)
        size = min(self.page_size or page_size, MAX_PAGE_SIZE)
        state = _state(link)
        tracked = emap.capabilities.change_tracking
        if state is None and link:
            pages = self._delta(emap, link, size)
        elif state is not None and state.get("mode") == "tracked":
            pages = self._delta(emap, state["next"], size, state)
        elif state is None and (tracked or (tracked is None and not emap.modified)):
            pages = self._delta(emap, None, size)
        else:
            pages = self._windows(emap, state or {}, size)
        return prefetched(pages)

    def _delta(self, emap: EntityMap, url: str | None, size: int,
               state: dict[str, Any] | None = None) -> Iterator[ChangesPage]:
        """Follow next links, then keep the delta link (a full read if the service gives none)."""
        headers = {"Prefer": f"odata.track-changes,odata.maxpagesize={size}"}
        first = state is None and url is None
        full = first or bool((state or {}).get("full"))
        payload: dict[str, Any] | None = None
        if url is None:
            url = emap.entity_set
        elif state is None:  # a stored delta link
            response = self.request("GET", url, headers=headers)
            if response.status_code in REFUSED_DELTA:
                yield ChangesPage([], {}, [], None, False, reconcile=True, note=(
                    f"the service refused the delta link ({response.status_code}: "
                    f"{error_message(response)}): reading {emap.entity_set} again"))
                yield from self._delta(emap, None, size)
                return
            payload = self._json(response, url)
        while True:
            if payload is None:
                response = self.request("GET", url, headers=headers)
                payload = self._json(response, url)
            page = self._page(emap, payload)
            next_link = payload.get("@odata.nextLink")
            if next_link:
                page.link = STATE + orjson.dumps({"mode": "tracked", "full": full,
                                                  "next": urljoin(self._base(url),
                                                                  next_link)}).decode()
                page.reconcile = full
                yield page
                url, payload = urljoin(self._base(url), next_link), None
                continue
            delta = payload.get("@odata.deltaLink")
            page.complete = True
            page.reconcile = full
            if delta:
                page.link = urljoin(self._base(url), delta)
            else:
                # The service read everything and offers no delta link: the next run
                # reads everything again (by its watermark where it has one).
                page.link = _link({"mode": "watermark", "since": None}) if emap.modified \
                    else None
                page.reconcile = True
            yield page
            return

    def _json(self, response: requests.Response, url: str) -> dict[str, Any]:
        """A collection answer's JSON; BackendError with the service's message otherwise."""
        if response.status_code != 200:
            raise BackendError(f"GET {url} answered {response.status_code}: "
                               f"{error_message(response)}")
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BackendError(f"GET {url} answered with something that is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("value", []), list):
            raise BackendError(f"GET {url} answered with no collection of records")
        return payload

    def _base(self, url: str) -> str:
        """What a relative link is relative to: the service root (as CAP's are)."""
        return self.root

    def _page(self, emap: EntityMap, payload: dict[str, Any]) -> ChangesPage:
        """One answer's records, versions, tombstones and keys."""
        upserts: list[dict[str, Any]] = []
        versions: dict[str, str] = {}
        deleted: list[str] = []
        keys: dict[str, str] = {}
        references: dict[str, tuple[str, str]] = {}
        for item in payload.get("value", []):
            if "@removed" in item or "$deletedEntity" in str(item.get("@odata.context", "")):
                key = self._tombstone_key(emap, item)
                if key is None:
                    continue
                record_id = odata_mapping.server_key_id(emap.name, key) if emap.keyed else key
                deleted.append(record_id)
                if emap.keyed:
                    keys[record_id] = key
                continue
            record = emap.from_server(item, references)
            record_id = record[emap.entity.primaryidattribute]
            upserts.append(record)
            versions[record_id] = str(item.get("@odata.etag") or "")
            if emap.keyed:
                keys[record_id] = emap.key_of(item)
        return ChangesPage(upserts, versions, deleted, None, False, keys=keys,
                           references=references)

    def _tombstone_key(self, emap: EntityMap, item: dict[str, Any]) -> str | None:
        """A tombstone's key: from its key properties, or its `id` (a URL or a bare key)."""
        if all(k.name in item for k in emap.keys):
            key = emap.key_of(item)
            return key.lower() if not emap.keyed else key
        ident = str(item.get("id") or item.get("@id") or item.get("@odata.id") or "")
        if "(" in ident:
            return emap.key_from_url(ident)
        return (ident.lower() if not emap.keyed else ident) or None

    def _windows(self, emap: EntityMap, state: dict[str, Any],
                 size: int) -> Iterator[ChangesPage]:
        """Windows of records in (timestamp, key) order after the watermark, or by key."""
        since = state.get("since")
        incremental = since is not None and emap.modified is not None
        last = state.get("after")  # [timestamp, key values] of the last record read
        newest = state.get("newest", since)
        url = state.get("next")
        window = int(state.get("window", 0))  # records of this window read so far
        while True:
            if url is None:
                url = self._window_url(emap, incremental, since, last, size)
                window = 0
            response = self.request("GET", url, headers={
                "Prefer": f"odata.maxpagesize={size}"})
            payload = self._json(response, url)
            items = payload.get("value", [])
            window += len(items)
            page = self._page(emap, payload)
            page.reconcile = True
            if items:
                tail = items[-1]
                last = [tail.get(emap.modified) if incremental else None,
                        {k.name: tail.get(k.name) for k in emap.keys}]
                if emap.modified:
                    stamps = [i.get(emap.modified) for i in items if i.get(emap.modified)]
                    newest = max([s for s in [newest, *stamps] if s], key=_instant,
                                 default=newest)
            next_link = payload.get("@odata.nextLink")
            url = urljoin(self._base(url), next_link) if next_link else None
            if next_link or window >= size:
                page.link = _link({"mode": "watermark", "since": since, "after": last,
                                   "newest": newest, "next": url, "window": window})
                yield page
                continue
            page.complete = True
            page.link = _link({"mode": "watermark", "since": newest}) if emap.modified \
                else None
            yield page
            return

    def _window_url(self, emap: EntityMap, incremental: bool, since: str | None,
                    last: list[Any] | None, size: int) -> str:
        """A window's query: $filter after the watermark / last record, $orderby, $top."""
        keys = emap.keys
        order = ([emap.modified] if incremental and emap.modified else []) + [k.name for k in keys]
        conditions = []
        if incremental and emap.modified:
            conditions.append(f"{emap.modified} ge {since}")
        if last is not None:
            after = _after(emap, last[0] if incremental else None, last[1])
            if after:
                conditions.append(after)
        query = [f"$orderby={','.join(order)}", f"$top={size}"]
        if conditions:
            query.append("$filter=" + " and ".join(f"({c})" for c in conditions))
        return f"{emap.entity_set}?" + "&".join(_encode(q) for q in query)

    def count(self, entity: Entity) -> int | None:
        """`Set/$count`, where the service answers it."""
        response = self.request("GET", f"{self.entity_map(entity).entity_set}/$count",
                                headers={"Accept": "text/plain"})
        text = response.text.strip() if response.status_code == 200 else ""
        return int(text) if text.isdigit() else None

    def read_ids(self, entity: Entity, filter: "Filter | None" = None) -> Iterator[list[str]]:
        """Every record's id (GUID keys) or server key, in windows by key."""
        emap = self.entity_map(entity)
        select = ",".join(k.name for k in emap.keys)
        last: dict[str, Any] | None = None
        size = MAX_PAGE_SIZE
        while True:
            query = [f"$select={select}", f"$orderby={select}", f"$top={size}"]
            if last is not None:
                query.append("$filter=" + _after(emap, None, last))
            url: str | None = f"{emap.entity_set}?" + "&".join(_encode(q) for q in query)
            count = 0
            while url:
                payload = self._json(self.request("GET", url, headers={
                    "Prefer": f"odata.maxpagesize={size}"}), url)
                items = payload.get("value", [])
                count += len(items)
                if items:
                    last = {k.name: items[-1].get(k.name) for k in emap.keys}
                    yield [emap.key_of(i).lower() if not emap.keyed else emap.key_of(i)
                           for i in items]
                next_link = payload.get("@odata.nextLink")
                url = urljoin(self.root, next_link) if next_link else None
            if count < size:
                return

    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        """One record by its GUID (guid keys) or server key, with its ETag; None if gone."""
        emap = self.entity_map(entity)
        return self.read_record(entity, record_id, emap.path(record_id))

    def get_record_references(self, entity: Entity, record_id: str
                              ) -> tuple[dict[str, Any], str, dict[str, tuple[str, str]]] | None:
        """One record with its ETag and its lookups to keyed sets (derived GUID -> target, key)."""
        emap = self.entity_map(entity)
        item = self.read_item(entity, record_id, emap.path(record_id))
        if item is None:
            return None
        references: dict[str, tuple[str, str]] = {}
        record = emap.from_server(item, references)
        return record, str(item.get("@odata.etag") or ""), references

    # --- writes ------------------------------------------------------------

    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        """Writes in chunks; a chunk whose answer was lost is sent again (creates looked up)."""
        results: list[WriteResult] = []
        for start in range(0, len(writes), BATCH_LIMIT):
            chunk = writes[start:start + BATCH_LIMIT]
            for attempt in range(self.retries + 1):
                try:
                    results.extend(self._apply_chunk(list(chunk)))
                    break
                except BackendError as exc:
                    lost = isinstance(exc.__context__, (requests.ConnectionError,
                                                        requests.Timeout))
                    if not lost or attempt == self.retries:
                        raise
        return results

    def _apply_chunk(self, writes: list[Write]) -> list[WriteResult]:
        """The chunk's writes; those whose lookups name a keyed create of it go after it.

        Requests of one $batch are independent (any order), and a key the service
        picks is known only from the create's answer.
        """
        creates = {w.record_id for w in writes if w.create_only and w.server_key is None
                   and self.entity_map(w.entity).keyed}
        later = [n for n, w in enumerate(writes)
                 if any(v in creates for k, v in w.values.items() if k in self._keyed(w))]
        if not later:
            return self._apply_writes(writes, {})
        first = [n for n in range(len(writes)) if n not in later]
        results = dict(zip(first, self._apply_writes([writes[n] for n in first], {}),
                           strict=True))
        # A create refused as a repeat (its first answer lost) names the key it found.
        created = {writes[n].record_id: r.server_key for n, r in results.items()
                   if r.status in ("ok", "conflict") and r.server_key}
        results.update(zip(later, self._apply_writes([writes[n] for n in later], created),
                           strict=True))
        return [results[n] for n in range(len(writes))]

    def _keyed(self, write: Write) -> set[str]:
        """Our names of the write's lookups to keyed sets."""
        return self.entity_map(write.entity).keyed_lookup_names

    def _apply_writes(self, writes: list[Write], created: dict[str, str]) -> list[WriteResult]:
        """Creates found by their client id first; the rest in one $batch, or one by one.

        `created`: keys of records created earlier in this batch (client GUID -> key).
        """
        results: dict[int, WriteResult] = {}
        plans: dict[int, tuple[str, str, dict[str, str], dict[str, Any] | None]] = {}
        found = self._find_creates(writes)
        for n, write in enumerate(writes):
            emap = self.entity_map(write.entity)
            if n in found:  # a create whose answer was lost: now an update of that record
                key, etag = found[n]
                write = Write(write.entity, write.record_id, "upsert", write.values,
                              if_match=etag, server_key=key, references=write.references)
                writes[n] = write
            plan = self._plan(emap, write, created)
            if isinstance(plan, WriteResult):
                results[n] = plan
            else:
                plans[n] = plan
        order = list(plans)
        answers = self._send([plans[n] for n in order]) if order else []
        again: dict[int, Any] = {}
        for n, (status, headers, body) in zip(order, answers, strict=True):
            write = writes[n]
            if status == 404 and plans[n][0] == "PATCH" and write.if_match is None:
                # An unconditional upsert (the client's version won) of a record the
                # service no longer has: it is created again, as an upsert does.
                writes[n] = Write(write.entity, write.record_id, "upsert", write.values,
                                  create_only=True, references=write.references)
                again[n] = self._plan(self.entity_map(write.entity), writes[n], created)
                continue
            results[n] = self._result(self.entity_map(write.entity), write, status, headers,
                                      body)
        for n, plan in again.items():
            if isinstance(plan, WriteResult):
                results[n] = plan
        resend = [n for n, plan in again.items() if not isinstance(plan, WriteResult)]
        for n, (status, headers, body) in zip(resend, self._send([again[n] for n in resend])
                                              if resend else [], strict=True):
            results[n] = self._result(self.entity_map(writes[n].entity), writes[n], status,
                                      headers, body)
        for n in found:
            results[n].server_key = found[n][0]
            if self.entity_map(writes[n].entity).computes_values:
                results[n].version = None  # as for any create: the download brings it whole
        return [results[n] for n in range(len(writes))]

    def _find_creates(self, writes: list[Write]) -> dict[int, tuple[str, str]]:
        """Creates of server-keyed records already on the service (by client id): key, ETag."""
        wanted: dict[str, dict[str, int]] = {}
        for n, write in enumerate(writes):
            emap = self.entity_map(write.entity)
            if write.create_only and emap.key_kind == "server" and emap.client_id:
                wanted.setdefault(emap.name, {})[write.record_id] = n
        found: dict[int, tuple[str, str]] = {}
        for name, ids in wanted.items():
            emap = self.maps()[name]
            prop = emap.properties[emap.client_id or ""]
            listed = list(ids)
            for start in range(0, len(listed), CHUNK_LOOKUPS):
                chunk = listed[start:start + CHUNK_LOOKUPS]
                condition = " or ".join(f"{prop.name} eq {literal(prop, i)}" for i in chunk)
                url = f"{emap.entity_set}?" + _encode(f"$filter={condition}")
                for item in self._json(self.request("GET", url), url).get("value", []):
                    at = ids.get(str(item.get(prop.name) or "").lower())
                    if at is not None:
                        found[at] = (emap.key_of(item), str(item.get("@odata.etag") or "*"))
        return found

    def _plan(self, emap: EntityMap, write: Write, created: dict[str, str]) -> Any:
        """The request of one write (method, path, headers, body), or its result at once."""
        try:
            return self._request_of(emap, write, {**created, **write.references})
        except InvalidInput as exc:
            return WriteResult("error", message=str(exc))

    def _request_of(self, emap: EntityMap, write: Write, references: dict[str, str]) -> Any:
        creating = write.create_only and write.server_key is None
        if creating:
            if not emap.capabilities.insertable:
                return WriteResult("error", message=f"{emap.entity_set} does not take creates "
                                   "(Capabilities.InsertRestrictions)")
            if emap.key_kind == "server" and not emap.client_id:
                return WriteResult("error", message=(
                    f"{emap.entity_set}: the service picks its keys and the connection names no "
                    "client-id property of it, so a create whose answer is lost could not be "
                    "recognised; set client_id_property to create records here"))
            body = emap.to_server(write.values, creating=True, record_id=write.record_id,
                                  references=references)
            headers = write_headers(Write(write.entity, write.record_id, "upsert"))
            return "POST", emap.entity_set, headers, body
        key = write.record_id if not emap.keyed else write.server_key
        if key is None:
            return WriteResult("missing", message="the service has never had this record")
        headers = write_headers(write)
        headers.pop("If-None-Match", None)
        headers.setdefault("If-Match", "*")  # unconditional; CAP asks If-Match of every change
        if write.operation == "delete":
            if not emap.capabilities.deletable:
                return WriteResult("error", message=f"{emap.entity_set} does not take deletions")
            # No body, nothing to return: CAP refuses `Prefer: return=...` on a DELETE.
            return "DELETE", emap.path(key), {"If-Match": headers["If-Match"]}, None
        if not emap.capabilities.updatable:
            return WriteResult("error", message=f"{emap.entity_set} does not take updates")
        return "PATCH", emap.path(key), headers, emap.to_server(
            write.values, creating=False, record_id=write.record_id, references=references)

    def _send(self, plans: list[_Plan]) -> list[_Answer]:
        """The writes' answers (status, headers, body), by one $batch or one by one.

        A service that refuses a JSON $batch as a whole (its status says it does not
        know the form, so nothing of it ran) is sent multipart; one that refuses that
        too gets one request a write, for the rest of the run.
        """
        while self._batch_kind is not None:
            if self._batch_kind == "json":
                response, answers = self._json_batch(plans)
            else:
                response, answers = self._multipart_batch(plans)
            if answers is not None:
                return answers
            if response.status_code not in BATCH_REFUSED:
                raise BackendError(f"$batch answered {response.status_code}: "
                                   f"{error_message(response)}")
            self._batch_kind = "multipart" if self._batch_kind == "json" else None
        return self._one_by_one(plans)

    def _json_batch(self, plans: list[_Plan]
                    ) -> tuple[requests.Response, list[_Answer] | None]:
        """A JSON $batch of independent requests; its answers, or None if it was refused."""
        # Header names in lower case: CAP reads a batch request's `if-match` only so.
        requests_ = [{"id": str(n), "method": method, "url": path,
                      "headers": {k.lower(): v for k, v in headers.items()},
                      **({"body": body} if body is not None else {})}
                     for n, (method, path, headers, body) in enumerate(plans)]
        response = self.request("POST", "$batch", data=orjson.dumps({"requests": requests_}),
                                headers={"Content-Type": "application/json",
                                         "Prefer": "odata.continue-on-error"})
        if response.status_code != 200:
            return response, None
        answers = {str(a.get("id")): a for a in
                   orjson.loads(response.content).get("responses", [])}
        return response, [_answer_of(answers.get(str(n))) for n in range(len(plans))]

    def _multipart_batch(self, plans: list[_Plan]
                         ) -> tuple[requests.Response, list[_Answer] | None]:
        """A multipart $batch, each write its own change set; its answers, or None if refused.

        One change set a write: the writes are independent (one failing must not
        undo the others), and services of OData 3's rules take data modifications
        only inside change sets.
        """
        parts = [multipart.RequestPart(
            method, self.root + path,
            {**headers, **({"Content-Type": "application/json"} if body is not None else {})},
            orjson.dumps(body) if body is not None else b"", str(n + 1), changeset=f"w{n + 1}")
            for n, (method, path, headers, body) in enumerate(plans)]
        content, content_type = multipart.write_batch_request(parts)
        response = self.request("POST", "$batch", data=content, headers={
            "Content-Type": content_type, "Prefer": "odata.continue-on-error"})
        if response.status_code != 200:
            return response, None
        return response, [_answer_of(None) if answer is None else (
            answer.status, {k.lower(): v for k, v in answer.headers.items()},
            _decoded(answer.body)) for answer in batch_answers(response, len(plans))]

    def _one_by_one(self, plans: list[_Plan]) -> list[_Answer]:
        """Each write its own request."""
        out = []
        for method, path, headers, body in plans:
            response = self.request(method, path, headers=headers,
                                    data=orjson.dumps(body) if body is not None else None)
            out.append((response.status_code, {k.lower(): v for k, v in
                                               response.headers.items()},
                        _decoded(response.content)))
        return out

    def _result(self, emap: EntityMap, write: Write, status: int, headers: dict[str, str],
                body: Any) -> WriteResult:
        """One write's answer as the engine's result (a create's new key with it)."""
        message = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = str(body["error"].get("message") or "")
        elif isinstance(body, str):
            message = body[:200]
        creating = write.create_only and write.server_key is None
        if status < 300:
            record = emap.from_server(body) if isinstance(body, dict) and body else None
            version = headers.get("etag") or (body.get("@odata.etag")
                                              if isinstance(body, dict) else None)
            key = None
            if emap.keyed and creating:
                if isinstance(body, dict) and all(k.name in body for k in emap.keys):
                    key = emap.key_of(body)
                else:
                    location = headers.get("location") or headers.get("odata-entityid") or ""
                    key = emap.key_from_url(location) if location else None
            if record is not None:
                record[emap.entity.primaryidattribute] = write.record_id
                # The service took the keys we sent: its lookups are our targets' GUIDs.
                record.update({n: write.values[n] for n in emap.keyed_lookup_names
                               if n in write.values})
            if creating and (emap.computes_values or record is None or _differs(
                    record, write.values, emap.entity.primaryidattribute)):
                # The service set values of its own (its key, defaults): the version is
                # not kept, so this run's download brings the record back whole.
                version = None
            return WriteResult("ok", version=version, record=record, server_key=key)
        if creating and emap.key_kind != "server" and status not in (401, 403):
            # A create of a key the client chose, refused: our own create repeated (its
            # answer was lost) or someone else's record of this key? Services say it
            # differently (409; CAP: 500 SQLITE_CONSTRAINT_PRIMARYKEY), so the record
            # is looked up; the engine then compares it with ours.
            key = write.record_id if emap.key_kind == "guid" else emap.key_of_values(
                emap.to_server({k: v for k, v in write.values.items()  # keys, no lookups
                                if k not in self._keyed(write)},
                               creating=True, record_id=write.record_id))
            if key is not None and self.read_record(write.entity, key, emap.path(key)):
                if emap.key_kind == "guid":
                    # The client's own random GUID: nobody else made this record. It is
                    # ours; the download brings its values (with the service's defaults).
                    return WriteResult("ok")
                return WriteResult("conflict", message=message or "the record exists",
                                   server_key=key)
        if status == 412:
            key = write.server_key if emap.keyed else write.record_id
            if write.operation == "delete" and key is not None and \
                    self.read_record(write.entity, key, emap.path(key)) is None:
                # CAP answers 412, not 404, to a stale If-Match of a record it no longer
                # has: gone is gone (perhaps by our own lost answer).
                return WriteResult("missing", message="the record does not exist")
            return WriteResult("conflict", message=message or "the record changed on the service")
        if status == 404:
            return WriteResult("missing", message=message or "the record does not exist")
        return WriteResult("error", message=f"{status}: {message or 'error'}")


def _state(link: str | None) -> dict[str, Any] | None:
    """Our read state in a checkpoint's link, or None (no link, or the service's delta link)."""
    if link and link.startswith(STATE):
        state = orjson.loads(link[len(STATE):])
        return state if isinstance(state, dict) else None
    return None


def _link(state: dict[str, Any]) -> str:
    return STATE + orjson.dumps(state).decode()


def _encode(query: str) -> str:
    """A query option with its value URL-encoded (spaces as %20: CAP refuses `+`)."""
    name, _, value = query.partition("=")
    return f"{name}={quote(value, safe=chr(39) + ',()$:')}"


def _after(emap: EntityMap, stamp: str | None, keys: dict[str, Any]) -> str:
    """A filter of the records after (timestamp, key): keyset paging in a stable order."""
    parts: list[tuple[str, str]] = []
    if stamp is not None and emap.modified:
        parts.append((emap.modified, stamp))
    parts += [(k.name, literal(k, keys.get(k.name))) for k in emap.keys]
    alternatives = []
    for n in range(len(parts)):
        same = [f"{name} eq {value}" for name, value in parts[:n]]
        alternatives.append(" and ".join([*same, f"{parts[n][0]} gt {parts[n][1]}"]))
    return " or ".join(f"({a})" for a in alternatives)


def _instant(stamp: str) -> str:
    """A DateTimeOffset text in a form that sorts by time (fraction padded)."""
    head, _, rest = stamp.partition(".")
    fraction = rest.rstrip("Z")
    return f"{head.rstrip('Z')}.{fraction.ljust(7, '0')}Z" if rest else f"{head.rstrip('Z')}." \
        "0000000Z"


def _differs(record: dict[str, Any], values: dict[str, Any], pk: str) -> bool:
    """The service's record of a create holds values other than the ones sent."""
    stamps = ("createdon", "modifiedon", pk)
    return any(record.get(k) != values.get(k) for k in record if k not in stamps)


def _decoded(content: bytes) -> Any:
    """An answer's body: JSON decoded, other text as text, nothing as None."""
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", "replace")


def _answer_of(answer: dict[str, Any] | None) -> _Answer:
    """A JSON $batch response as (status, headers, body); no answer is a 500 of ours."""
    if answer is None:
        return 500, {}, {"error": {"message": "the service gave no answer to this write"}}
    headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
    return int(answer.get("status", 500)), headers, answer.get("body")

"""The `dynamics` backend: Dynamics 365 / Dataverse through its Web API, with MSAL tokens.

It is the OData client of `odata.py` with the Dataverse dialect:

* the server URL is the environment (`https://contoso.crm4.dynamics.com`) or
  its Web API root; requests go to `/api/data/v9.2/`, with a bearer token
  from MSAL (`auth.py`) whose authority the server names in its 401 answer;
* metadata comes from EntityDefinitions, attributes expanded and typed casts
  for option sets and lookup targets, N:N intersect tables from
  ManyToManyRelationships; only tables that can be synced are offered
  (`dataverse_metadata.skip_reason`);
* records read with `$select` of the synced attributes, lookups as
  `_x_value` (with `lookuplogicalname`, remembered so a polymorphic lookup
  binds the table it points to); tables with ChangeTrackingEnabled are read
  with `Prefer: odata.track-changes` and delta links, the others by a
  `modifiedon` watermark with the engine's id reconciliation for deletions;
  a delta link the server refuses (expired token) starts a full read, with
  reconciliation, so nothing is lost or doubled;
* writes as PATCH upserts with the record's own GUID (`If-None-Match: *` for
  creates, `If-Match` of the last seen ETag otherwise) and lookups as
  `nav@odata.bind`; N:N rows through associate / disassociate (`$ref`);
* service protection: `429` waits as `Retry-After` says (the transport), a
  wait longer than a run should sit through stops the run with the reason
  (the next run resumes from its checkpoints), and the
  `x-ms-ratelimit-*` headers slow the run down before it is throttled.
"""

import re
import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from portal import multipart
from portal.backends import dataverse_metadata as dvm
from portal.backends.auth import (
    BearerAuth,
    ClientCredentials,
    TokenSource,
    UserPassword,
    authority_of,
    discover_authority,
)
from portal.backends.base import ChangesPage, Write, WriteResult
from portal.backends.odata import (
    BATCH_LIMIT,
    RETRIES,
    ODataBackend,
    ServerRetry,
    batch_answers,
    error_message,
    server_retry,
    write_headers,
)
from portal.backends.prefetch import prefetched
from portal.errors import (
    BackendError,
    CredentialsRefused,
    InvalidInput,
    ServerLimited,
)
from portal.orgs.metadata import SYSTEM_ATTRIBUTES, Attribute, Entity

if TYPE_CHECKING:
    from portal.sync.filters import Filter  # given by the engine, never imported at run time

API_PATH = "api/data/v9.2/"
API_RE = re.compile(r"/api/data/v\d+\.\d+/?")
AUTH_KINDS = ("password", "client_credentials")
MAX_PAGE_SIZE = 5000  # Dataverse's largest odata.maxpagesize
# Service protection (learn.microsoft.com, power-apps/developer/data-platform/api-limits):
# a user has 6,000 requests and 1,200,000 ms of execution time per 5 minutes.
# Near the end of either budget (under LOW_SHARE of the most the server has
# reported left, so an environment with other limits is judged by its own)
# each request waits, so the window refills before the server throttles; a
# Retry-After longer than a run waits stops it.
LOW_SHARE = 0.05
SLOW_DOWN_S = 1.0
MAX_WAIT_S = 120
# `#reconcile` on a stored link: this read started over (a refused delta
# token), so when it ends, records the server no longer lists are deleted.
# A fragment is never sent to the server.
RECONCILE = "#reconcile"
# How a server refuses writing an N:N row as a record (then it is associated instead).
REFUSED_ROW = ("400", "405", "501")
LOOKUP_TABLE = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"


def web_api_root(url: str) -> tuple[str, str]:
    """(environment URL, Web API root) of an environment URL or of its Web API root."""
    parts = urlsplit((url or "").strip())
    match = API_RE.search(parts.path)
    if match:
        environment_path, root_path = parts.path[:match.start()], parts.path[:match.end()]
    else:
        environment_path = parts.path.rstrip("/")
        root_path = f"{environment_path}/{API_PATH}"
    root_path = root_path.rstrip("/") + "/"
    return (urlunsplit((parts.scheme, parts.netloc, environment_path, "", "")),
            urlunsplit((parts.scheme, parts.netloc, root_path, "", "")))


class ServiceProtectionRetry(ServerRetry):
    """The transport's retries; a 429 or 503 asking to wait longer than MAX_WAIT_S stops the run.

    Waiting is right for a short Retry-After; a long one means the user's budget
    is spent for minutes, and a job that sleeps holds its worker and its lock.
    The run stops with the reason instead; the next run resumes from the checkpoints.
    """

    @classmethod
    def from_retry(cls, retry: Retry) -> "ServiceProtectionRetry":
        """The same settings as `retry`."""
        made = cls.__new__(cls)
        made.__dict__.update(retry.__dict__)
        return made

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        """Sleep as Retry-After says, unless it says more than a run waits."""
        # Read here: urllib3's own reading is capped at retry_after_max.
        wait = _seconds(response.headers.get("Retry-After"))
        if wait is not None and wait > MAX_WAIT_S:
            raise ServerLimited(
                f"stopped by the server's limit: Dataverse's service protection limits are "
                f"reached ({_error_text(response)}); "
                f"it asks to wait {wait:.0f} s, longer than a run waits ({MAX_WAIT_S} s). "
                "The run stops here; the next run continues where this one stopped")
        return bool(super().sleep_for_retry(response))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: urllib3 reads it (and caps it)


def _error_text(response: BaseHTTPResponse) -> str:
    try:
        error = orjson.loads(response.data).get("error") or {}
        return str(error.get("message") or response.status)
    except (orjson.JSONDecodeError, AttributeError):
        return str(response.status)


def check_auth_kind(kind: str | None) -> str:
    """Refuse an unknown way of signing in."""
    kind = kind or "password"
    if kind not in AUTH_KINDS:
        raise InvalidInput(f"unknown sign-in {kind!r} (one of {', '.join(AUTH_KINDS)})",
                           field="auth")
    return kind


OPTIONS = ("auth", "tenant", "authority", "client_id")


def check_options(options: dict[str, str]) -> dict[str, str]:
    """A connection's Dynamics sign-in options, checked: auth, tenant, authority, client_id."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown Dynamics option {unknown[0]!r} (one of "
                           f"{', '.join(OPTIONS)})", field="auth")
    checked = {**options, "auth": check_auth_kind(options.get("auth"))}
    authority_of(options.get("tenant"), options.get("authority"))  # refuses bad ones
    return checked


class DynamicsBackend(ODataBackend):
    """A Dataverse environment through its Web API, signed in by MSAL."""

    kind = "dynamics"
    # Entities read at once: at most four, and no more than the environment's
    # x-ms-dop-hint (allowed_streams). Safe: the token source renews under its own
    # lock, the run's caches of the server's definitions fill under `_learning`,
    # and the rest it learns while reading (lookup tables, navigations) are single
    # dict writes of values every reader would write alike.
    max_streams = 4

    def __init__(self, url: str, username: str, password: str, *, auth: str | None = None,
                 tenant: str | None = None, authority: str | None = None,
                 client_id: str | None = None, allow_private: bool = False,
                 session: requests.Session | None = None, retries: int = RETRIES) -> None:
        """`username`/`password` are the user's, or (auth='client_credentials') the
        application's client id and secret; `client_id` is the public client of
        the password flow; `tenant` or `authority` override the discovered one."""
        self.environment, root = web_api_root(url)
        super().__init__(root, username, password, allow_private=allow_private,
                         session=session, retries=retries, max_retry_after=MAX_WAIT_S)
        # The transport's retries, except that a Retry-After longer than a run
        # waits stops the run (ServiceProtectionRetry).
        # A connection for each stream's reader, and spare ones for the writer's reads.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.max_streams + 2, max_retries=(
            ServiceProtectionRetry.from_retry(server_retry(retries, MAX_WAIT_S))))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = None
        self.bearer: BearerAuth | None = None  # once the authority is known
        self.session.hooks["response"].append(self._service_protection)
        self.auth_kind = check_auth_kind(auth)
        self.username, self.password, self.client_id = username, password, client_id
        self.authority = authority_of(tenant, authority)
        self.tokens: TokenSource | None = None
        # What the run learns of the server once: entity sets, change tracking,
        # attributes, navigation properties, N:N relationships, lookup targets.
        self._definitions: dict[str, dict[str, Any]] | None = None
        self._attributes: dict[str, dict[str, dict[str, Any]]] = {}
        self._navigations: dict[str, dict[tuple[str, str], str]] = {}
        self._asked_navigations: set[str] = set()
        self._associate_only: set[str] = set()  # N:N tables written by $ref
        self._budget: dict[str, int] = {}  # the most of each budget the server said was left
        self._relationships: list[dvm.ManyToMany] | None = None
        self._targets: dict[str, str] = {}  # record id -> its table, as lookups named it
        self._dop_hint: int | None = None  # the server's recommended parallelism, last said
        self._signing_in = threading.Lock()  # one token source, found once
        self._learning = threading.RLock()  # each definition read once, by one reader

    # --- transport ---------------------------------------------------------

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request with a bearer token (found, then cached, on first use)."""
        # Per request, not on the session: MSAL's own requests share the session.
        if self.bearer is None:
            with self._signing_in:
                if self.bearer is None:
                    self.bearer = BearerAuth(self._token_source())
        return super().request(method, url, auth=self.bearer, **kwargs)

    def _token_source(self) -> TokenSource:
        if self.tokens is None:
            if self.authority is None:
                challenge = discover_authority(self.session, self.root)
                authority, resource = challenge.authority, challenge.resource
            else:
                authority, resource = self.authority, None
            resource = resource or self.environment
            if self.auth_kind == "client_credentials":
                self.tokens = ClientCredentials(self.session, authority, resource,
                                                self.username, self.password)
            else:
                self.tokens = UserPassword(self.session, authority, resource, self.username,
                                           self.password, self.client_id or "")
        return self.tokens

    def _service_protection(self, response: requests.Response, *args: Any,
                            **kwargs: Any) -> None:
        """Near the end of the budget the server reports, wait before the next request; keep
        the parallelism it recommends (x-ms-dop-hint)."""
        hint = _int(response.headers.get("x-ms-dop-hint"))
        if hint is not None:
            self._dop_hint = hint
        low = False
        for header in ("x-ms-ratelimit-burst-remaining-xrm-requests",
                       "x-ms-ratelimit-time-remaining-xrm-requests"):
            left = _int(response.headers.get(header))
            if left is not None:
                most = self._budget[header] = max(self._budget.get(header, 0), left)
                low = low or left < most * LOW_SHARE
        if low:
            time.sleep(SLOW_DOWN_S)

    # --- the interface -----------------------------------------------------

    def allowed_streams(self) -> tuple[int, str]:
        """At most max_streams, and no more than the server's x-ms-dop-hint (Microsoft Learn,
        "Send parallel requests": the environment's recommended degree of parallelism)."""
        if self._dop_hint is None:
            self.definitions()  # read by every run anyway; its answer carries the hint
        hint = self._dop_hint
        if hint is not None and hint < self.max_streams:
            return max(1, hint), f"the server's x-ms-dop-hint is {hint}"
        return self.most_streams()

    def check_credentials(self) -> str:
        """WhoAmI(): a token, and a user the environment knows (with a security role)."""
        response = self.request("GET", "WhoAmI()")
        if response.status_code == 403:
            raise CredentialsRefused(
                f"{self.environment} knows the sign-in but refused it ({error_message(response)}): "
                "give the user or application user a security role that can read and write "
                "the tables to sync")
        if response.status_code != 200:
            raise BackendError(f"{self.root}WhoAmI() answered {response.status_code}: "
                               f"{error_message(response)} — is this a Dataverse environment?")
        who = orjson.loads(response.content)
        if not isinstance(who, dict) or "UserId" not in who:
            raise BackendError(f"{self.root} is not a Dataverse Web API (WhoAmI gave no UserId)")
        return f"{self.username} (user {who['UserId']})"

    def read_metadata(self) -> list[Entity]:
        """The tables that can be synced, with attributes, option sets, targets and N:N."""
        definitions = self.definitions()
        syncable = {n: d for n, d in definitions.items() if dvm.skip_reason(d) is None}
        relationships = {r.intersect: r for r in self.relationships()
                         if r.entity1 in syncable and r.entity2 in syncable}
        entities = []
        for name in syncable:  # in the server's order
            data = self.get_json(f"{_key(name)}?$expand=Attributes")
            self._attributes[name] = {str(a["LogicalName"]): a for a in
                                      data.get("Attributes") or [] if a.get("LogicalName")}
            self._add_casts(name, data.get("Attributes") or [])
            entity = dvm.entity_from_definition(data)
            if name in relationships:
                entity = dvm.as_intersect(entity, relationships[name])
            elif entity.isintersect and not any(a.type == "lookup" for a in entity.attributes):
                continue  # an N:N whose sides are not synced has nothing to join
            entities.append(entity)
        return entities

    def _add_casts(self, name: str, attributes: list[dict[str, Any]]) -> None:
        """Options of picklists, states and statuses, and lookup targets, where not expanded."""
        types = {str(a.get("AttributeType")) for a in attributes
                 if dvm.readable(a) and not (a.get("OptionSet") or a.get("Targets"))}
        casts = [("PicklistAttributeMetadata", "$select=LogicalName&$expand=OptionSet,"
                  "GlobalOptionSet", {"Picklist"}),
                 ("StateAttributeMetadata", "$select=LogicalName&$expand=OptionSet", {"State"}),
                 ("StatusAttributeMetadata", "$select=LogicalName&$expand=OptionSet",
                  {"Status"}),
                 ("LookupAttributeMetadata", "$select=LogicalName,Targets",
                  {"Lookup", "Customer", "Owner"})]
        for cast, query, wanted in casts:
            if types & wanted:
                dvm.merge_casts(attributes, self.get_json(
                    f"{_key(name)}/Attributes/Microsoft.Dynamics.CRM.{cast}?{query}"))

    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: "Filter | None" = None) -> Generator[ChangesPage, None, None]:
        """Delta pages on tracked tables, a modifiedon watermark on the others.

        On a table without change tracking the sync filter goes to the server as
        `$filter` where it can be expressed (Dataverse refuses $filter with
        change tracking): fewer records cross the wire, and the reconciliation
        that ends each such read lists the same records (`read_ids`), so one that
        stopped matching leaves the client as the engine's own filter would do.
        """
        tracked = self.tracks_changes(entity)
        selected = f"{entity.entitysetname}?$select={','.join(self.select(entity))}"
        expressed = None if tracked else self.server_filter(entity, filter)
        full = f"{selected}&$filter={expressed}" if expressed else selected
        prefer = ["odata.track-changes"] if tracked else []
        prefer += [f"odata.maxpagesize={min(page_size, MAX_PAGE_SIZE)}",
                   f'odata.include-annotations="{LOOKUP_TABLE},{NAVIGATION}"']
        headers = {"Prefer": ",".join(prefer)}
        has_modifiedon = "modifiedon" in self.server_attributes(entity)

        def pages() -> Iterator[ChangesPage]:
            url = link or full
            reconcile = not tracked or url.endswith(RECONCILE)
            url = url.removesuffix(RECONCILE)
            note = None
            newest = ""
            while True:
                response = self.request("GET", url, headers=headers)
                if 400 <= response.status_code < 500 and link is not None and url != full \
                        and url == link.removesuffix(RECONCILE):
                    # A delta token too old (or refused): read everything again, and
                    # let the engine delete what the server no longer has. A server
                    # error (5xx after the retries) fails the run instead: the token
                    # may be good, and the next run tries it again.
                    note = (f"the server refused the saved change link ({response.status_code}:"
                            f" {error_message(response)}); reading {entity.logicalname} again in "
                            "full, deletions found by comparing ids")
                    url, reconcile = full, True
                    continue
                if response.status_code != 200:
                    raise BackendError(f"reading {entity.logicalname} answered "
                                       f"{response.status_code}: {error_message(response)}")
                page = self.changes_page(entity, orjson.loads(response.content))
                if entity.isintersect:
                    # N:N rows we associated have the server's ids: the engine maps each
                    # server id it knows (a server key) to the client's row.
                    page.keys = {i: i for i in [*(r[entity.primaryidattribute]
                                                  for r in page.upserts), *page.deleted]}
                page.note, note = note, None
                newest = max([newest, *(str(r.get("modifiedon") or "") for r in page.upserts)])
                if not tracked and page.complete:
                    # Next run: what changed since the newest change seen (ge: a record
                    # changed in the same second comes again and is skipped by version).
                    since = f"modifiedon ge {newest}"
                    page.link = (f"{selected}&$filter={expressed}%20and%20{quote(since)}"
                                 if expressed else f"{selected}&$filter={since}") \
                        if newest and has_modifiedon else None
                elif reconcile and page.link:
                    page.link += RECONCILE  # a resumed read still reconciles at its end
                page.reconcile = reconcile
                yield page
                if page.complete or page.link is None:
                    return
                url = page.link.removesuffix(RECONCILE)

        return prefetched(pages())

    def server_filter(self, entity: Entity, filter: "Filter | None") -> str | None:
        """The sync filter as a URL-quoted `$filter`, or None where it cannot be expressed.

        Not expressed: a like pattern OData has no function for, or an attribute
        the server's table lacks (the engine's own filter still applies).
        """
        if filter is None:
            return None
        server = self.server_attributes(entity)
        if not filter.attributes() <= server.keys():
            return None
        try:
            text = filter.to_odata()
        except InvalidInput:
            return None
        # Parenthesized, so a watermark condition can be and-ed to it.
        return quote(f"({text})", safe="()',") if text else None

    def record_from_server(self, entity: Entity, item: dict[str, Any]) -> dict[str, Any]:
        """A Dataverse record in our form: `_x_value` as x, annotations dropped.

        The table a lookup points to (`lookuplogicalname`) is remembered, so a
        polymorphic lookup written back binds the same table.
        """
        record: dict[str, Any] = {}
        for key, value in item.items():
            if "@" in key:
                if key.endswith(LOOKUP_TABLE) and value:
                    column = key.split("@", 1)[0]
                    target_id = item.get(column)
                    if isinstance(target_id, str):
                        self._targets[target_id.lower()] = str(value)
                    nav = item.get(f"{column}@{NAVIGATION}")
                    if nav:
                        self._navigations.setdefault(entity.logicalname, {})[
                            (column[1:-6], str(value))] = str(nav)
                continue
            if key.startswith("_") and key.endswith("_value"):
                key = key[1:-6]
                value = value.lower() if isinstance(value, str) else value
            record[key] = value
        pk = entity.primaryidattribute
        if isinstance(record.get(pk), str):
            record[pk] = record[pk].lower()
        return record

    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        """One record (its synced attributes) by id with its ETag, or None on 404."""
        if entity.isintersect:
            return self._intersect_row(entity, record_id)
        return self.read_record(entity, record_id, f"{entity.entitysetname}({record_id})"
                                f"?$select={','.join(self.select(entity))}")

    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        """Writes in multipart `$batch` calls of at most 1,000, in order, continue-on-error.

        Each write stands alone (no change set): a refused one does not stop the
        others, and exactly-once rests on the engine's rules (a create's own GUID
        with If-None-Match, If-Match of the last seen ETag). N:N rows a server
        takes only by association go one by one after the batch ($ref).
        """
        # Records created in this round can be lookup targets of later writes.
        created = {w.record_id.lower(): w.entity.logicalname for w in writes
                   if w.operation == "upsert"}
        results: dict[int, WriteResult] = {}
        batched = [n for n, w in enumerate(writes)
                   if w.entity.logicalname not in self._associate_only]
        for start in range(0, len(batched), BATCH_LIMIT):
            chunk = batched[start:start + BATCH_LIMIT]
            answers = self._send_batch([writes[n] for n in chunk], created)
            results.update(zip(chunk, answers, strict=True))
        for n, write in enumerate(writes):
            result = results.get(n)
            if write.entity.isintersect and (result is None or (
                    result.status == "error" and (result.message or "")[:3] in REFUSED_ROW)):
                # Dataverse writes N:N rows only by associating the two records; a server
                # that takes the row itself (a hosted org) keeps the client's own id.
                self._associate_only.add(write.entity.logicalname)
                results[n] = self._apply_intersect(write)
        return [results[n] for n in range(len(writes))]

    # --- writes ------------------------------------------------------------

    def _send_batch(self, writes: list[Write], created: dict[str, str]) -> list[WriteResult]:
        """One multipart `$batch` of independent requests; a result per write."""
        parts = [self._write_part(write, created, str(n + 1)) for n, write in enumerate(writes)]
        body, content_type = multipart.write_batch_request(parts)
        response = self.request("POST", "$batch", data=body, headers={
            "Content-Type": content_type, "Prefer": "odata.continue-on-error"})
        if response.status_code != 200:
            raise BackendError(f"$batch answered {response.status_code}: {error_message(response)}")
        return [self._part_result(write.entity, answer)
                for write, answer in zip(writes, batch_answers(response, len(writes)),
                                         strict=True)]

    def _write_part(self, write: Write, created: dict[str, str],
                    content_id: str) -> multipart.RequestPart:
        """A write as one request of a batch: PATCH (upsert) or DELETE of the record's GUID."""
        url = f"{self.root}{write.entity.entitysetname}({write.record_id})"
        headers = write_headers(write)
        if write.operation == "delete":
            return multipart.RequestPart("DELETE", url, headers, b"", content_id)
        body = self.record_to_server(write.entity, write.values, creating=write.create_only,
                                     created=created)
        return multipart.RequestPart("PATCH", url, headers, orjson.dumps(body), content_id)

    def record_to_server(self, entity: Entity, values: dict[str, Any], *,
                         creating: bool = False,
                         created: dict[str, str] | None = None) -> dict[str, Any]:
        """Our values as a Dataverse body: lookups as `nav@odata.bind`, unwritable ones left out."""
        server = self.server_attributes(entity)
        body: dict[str, Any] = {}
        for name, value in values.items():
            info = server.get(name)
            if name in SYSTEM_ATTRIBUTES or name == entity.primaryidattribute:
                continue
            if info is not None and not (info.get("IsValidForCreate") if creating
                                         else info.get("IsValidForUpdate")):
                continue  # computed or read-only on the server: synced down, never up
            # An attribute the server does not have is sent all the same: its refusal
            # leaves the change in error, where the admin sees it, instead of lost.
            attr = entity.attribute(name)
            if attr is not None and attr.type == "lookup":
                target = self.lookup_target(attr, value, created or {}) if value else \
                    attr.targets[0]
                nav = self.navigation(entity, attr, target)
                body[f"{nav}@odata.bind"] = \
                    f"/{self.entity_set(target)}({value})" if value else None
            else:
                body[name] = value
        return body

    def lookup_target(self, attr: Attribute, record_id: str, created: dict[str, str]) -> str:
        """The table a lookup's value is in: the only target, the one read, or the one found."""
        record_id = str(record_id).lower()
        if len(attr.targets) == 1:
            return attr.targets[0]
        for known in (self._targets.get(record_id), created.get(record_id)):
            if known in attr.targets:
                return str(known)
        for target in attr.targets:  # a GUID is in one table: ask each
            pk = self.definitions().get(target, {}).get("PrimaryIdAttribute") or f"{target}id"
            response = self.request("GET", f"{self.entity_set(target)}({record_id})?$select={pk}")
            if response.status_code == 200:
                self._targets[record_id] = target
                return target
        return attr.targets[0]  # nowhere: the server refuses the bind with its message

    def navigation(self, entity: Entity, attr: Attribute, target: str) -> str:
        """The single-valued navigation property of a lookup to one target table."""
        name = entity.logicalname
        learned = self._navigations.get(name, {}).get((attr.logicalname, target))
        if learned:
            return learned  # as the server annotated a record it sent
        if name not in self._asked_navigations:
            self._asked_navigations.add(name)
            found = self._navigations.setdefault(name, {})
            response = self.request(
                "GET", f"{_key(name)}/ManyToOneRelationships?$select=ReferencingAttribute,"
                "ReferencedEntity,ReferencingEntityNavigationPropertyName")
            if response.status_code == 200:
                for item in orjson.loads(response.content).get("value", []):
                    found[(str(item.get("ReferencingAttribute")),
                           str(item.get("ReferencedEntity")))] = \
                        str(item.get("ReferencingEntityNavigationPropertyName"))
        # Dataverse's own names: the lookup's name, with the table for polymorphic ones
        # (parentcustomerid_account); the owner is one navigation to users and teams.
        default = attr.logicalname if len(attr.targets) == 1 or attr.logicalname == "ownerid" \
            else f"{attr.logicalname}_{target}"
        return self._navigations[name].get((attr.logicalname, target)) or default

    def _apply_intersect(self, write: Write) -> WriteResult:
        """An N:N row: associate its two records, or disassociate them ($ref)."""
        relationship = self.relationship(write.entity)
        if write.operation == "delete":
            # The server's own id of a row we associated (it gave the row an id of its own).
            row = self._intersect_row(write.entity, write.server_key or write.record_id)
            if row is None:
                return WriteResult("missing", message="the N:N row does not exist")
            values = row[0]
        else:
            values = write.values
        one = values.get(relationship.attribute1)
        two = values.get(relationship.attribute2)
        if not one or not two:
            return WriteResult("error", message=f"an N:N row of {write.entity.logicalname} "
                               f"needs {relationship.attribute1} and {relationship.attribute2}")
        base = f"{self.entity_set(relationship.entity1)}({one})/{relationship.navigation1}"
        if write.operation == "delete":
            response = self.request("DELETE", f"{base}({two})/$ref")
        else:
            response = self.request(
                "POST", f"{base}/$ref", headers={"Content-Type": "application/json"},
                data=orjson.dumps({"@odata.id": f"{self.root}"
                                   f"{self.entity_set(relationship.entity2)}({two})"}))
            if response.status_code < 300 or "duplicate" in error_message(response).lower():
                # Associated (now, or already: our lost answer, or theirs). Dataverse gave
                # the intersect row an id of its own: the client's row maps to it (its
                # server key), so the row read back is the same row, not a second one.
                return WriteResult("ok", server_key=self._intersect_id(
                    write.entity, relationship, one, two))
        return self._result(write.entity, response)

    def _intersect_id(self, entity: Entity, relationship: dvm.ManyToMany, one: str,
                      two: str) -> str | None:
        """The server's id of the N:N row joining `one` and `two`, or None if it lists none."""
        pk = entity.primaryidattribute
        response = self.request(
            "GET", f"{entity.entitysetname}?$select={pk}&$filter="
            + quote(f"{relationship.attribute1} eq {one} and {relationship.attribute2} eq {two}"))
        if response.status_code != 200:
            return None
        rows = orjson.loads(response.content).get("value") or []
        found = rows[0].get(pk) if rows and isinstance(rows[0], dict) else None
        return str(found).lower() if found else None

    def _intersect_row(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        return self.read_record(entity, record_id, f"{entity.entitysetname}({record_id})")

    def _result(self, entity: Entity, response: requests.Response) -> WriteResult:
        """A write's answer as the engine's result."""
        return self._answer(entity, response.status_code, response.headers.get("ETag"),
                            response.content)

    def _part_result(self, entity: Entity, part: multipart.ResponsePart | None) -> WriteResult:
        """A batch part's answer as the engine's result (none: the server skipped it)."""
        if part is None:
            return WriteResult("error", message="the server gave no answer to this write")
        return self._answer(entity, part.status, part.header("ETag"), part.body)

    def _answer(self, entity: Entity, status: int, etag: str | None,
                content: bytes) -> WriteResult:
        body: Any = None
        if content:
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError:
                body = None
        if status < 300:
            version = etag or (body.get("@odata.etag") if isinstance(body, dict) else None)
            record = self.record_from_server(entity, body) if isinstance(body, dict) else None
            return WriteResult("ok", version=version, record=record)
        error = body.get("error") if isinstance(body, dict) else None
        message = str(error.get("message")) if isinstance(error, dict) and \
            error.get("message") else content[:200].decode(errors="replace") or str(status)
        if status == 412:
            return WriteResult("conflict", message=message)
        if status == 404:
            return WriteResult("missing", message=message)
        return WriteResult("error", message=f"{status}: {message}")

    # --- what the run learns of the server ---------------------------------

    def definitions(self) -> dict[str, dict[str, Any]]:
        """Every table's EntityMetadata (without attributes), read once per run."""
        with self._learning:
            if self._definitions is None:
                payload = self.get_json("EntityDefinitions")
                self._definitions = {str(d["LogicalName"]): d for d in payload.get("value", [])
                                     if isinstance(d, dict) and d.get("LogicalName")}
            return self._definitions

    def entity_set(self, name: str) -> str:
        """A table's entity set name (accounts for account)."""
        found = self.definitions().get(name, {}).get("EntitySetName")
        if not found:
            raise BackendError(f"the server has no table {name!r}")
        return str(found)

    def tracks_changes(self, entity: Entity) -> bool:
        """True when the table has change tracking on (delta links, deletions reported)."""
        return bool(self.definitions().get(entity.logicalname, {}).get("ChangeTrackingEnabled"))

    def server_attributes(self, entity: Entity) -> dict[str, dict[str, Any]]:
        """The table's AttributeMetadata by name (what can be selected, created, updated)."""
        name = entity.logicalname
        with self._learning:
            if name not in self._attributes:
                payload = self.get_json(f"{_key(name)}?$expand=Attributes")
                self._attributes[name] = {str(a["LogicalName"]): a for a in
                                          payload.get("Attributes") or [] if a.get("LogicalName")}
            return self._attributes[name]

    def select(self, entity: Entity) -> list[str]:
        """`$select` of the entity's synced attributes the server has; lookups as `_x_value`."""
        server = self.server_attributes(entity)
        names = [a for a in entity.attributes if a.logicalname in server]
        return [f"_{a.logicalname}_value" if a.type == "lookup" and not entity.isintersect
                else a.logicalname for a in names]

    def relationships(self) -> list[dvm.ManyToMany]:
        """Every N:N relationship of the environment, read once per run."""
        with self._learning:
            if self._relationships is None:
                response = self.request("GET", "RelationshipDefinitions/"
                                        "Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata")
                # A server without RelationshipDefinitions: its intersect tables are read as
                # they describe themselves (lookups to both sides), and not written.
                self._relationships = dvm.many_to_many(orjson.loads(response.content)) \
                    if response.status_code == 200 else []
            return self._relationships

    def relationship(self, entity: Entity) -> dvm.ManyToMany:
        """The N:N relationship whose intersect table this is."""
        for relationship in self.relationships():
            if relationship.intersect == entity.logicalname:
                return relationship
        raise BackendError(f"{entity.logicalname} is not an N:N table of the server")


def _key(name: str) -> str:
    return f"EntityDefinitions(LogicalName='{quote(name)}')"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None

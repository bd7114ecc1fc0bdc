"""The `salesforce` backend: a Salesforce org through simple-salesforce (REST, SOQL, OAuth 2.0).

simple-salesforce does the HTTP: the OAuth 2.0 token request (`token_login`,
at the connection's login, test or My Domain URL), SOQL `queryAll` pages and
their `nextRecordsUrl`, Bulk API 2.0 query jobs, `getDeleted`, `limits` and the
REST calls of sObject Collections (`restful`). This module chooses what to ask and maps the answers
through `salesforce_mapping`.

* Sign-in (`auth` option): "password" (the OAuth 2.0 username-password flow of
  a connected app: user name, password with the security token appended or
  given apart, consumer key and secret), "jwt" (JWT bearer: user name, the
  connected app's consumer key, the password field holds the private key PEM)
  or "client_credentials" (the user name and password fields hold the consumer
  key and secret; a My Domain URL). An `INVALID_SESSION_ID` answer signs in
  again once and repeats the request.
* Ids: Salesforce ids are server keys (`keyed`): each record travels under the
  GUID derived from its key (the engine swaps in stored mappings), lookups as
  the derived GUIDs of their targets with `ChangesPage.references`.
* Changes: a first read of a large object (`bulk_threshold`) is one Bulk API 2.0
  queryAll job, resumable by its locator; otherwise one SOQL form for the first
  read and every later one, `queryAll` of
  `SystemModstamp > t OR (SystemModstamp = t AND Id > k) ORDER BY SystemModstamp,
  Id` (keyset pages, so a killed read resumes exactly where its last committed
  page ended, and no query cursor has to outlive a run); rows with `IsDeleted`
  are deletions. At the end of each later read `getDeleted` covers hard
  deletions since the last one; a gap older than its window (about 15 days)
  asks the engine for a full id reconciliation, logged.
* Picklists: client option sets, numbered by `salesforce_mapping.option_values`. A
  value the client has no option for yet is left empty and its record held (its key
  in the link, known by no version) and read again by every later read until the
  option is there; an update leaves out empties that stand for such values, and for
  lookups to objects that do not sync (docs/salesforce.md, "Picklists").
* Writes: sObject Collections, up to 200 records a request, `allOrNone=false`.
  Updates and deletes that expect a version first read the records'
  `SystemModstamp` (Salesforce has no ETags): changed is "conflict", gone is
  "missing". Exactly-once creates: when the object has the connection's
  client-id field (`id_field`, default `CrmSyncId__c`) and it is an External
  ID, creates are upserts on it holding the client GUID (a repeat finds the
  first record); when the field is there but not an External ID, the GUIDs are
  looked up before the create is sent; without the field a lost answer can
  make a second record (docs/salesforce.md).
* Limits: every answer's `Sforce-Limit-Info` (simple-salesforce's `api_usage`)
  is checked against the connection's budget, a share of the org's daily
  requests; reaching it, or `REQUEST_LIMIT_EXCEEDED`, stops the run as
  ServerLimited (run status "limited"), and the next run resumes.
"""

import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import jwt
import orjson
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
)
from simple_salesforce.login import token_login

from portal.backends import salesforce_mapping as sfm
from portal.backends.base import Backend, ChangesPage, Write, WriteResult
from portal.backends.odata import RETRIES, RETRY_METHODS, TIMEOUT_S, server_retry
from portal.backends.server_urls import check_server_url, guard_session
from portal.errors import BackendError, CredentialsRefused, InvalidInput, ServerLimited
from portal.orgs.metadata import Attribute, Entity
from portal.orgs.sync_state import server_key_id
from portal.orgs.types import datetime_text

if TYPE_CHECKING:
    from portal.sync.filters import Filter  # the engine filters every page too

API_VERSION = "62.0"
AUTH_KINDS = ("password", "jwt", "client_credentials")
OPTIONS = ("auth", "consumer_key", "consumer_secret", "security_token", "id_field",
           "api_budget", "objects", "bulk_threshold")
SECRET_OPTIONS = frozenset({"consumer_secret", "security_token"})  # stored encrypted
DEFAULT_ID_FIELD = "CrmSyncId__c"
DEFAULT_API_BUDGET = 50  # percent of the org's daily API requests a connection may reach
# Under this share of the budget left, a run reads one object at a time: it nears its
# stop at a reader's pace, and reaches it with one request in flight, not one a reader.
LOW_BUDGET_SHARE = 0.25
COLLECTION_SIZE = 200  # records per sObject Collections request (Salesforce's limit)
IN_LIST_SIZE = 200  # ids per `Id IN (...)` of a version read
QUERY_BATCH = (200, 2000)  # Sforce-Query-Options batchSize bounds
# A later read starts this much before the last one's end: a record changed in the
# same second as the watermark, with a lower Id, is not missed (re-reads are skipped
# by version).
OVERLAP = timedelta(seconds=60)
# getDeleted keeps about 15 days; older gaps are reconciled by ids.
DELETED_WINDOW = timedelta(days=15)
STAMP_FIELDS = ("SystemModstamp", "CreatedDate", "LastModifiedDate", "IsDeleted")
JWT_LIFETIME_S = 180
# A first read of an object with more records than this goes through Bulk API 2.0, as
# Salesforce recommends for large reads (one job instead of many query pages).
BULK_THRESHOLD = 10_000
BULK_POLL_S = 0.5  # the first wait for a query job; simple-salesforce backs off after

T = TypeVar("T")


def check_options(options: dict[str, str]) -> dict[str, str]:
    """A connection's Salesforce sign-in options, checked (see OPTIONS)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown Salesforce option {unknown[0]!r} (one of "
                           f"{', '.join(OPTIONS)})", field="auth")
    auth = options.get("auth") or "password"
    if auth not in AUTH_KINDS:
        raise InvalidInput(f"unknown Salesforce sign-in {auth!r} (one of "
                           f"{', '.join(AUTH_KINDS)})", field="auth")
    if auth in ("password", "jwt") and not options.get("consumer_key"):
        raise InvalidInput("enter the connected app's consumer key", field="consumer_key")
    if auth == "password" and not options.get("consumer_secret"):
        raise InvalidInput("enter the connected app's consumer secret", field="consumer_secret")
    threshold = options.get("bulk_threshold")
    if threshold is not None and not threshold.isdigit():
        raise InvalidInput("the Bulk API threshold is a number of records",
                           field="bulk_threshold")
    budget = options.get("api_budget")
    if budget is not None and not (budget.isdigit() and 1 <= int(budget) <= 100):
        raise InvalidInput("the API budget is a percentage from 1 to 100", field="api_budget")
    return {**options, "auth": auth}


def _quoted(value: str) -> str:
    """A SOQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SalesforceBackend(Backend):
    """A Salesforce org through its REST API, by simple-salesforce."""

    kind = "salesforce"
    supports_delta = True
    supports_batch = True
    keyed = True
    # Objects read at once: four, one when little of the connection's API budget is left
    # (allowed_streams). Safe: the sign-in and the run's describes happen under locks,
    # once each; simple-salesforce's calls share the session, whose pool is thread-safe.
    max_streams = 4

    def __init__(self, url: str, username: str, password: str, *, auth: str | None = None,
                 consumer_key: str | None = None, consumer_secret: str | None = None,
                 security_token: str | None = None, id_field: str | None = None,
                 api_budget: str | int | None = None, objects: str | None = None,
                 bulk_threshold: str | int | None = None,
                 allow_private: bool = False, session: requests.Session | None = None,
                 retries: int = RETRIES, api_version: str = API_VERSION) -> None:
        """`url` is the login URL (https://login.salesforce.com, https://test.salesforce.com
        or the org's My Domain); the other arguments are described in the module docstring."""
        self.login_url = check_server_url(url, allow_private=allow_private).rstrip("/")
        self.allow_private = allow_private
        self.auth = auth or "password"
        self.username, self.password = username, password
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.security_token = security_token or ""
        self.id_field = (id_field or DEFAULT_ID_FIELD).lower()
        self.api_budget = int(api_budget or DEFAULT_API_BUDGET)
        self.only = {o.strip().lower() for o in (objects or "").split(",") if o.strip()}
        self.bulk_threshold = int(BULK_THRESHOLD if bulk_threshold is None else bulk_threshold)
        self.api_version = api_version
        self.session = guard_session(session or requests.Session(), allow_private=allow_private)
        # A POST is a plain create (objects without an External ID client-id field): not
        # repeated by the transport, so a lost answer ends the run and the next run's
        # look-up (or none) decides; every other call may be repeated.
        retry = server_retry(retries).new(allowed_methods=RETRY_METHODS - {"POST"})
        # A connection for each stream's reader, and spare ones for the writer's calls.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.max_streams + 2,
                              max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._sf: Salesforce | None = None
        self._global: dict[str, Any] | None = None
        self._objects: dict[str, sfm.SalesforceObject] = {}  # our entity name -> its describe
        self._prefixes: dict[str, str] = {}  # id prefix -> our entity name
        self._api_names: dict[str, str] = {}  # id prefix -> the object's API name
        self._signing_in = threading.Lock()  # one sign-in for every reader
        self._learning = threading.RLock()  # each describe read once, by one reader

    # --- sign-in and calls -------------------------------------------------

    def _sign_in(self) -> Salesforce:
        """A signed-in client: a token from the login URL, then the instance it names."""
        token_url = f"{self.login_url}/services/oauth2/token"
        data: dict[str, Any]
        if self.auth == "jwt":
            claims = {"iss": self.consumer_key, "sub": self.username, "aud": self.login_url,
                      "exp": int(time.time()) + JWT_LIFETIME_S}
            try:
                assertion = jwt.encode(claims, self.password, algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise CredentialsRefused("the private key (password field) is not an RSA key "
                                         f"in PEM form: {exc}") from None
            data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": assertion}
        elif self.auth == "client_credentials":
            data = {"grant_type": "client_credentials", "client_id": self.username,
                    "client_secret": self.password}
        else:
            data = {"grant_type": "password", "client_id": self.consumer_key,
                    "client_secret": self.consumer_secret, "username": self.username,
                    "password": self.password + self.security_token}
        try:
            token, instance = token_login(token_url, data, "login", self.consumer_key or "",
                                          None, None, self.session)
        except SalesforceAuthenticationFailed as exc:
            # The token endpoint's error body (RFC 6749 5.2), as simple-salesforce read it.
            raise sfm.error_from_answer(400, {"error": exc.code,
                                              "error_description": exc.auth_message}) from None
        except requests.RequestException as exc:
            raise BackendError(f"Salesforce at {self.login_url} cannot be reached: "
                               f"{exc.__class__.__name__}") from None
        instance_url = "https://" + str(instance).rstrip("/")
        check_server_url(instance_url, allow_private=self.allow_private)
        return Salesforce(session_id=token, instance_url=instance_url, session=self.session,
                          version=self.api_version)

    @property
    def sf(self) -> Salesforce:
        """The signed-in client (signed in on first use)."""
        with self._signing_in:
            if self._sf is None:
                self._sf = self._sign_in()
            return self._sf

    def call(self, do: Callable[[Salesforce], T]) -> T:
        """One call through simple-salesforce, signed in again once if the session expired.

        Salesforce's refusals become our errors with its error code and message;
        the API usage it reports is checked against the connection's budget.
        """
        for attempt in (1, 2):
            sf = self.sf
            try:
                result = do(sf)
            except SalesforceExpiredSession:
                if attempt == 2:
                    raise CredentialsRefused("Salesforce refused a new session "
                                             "(INVALID_SESSION_ID twice)") from None
                with self._signing_in:  # INVALID_SESSION_ID: sign in again, then repeat
                    if self._sf is sf:  # (unless another reader did already)
                        self._sf = None
                continue
            except SalesforceError as exc:
                raise self._error(exc) from None
            except requests.RequestException as exc:
                raise BackendError(f"Salesforce at {sf.sf_instance} cannot be reached: "
                                   f"{exc.__class__.__name__}") from None
            self._check_budget(sf)
            return result
        raise AssertionError("unreachable")

    def _error(self, exc: SalesforceError) -> BackendError:
        error = sfm.error_from_answer(exc.status, exc.content)
        content: list[Any] = exc.content if isinstance(exc.content, list) else []
        codes = {e.get("errorCode") for e in content if isinstance(e, dict)}
        if "REQUEST_LIMIT_EXCEEDED" in codes:
            return ServerLimited(f"stopped by Salesforce's API limit ({error.message}); the next "
                                 "run goes on from here")
        return error

    def _check_budget(self, sf: Salesforce) -> None:
        usage = sf.api_usage.get("api-usage")
        if usage is None or not usage.total or self.api_budget >= 100:
            return  # the whole limit: Salesforce's REQUEST_LIMIT_EXCEEDED stops the run
        allowed = usage.total * self.api_budget // 100
        if usage.used >= allowed:
            raise ServerLimited(
                f"stopped at this connection's Salesforce API budget: the org used {usage.used} "
                f"of its {usage.total} daily API requests, the budget is {self.api_budget}% "
                f"({allowed}); the next run goes on from here")

    def query(self, soql: str, page_size: int = QUERY_BATCH[1]) -> Iterator[dict[str, Any]]:
        """The answers (pages) of a queryAll, following nextRecordsUrl."""
        size = min(max(page_size, QUERY_BATCH[0]), QUERY_BATCH[1])
        headers = {"Sforce-Query-Options": f"batchSize={size}"}
        body = self.call(lambda sf: sf.query(soql, include_deleted=True, headers=headers,
                                             timeout=TIMEOUT_S))
        while True:
            yield body
            if body.get("done") is not False or not body.get("nextRecordsUrl"):
                return
            more = str(body["nextRecordsUrl"])
            body = self.call(lambda sf, more=more: sf.query_more(  # type: ignore[misc]
                more, identifier_is_url=True, headers=headers, timeout=TIMEOUT_S))

    # --- metadata ----------------------------------------------------------

    def _describe_global(self) -> dict[str, Any]:
        with self._learning:
            if self._global is None:
                described = self.call(lambda sf: sf.restful("sobjects", timeout=TIMEOUT_S))
                prefixes = sfm.key_prefixes(described or {})
                self._prefixes = {p: name.lower() for p, name in prefixes.items()}
                self._api_names = prefixes
                self._global = described
            return self._global or {}

    def _synced(self) -> list[str]:
        return [n for n in sfm.synced_objects(self._describe_global())
                if not self.only or n.lower() in self.only]

    def salesforce_object(self, entity: Entity | str) -> sfm.SalesforceObject:
        """The describe of an entity's object (once a run); BackendError if it cannot sync now."""
        name = entity if isinstance(entity, str) else entity.logicalname
        with self._learning:
            return self._describe(name)

    def _describe(self, name: str) -> sfm.SalesforceObject:
        if name not in self._objects:
            synced = self._synced()
            api = next((n for n in synced if n.lower() == name), None)
            if api is None:
                listed = next((o for o in self._describe_global().get("sobjects") or []
                               if str(o.get("name", "")).lower() == name), None)
                why = "Salesforce has no such object" if listed is None else (
                    "it is not replicateable and queryable for this user (describeGlobal)")
                raise BackendError(f"{name} cannot sync: {why}")
            describe = self.call(lambda sf: sf.restful(f"sobjects/{api}/describe",
                                                       timeout=TIMEOUT_S))
            obj = sfm.object_from_describe(describe or {}, synced)
            # The client-id field is our bookkeeping (exactly-once creates), not the client's.
            obj.entity.attributes = [a for a in obj.entity.attributes
                                     if a.logicalname != self.id_field]
            self._objects[name] = obj
        return self._objects[name]

    def allowed_streams(self) -> tuple[int, str]:
        """Four objects at once, one when under a quarter of the connection's API budget (its
        share of the org's daily requests, as Sforce-Limit-Info says) is left today."""
        self._describe_global()  # read by every run anyway; its answer says the usage
        usage = self.sf.api_usage.get("api-usage")
        if usage is not None and usage.total:
            allowed = usage.total * min(self.api_budget, 100) // 100
            left = max(0, allowed - usage.used)
            if left < allowed * LOW_BUDGET_SHARE:
                return 1, (f"{left} of the API budget's {allowed} requests are left today "
                           f"(under {LOW_BUDGET_SHARE:.0%})")
        return self.most_streams()

    def check_credentials(self) -> str:
        """Sign in and read the org's limits: who we are and what is left today."""
        limits = self.call(lambda sf: sf.limits(timeout=TIMEOUT_S))
        daily = (limits or {}).get("DailyApiRequests") or {}
        who = self.username if self.auth != "client_credentials" else "the connected app"
        return (f"{who} at {self.sf.sf_instance} ({daily.get('Remaining', '?')} of "
                f"{daily.get('Max', '?')} daily API requests left)")

    def read_metadata(self) -> list[Entity]:
        """Every replicateable, queryable object (or those of the `objects` option)."""
        return [self.salesforce_object(n.lower()).entity for n in self._synced()]

    # --- reading -----------------------------------------------------------

    def _select(self, obj: sfm.SalesforceObject) -> list[str]:
        fields = list(obj.fields.values())
        have = {f.lower() for f in fields}
        return fields + [f for f in STAMP_FIELDS if f.lower() not in have]

    def _rows(self, obj: sfm.SalesforceObject, body: dict[str, Any], page: ChangesPage,
              client: Entity, held: set[str] | None = None) -> tuple[str, str] | None:
        """Add a query answer's rows to a page; returns the last row's (stamp, key).

        `client` is the client's definition of the entity: its options decide
        which picklist values it can hold; the keys of records holding others
        are added to `held`.
        """
        parsed = sfm.query_page(obj, body)
        name = obj.entity.logicalname
        unknown: dict[str, None] = {}  # "Industry 'Robotics'", in order
        held_here = 0
        pointing: dict[str, None] = {}  # "WhoId -> Lead", in order
        pointing_here = 0
        for record in parsed.records:
            key = record["id"]
            guid = server_key_id(name, key)
            record["id"] = guid
            record["createdon"] = record.get("createddate")
            record["modifiedon"] = record.get("lastmodifieddate")
            if elsewhere := self._references(obj, record, page):
                pointing.update(dict.fromkeys(elsewhere))
                pointing_here += 1
            missing = self._options_unknown(obj, client, record)
            if missing:
                unknown.update(dict.fromkeys(missing))
                held_here += 1
            if held is not None:
                (held.add if missing else held.discard)(key)
            page.upserts.append(record)
            page.keys[guid] = key
            # A held record is known by no version (""), so the engine takes its re-read
            # (an unchanged version would be skipped as already held).
            page.versions[guid] = "" if missing else parsed.versions.get(key, "")
        for key in parsed.deleted:
            guid = server_key_id(name, key)
            page.deleted.append(guid)
            page.keys[guid] = key
        if pointing:
            _note(page, f"{obj.api_name}: {pointing_here} record(s) point to objects that do not "
                  f"sync ({', '.join(pointing)}): those lookups are empty on the client")
        if unknown:
            _note(page, f"{obj.api_name}: {held_here} record(s) hold picklist values the client's "
                  f"metadata has no option for yet ({', '.join(unknown)}): left empty; after "
                  "Update Client Metadata the next run reads them again")
        last = None
        for row in body.get("records") or []:
            stamp = row.get("SystemModstamp")
            if isinstance(stamp, str):
                last = (datetime_text(stamp), sfm.salesforce_id(row.get("Id")))
        return last

    def _options_unknown(self, obj: sfm.SalesforceObject, client: Entity,
                         record: dict[str, Any]) -> list[str]:
        """Fit a record's picklist values to the client's definition; returns those it lacks.

        A client still holding a picklist as text (metadata not updated since) gets
        the value as text. A value the client has no option for (added in
        Salesforce since the last Update Client Metadata) is left empty, and the
        caller holds the record, to be read again once the option is there.
        """
        unknown = []
        for name in obj.picklists:
            attr = client.attribute(name)
            number = record.get(name)
            if attr is None or number is None:
                continue
            if attr.type != "picklist":
                record[name] = obj.picklist_value(name, number)
            elif number not in {o.value for o in attr.options}:
                unknown.append(f"{obj.fields[name]} {obj.picklist_value(name, number)!r}")
                record[name] = None
        return unknown

    def _references(self, obj: sfm.SalesforceObject, record: dict[str, Any],
                    page: ChangesPage) -> list[str]:
        """Lookup values (Salesforce ids) as their targets' derived GUIDs, noted in the page.

        Returns the lookups left empty because they point to an object that does not
        sync ("WhoId -> Lead"): the client has no record to point to.
        """
        outside = []
        for attr in obj.entity.attributes:
            key = record.get(attr.logicalname)
            if attr.type != "lookup" or key is None:
                continue
            target = self._prefixes.get(key[:3])
            if target not in attr.targets:
                record[attr.logicalname] = None  # points outside what syncs
                outside.append(f"{obj.fields[attr.logicalname]} -> "
                               f"{self._api_names.get(key[:3], key[:3])}")
                continue
            guid = server_key_id(target, key)
            record[attr.logicalname] = guid
            page.references[guid] = (target, key)
        return outside

    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: "Filter | None" = None) -> Generator[ChangesPage, None, None]:
        """Keyset pages of queryAll by SystemModstamp, Id; then getDeleted (module docstring)."""
        obj = self.salesforce_object(entity)
        state = orjson.loads(link) if link else {}
        first = not state.get("done_once")
        now = datetime.now(UTC)
        if state.get("complete"):  # a later read: from just before the last one's end
            stamp = state.get("stamp")
            state = {"done_once": True, "deleted_since": state.get("deleted_since"),
                     "stamp": (_parse(stamp) - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ")
                     if stamp else None, "id": None, "held": state.get("held") or []}
        state.setdefault("deleted_since", (now - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ"))
        # Keys of records holding picklist values the client had no option for (_rows).
        held: set[str] = set(state.get("held") or [])
        if state.get("bulk") or (first and not state.get("stamp")
                                 and (self.count(entity) or 0) > self.bulk_threshold):
            yield from self._bulk_read(obj, entity, state, held, now, page_size)
            return
        fields = ", ".join(self._select(obj))
        while True:
            where = ""
            stamp = datetime_text(state["stamp"]) if state.get("stamp") else None
            if stamp and state.get("id"):  # after the last row read
                where = (f" WHERE SystemModstamp > {stamp} OR (SystemModstamp = {stamp} "
                         f"AND Id > {_quoted(state['id'])})")
            elif stamp:  # a later read, from just before the last one's end
                where = f" WHERE SystemModstamp >= {stamp}"
            soql = (f"SELECT {fields} FROM {obj.api_name}{where} ORDER BY SystemModstamp, Id "
                    f"LIMIT {page_size}")
            page = ChangesPage([], {}, [], None, False)
            count = 0
            last = None
            for body in self.query(soql, page_size):
                count += len(body.get("records") or [])
                last = self._rows(obj, body, page, entity, held) or last
            if last is not None:
                state["stamp"], state["id"] = last
            state["held"] = sorted(held)
            if count >= page_size:
                page.link = orjson.dumps(state).decode()
                yield page
                continue
            # The last page: held records again, deletions the query cannot show, then
            # the link of the next read.
            if not first:
                self._read_held(obj, entity, held, page)
                state["held"] = sorted(held)
                self._hard_deletions(obj, state, page, now)
            state["done_once"] = True
            state["complete"] = True
            page.link = orjson.dumps(state).decode()
            page.complete = True
            yield page
            return

    def _read_held(self, obj: sfm.SalesforceObject, client: Entity, held: set[str],
                   page: ChangesPage) -> None:
        """Read again the held records this page does not have (their options may be there now)."""
        again = sorted(held - set(page.keys.values()))
        if not again:
            return
        rows = self._read(obj, again, full=True)
        held.difference_update(k for k in again if k not in rows)  # deleted meanwhile
        self._rows(obj, {"done": True, "records": list(rows.values())}, page, client, held)

    def _bulk_read(self, obj: sfm.SalesforceObject, entity: Entity, state: dict[str, Any],
                   held: set[str], now: datetime,
                   page_size: int) -> Generator[ChangesPage, None, None]:
        """A first read by one Bulk API 2.0 queryAll job, a page per result chunk.

        The job and the locator of the next chunk travel in the link, so a stopped read
        goes on with the same job. Its end is the job's start (less the overlap): a
        later read by SOQL brings what changed while the job ran.
        """
        # simple-salesforce's Bulk 2.0 client (`_client` of its SFBulk2Type) does the
        # HTTP; its public query_all is one generator, which cannot be resumed by locator.
        def client(sf: Salesforce) -> Any:
            return getattr(sf.bulk2, obj.api_name)._client

        if not state.get("bulk"):
            soql = f"SELECT {', '.join(self._select(obj))} FROM {obj.api_name}"
            job = self.call(lambda sf: client(sf).create_job("queryAll", soql))
            state.update({"bulk": str(job["id"]), "locator": "",
                          "started": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
            self.call(lambda sf: client(sf).wait_for_job(state["bulk"], True, BULK_POLL_S))
        while True:
            result = self.call(lambda sf: client(sf).get_query_results(
                state["bulk"], state["locator"], max(page_size, 1)))
            page = ChangesPage([], {}, [], None, False)
            body = {"done": True, "records": sfm.csv_rows(obj, result["records"])}
            self._rows(obj, body, page, entity, held)
            state["held"] = sorted(held)
            state["locator"] = result["locator"]
            if state["locator"]:
                page.link = orjson.dumps(state).decode()
                yield page
                continue
            started = state["started"]
            done = {"done_once": True, "complete": True, "stamp": started, "id": None,
                    "deleted_since": state["deleted_since"], "held": state["held"]}
            page.link = orjson.dumps(done).decode()
            page.complete = True
            _note(page, f"{obj.api_name}: read by a Bulk API 2.0 job ({state['bulk']})")
            yield page
            return

    def _hard_deletions(self, obj: sfm.SalesforceObject, state: dict[str, Any],
                        page: ChangesPage, now: datetime) -> None:
        """getDeleted since the last read; a gap older than its window: reconcile by ids."""
        since = _parse(state["deleted_since"])
        if now - since >= DELETED_WINDOW:
            page.reconcile = True
            _note(page, f"{obj.api_name}: the last read was {(now - since).days} days ago, "
                  "beyond getDeleted's window: deletions are found by comparing all ids")
            state["deleted_since"] = (now - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ")
            return
        body = self.call(lambda sf: sf.restful(
            f"sobjects/{obj.api_name}/deleted/",
            params={"start": since.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    "end": now.strftime("%Y-%m-%dT%H:%M:%S+00:00")}, timeout=TIMEOUT_S))
        answer = sfm.deleted_ids(body or {})
        if answer.earliest_date_available and since < _parse(answer.earliest_date_available):
            page.reconcile = True
            _note(page, f"{obj.api_name}: deletions before {answer.earliest_date_available} "
                  "are gone from getDeleted: they are found by comparing all ids")
        for key in answer.ids:
            guid = server_key_id(obj.entity.logicalname, key)
            if guid not in page.deleted:
                page.deleted.append(guid)
                page.keys[guid] = key
        # The next window starts where this one ends (its end is the server's word).
        state["deleted_since"] = answer.latest_date_covered

    def count(self, entity: Entity) -> int | None:
        """SELECT COUNT() of the object."""
        obj = self.salesforce_object(entity)
        body = self.call(lambda sf: sf.query(f"SELECT COUNT() FROM {obj.api_name}",
                                             timeout=TIMEOUT_S))
        return int(body.get("totalSize") or 0)

    def read_ids(self, entity: Entity, filter: "Filter | None" = None) -> Iterator[list[str]]:
        """Pages of every record's Salesforce id (for deletion reconciliation)."""
        obj = self.salesforce_object(entity)
        for body in self.query(f"SELECT Id FROM {obj.api_name} WHERE IsDeleted = false "
                               "ORDER BY Id"):
            yield [sfm.salesforce_id(r["Id"]) for r in body.get("records") or []]

    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        """One record by its Salesforce id, with its SystemModstamp; None if it has none."""
        found = self.get_record_references(entity, record_id)
        return None if found is None else found[:2]

    def get_record_references(self, entity: Entity, record_id: str
                              ) -> tuple[dict[str, Any], str, dict[str, tuple[str, str]]] | None:
        """One record with its SystemModstamp and its lookups' targets (derived GUID -> key)."""
        obj = self.salesforce_object(entity)
        found = self._read(obj, [record_id], full=True)
        if record_id not in found:
            return None
        page = ChangesPage([], {}, [], None, True)
        self._rows(obj, {"done": True, "records": [found[record_id]]}, page, entity)
        if not page.upserts:
            return None
        return page.upserts[0], page.versions[page.upserts[0]["id"]], page.references

    def _read(self, obj: sfm.SalesforceObject, keys: list[str], *, full: bool = False,
              by: str = "Id", also: Collection[str] = ()) -> dict[str, dict[str, Any]]:
        """Rows of these records (not deleted), by Id (or another field's values).

        Without `full`, a row has the Id, the stamps, `by` and the fields `also` names.
        """
        fields = ", ".join(self._select(obj)) if full else ", ".join(
            dict.fromkeys(["Id", *STAMP_FIELDS[:3], *([by] if by != "Id" else []), *also]))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), IN_LIST_SIZE):
            chunk = ", ".join(_quoted(k) for k in keys[start:start + IN_LIST_SIZE])
            soql = (f"SELECT {fields} FROM {obj.api_name} WHERE IsDeleted = false AND {by} IN "
                    f"({chunk})")
            for body in self.query(soql):
                for row in body.get("records") or []:
                    value = row.get(by) if by != "Id" else sfm.salesforce_id(row["Id"])
                    found[str(value)] = row
        return found

    # --- writing -----------------------------------------------------------

    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        """sObject Collections requests of consecutive writes alike; one result per write."""
        results: list[WriteResult | None] = [None] * len(writes)
        created: dict[str, str] = {}  # client GUID -> key, of creates in this batch
        start = 0
        while start < len(writes):
            end = start + 1
            kind = self._kind(writes[start])
            while (end < len(writes) and end - start < COLLECTION_SIZE
                   and self._kind(writes[end]) == kind
                   and not _refers_to(writes[end], writes[start:end])):
                end += 1
            chunk = list(range(start, end))
            for n, result in self._send(kind, [writes[i] for i in chunk], created).items():
                results[chunk[n]] = result
            start = end
        return [r or WriteResult("error", message="not sent") for r in results]

    def _kind(self, write: Write) -> tuple[str, str]:
        obj = self.salesforce_object(write.entity)
        if write.operation == "delete":
            return ("delete", obj.api_name)
        if write.server_key is None:
            return ("create", obj.api_name)
        return ("update", obj.api_name)

    def _send(self, kind: tuple[str, str], writes: list[Write],
              created: dict[str, str]) -> dict[int, WriteResult]:
        """One collections request (after the version checks); results by position."""
        operation = kind[0]
        obj = self.salesforce_object(writes[0].entity)
        results: dict[int, WriteResult] = {}
        keys: dict[int, str] = {}
        if operation in ("update", "delete"):
            keys = {n: str(w.server_key) for n, w in enumerate(writes)}
            expected = {n: w.if_match for n, w in enumerate(writes) if w.if_match}
            if expected:
                rows = self._read(obj, [keys[n] for n in expected])
                for n, version in expected.items():
                    row = rows.get(keys[n])
                    if row is None:
                        results[n] = WriteResult("missing", message="not in Salesforce")
                    elif datetime_text(row["SystemModstamp"]) != version:
                        results[n] = WriteResult("conflict", message="changed in Salesforce")
        elif operation == "create":
            results.update(self._found_creates(obj, writes, keys))
        bodies: dict[int, dict[str, Any]] = {}
        unseen = self._unseen(obj, writes, keys, results) if operation == "update" else {}
        for n, write in enumerate(writes):
            if n in results or operation == "delete":
                continue
            try:
                bodies[n] = self._body(obj, write, keys.get(n), created, unseen.get(n, set()))
            except InvalidInput as exc:
                results[n] = WriteResult("error", message=exc.message)
        send = [n for n in range(len(writes)) if n not in results]
        if send:
            answers = self._collections(obj, operation, send, keys, bodies)
            for n, (answer, key) in zip(send, answers, strict=True):
                if answer.status == "ok":
                    keys[n] = key or keys.get(n) or ""
                results[n] = answer
        self._versions(obj, writes, results, keys, created)
        return results

    def _found_creates(self, obj: sfm.SalesforceObject, writes: list[Write],
                       keys: dict[int, str]) -> dict[int, WriteResult]:
        """Creates whose record Salesforce has already (a lost answer), by the client-id field.

        Only where the field is not an External ID: an upsert on one finds the record itself.
        """
        if self.id_field not in obj.fields or self.id_field in obj.external_ids:
            return {}
        rows = self._read(obj, [w.record_id for w in writes], by=obj.fields[self.id_field])
        found = {}
        for n, write in enumerate(writes):
            row = rows.get(write.record_id)
            if row is not None:
                keys[n] = sfm.salesforce_id(row["Id"])
                found[n] = WriteResult("ok")
        return found

    def _unseen(self, obj: sfm.SalesforceObject, writes: list[Write], keys: dict[int, str],
                results: dict[int, WriteResult]) -> dict[int, set[str]]:
        """Empty lookups and picklists of updates that stand for a value the client cannot show.

        A lookup to an object that does not sync, or a picklist value the client has
        no option for yet, reaches the client empty; an update that sends the whole
        record (a client-wins resend) must not empty it in Salesforce. By position:
        the attribute names to leave out.
        """
        empty = {n: [name for name, value in w.values.items() if value is None
                     and (name in obj.picklists or _is_lookup(obj.entity, name))]
                 for n, w in enumerate(writes) if n not in results}
        empty = {n: names for n, names in empty.items() if names}
        if not empty:
            return {}
        rows = self._read(obj, [keys[n] for n in empty], full=True)
        unseen: dict[int, set[str]] = {}
        for n, names in empty.items():
            row = rows.get(keys[n]) or {}
            for name in names:
                value = row.get(obj.fields[name])
                if value is None:
                    continue
                if name in obj.picklists:
                    client = writes[n].entity.attribute(name)
                    shown = client is None or client.type != "picklist" or (
                        obj.option_number(name, value) in {o.value for o in client.options})
                else:
                    attr = obj.entity.attribute(name)
                    shown = attr is not None and self._prefixes.get(value[:3]) in attr.targets
                if not shown:
                    unseen.setdefault(n, set()).add(name)
        return unseen

    def _body(self, obj: sfm.SalesforceObject, write: Write, key: str | None,
              created: dict[str, str], unseen: Collection[str] = ()) -> dict[str, Any]:
        # Salesforce's own fields (neither createable nor updateable: Id, IsDeleted, the
        # stamps) come back in a client-wins resend of the whole record: not ours to write.
        system = {a.logicalname for a in obj.entity.attributes if a.issystem}
        values = {k: v for k, v in write.values.items()
                  if k not in system and k not in unseen
                  and k not in ("createdon", "modifiedon", "versionnumber")}
        for attr in obj.entity.attributes:
            if attr.type == "lookup" and values.get(attr.logicalname) is not None:
                values[attr.logicalname] = _reference_key(attr, values[attr.logicalname],
                                                          write, created)
        if key is None and self.id_field in obj.fields:
            values[self.id_field] = write.record_id  # the client GUID: exactly-once creates
        return sfm.record_body(obj, values, key=key)

    def _collections(self, obj: sfm.SalesforceObject, operation: str, send: list[int],
                     keys: dict[int, str],
                     bodies: dict[int, dict[str, Any]]) -> list[tuple[WriteResult, str | None]]:
        if operation == "delete":
            ids = ",".join(keys[n] for n in send)
            answer = self.call(lambda sf: sf.restful(
                "composite/sobjects", method="DELETE",
                params={"ids": ids, "allOrNone": "false"}, timeout=TIMEOUT_S))
        else:
            records = [bodies[n] for n in send]
            payload = {"allOrNone": False, "records": records}
            if operation == "create" and self.id_field in obj.external_ids:
                # Upsert on the External ID holding the client GUID: a repeat finds the record.
                path = f"composite/sobjects/{obj.api_name}/{obj.fields[self.id_field]}"
                method = "PATCH"
            else:
                path, method = "composite/sobjects", "POST" if operation == "create" else "PATCH"
            answer = self.call(lambda sf: sf.restful(path, method=method,
                                                     data=orjson.dumps(payload).decode(),
                                                     timeout=TIMEOUT_S))
        return sfm.collection_results(answer, len(send))

    def _versions(self, obj: sfm.SalesforceObject, writes: list[Write],
                  results: dict[int, WriteResult], keys: dict[int, str],
                  created: dict[str, str]) -> None:
        """The new SystemModstamp (and times) of written records: their versions.

        A record holding a picklist value the client has no option for stays known
        by no version (""), as its download left it: its re-read, once the option
        is there, must not be skipped as a version already held.
        """
        done = {n: keys[n] for n, r in results.items()
                if r.status == "ok" and writes[n].operation != "delete" and keys.get(n)}
        picklists = [obj.fields[name] for name in obj.picklists]
        rows = self._read(obj, list(done.values()), also=picklists) if done else {}
        for n, key in done.items():
            row = rows.get(key) or {}
            stamp = row.get("SystemModstamp")
            result = results[n]
            values = {name: obj.option_number(name, row[obj.fields[name]])
                      for name in obj.picklists if row.get(obj.fields[name]) is not None}
            held = bool(self._options_unknown(obj, writes[n].entity, values))
            result.version = datetime_text(stamp) if stamp and not held else ""
            result.record = {"createdon": _time(row.get("CreatedDate")),
                             "modifiedon": _time(row.get("LastModifiedDate"))}
            if writes[n].server_key is None:
                result.server_key = key
                created[writes[n].record_id] = key

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()


def _note(page: ChangesPage, text: str) -> None:
    """Add a line to what the page's log line says (a page may have several things to say)."""
    page.note = f"{page.note}; {text}" if page.note else text


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(datetime_text(stamp).replace("Z", "+00:00"))


def _time(value: Any) -> str | None:
    return datetime_text(value) if isinstance(value, str) else None


def _is_lookup(entity: Entity, name: str) -> bool:
    attr = entity.attribute(name)
    return attr is not None and attr.type == "lookup"


def _refers_to(write: Write, earlier: list[Write]) -> bool:
    """A write whose lookups name a record created by an earlier write of the same request."""
    creates = {w.record_id for w in earlier if w.server_key is None}
    return bool(creates) and any(v in creates for v in write.values.values())


def _reference_key(attr: Attribute, value: Any, write: Write, created: dict[str, str]) -> str:
    """The Salesforce id of a lookup's target (a client GUID); InvalidInput if it has none yet."""
    key = write.references.get(value) or created.get(value)
    if key is None:
        raise InvalidInput(f"{attr.logicalname}: the record {value} it points to is not in "
                           "Salesforce (yet)", field=attr.logicalname)
    return key

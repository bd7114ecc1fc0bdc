"""An OData v4 client for the sync engine, with dialects for the servers that speak it.

One `requests.Session` per backend (per sync run): pooled connections,
timeouts, and urllib3's `Retry` on the session's adapter, which backs off and
honours `429`/`503` `Retry-After`, as Dataverse's service protection limits
ask. Writes go in JSON `$batch` requests of independent PATCH upserts and
DELETEs; retrying them is safe because an upsert of a record's own GUID never
makes a second record, and a conditional write whose first answer was lost
comes back as 412, which the sync engine recognises as its own write. So
every method is retried, POST and PATCH included.
"""

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from portal import multipart
from portal.backends.base import Backend, ChangesPage, Write, WriteResult
from portal.backends.dataverse_metadata import entities_from_entity_definitions
from portal.backends.prefetch import prefetched
from portal.backends.server_urls import check_server_url, guard_session
from portal.errors import BackendError, CredentialsRefused, MalformedMultipart, ServerLimited
from portal.orgs.metadata import Entity

if TYPE_CHECKING:
    from portal.sync.filters import Filter

TIMEOUT_S = (10, 120)  # connect, read
RETRIES = 5
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 120  # a longer Retry-After is waited this long, then the request is tried
BACKOFF_S, BACKOFF_MAX_S = 0.5, 30  # without Retry-After: 0.5 s, doubling, at most 30 s
# Our writes are idempotent by design (module docstring): every method may be retried.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PATCH", "PUT", "DELETE"})


class ServerRetry(Retry):
    """urllib3's Retry as the portal's servers need it (Retry-After only on 429 and 503)."""

    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def parse_retry_after(self, retry_after: str) -> float:
        """Seconds to wait; an unreadable Retry-After waits as if there were none."""
        try:
            return super().parse_retry_after(retry_after)
        except InvalidHeader:
            return 0  # urllib3 then backs off as usual

    def get_backoff_time(self) -> float:
        """0.5 s before the first retry, doubling, at most 30 s (urllib3 waits 0 s first)."""
        errors = len(self.history)
        return 0.0 if errors == 0 else min(BACKOFF_S * 2 ** (errors - 1), BACKOFF_MAX_S)


def server_retry(retries: int, max_retry_after: float = MAX_RETRY_AFTER_S) -> ServerRetry:
    """Retries on connection errors, timeouts and busy answers (429, 502, 503, 504)."""
    # raise_on_status=False: when the retries are spent, the last busy answer
    # is returned, so the caller reports the server's own message.
    return ServerRetry(total=retries, allowed_methods=RETRY_METHODS,
                       status_forcelist=RETRY_STATUSES, raise_on_status=False,
                       retry_after_max=int(max_retry_after))
BATCH_LIMIT = 1000  # requests per $batch (Dataverse's limit)


def write_headers(write: Write) -> dict[str, str]:
    """The headers of one write in a batch: its ETag condition, or create-only."""
    # return=representation: the server's timestamps come back with the answer.
    headers = {"Content-Type": "application/json", "Prefer": "return=representation"}
    if write.if_match:
        headers["If-Match"] = write.if_match
    elif write.create_only:
        headers["If-None-Match"] = "*"
    return headers


class ODataBackend(Backend):
    """A server that speaks OData v4 with Dataverse's conventions (our own Org API is one)."""

    kind = "odata"
    supports_delta = True
    supports_batch = True
    supports_etags = True

    def __init__(self, url: str, username: str, password: str, *,
                 allow_private: bool = False, session: requests.Session | None = None,
                 retries: int = RETRIES, track_changes: bool = True,
                 max_retry_after: float = MAX_RETRY_AFTER_S) -> None:
        # A URL on a private host, or a redirect to one, is refused unless the
        # operator allows them (ALLOW_PRIVATE_SERVERS): see server_urls.
        check_server_url(url, allow_private=allow_private)
        self.root = url if url.endswith("/") else url + "/"
        # Without change tracking every run reads the whole entity set, and the
        # engine finds deletions by comparing ids (Backend.read_ids).
        self.supports_delta = track_changes
        self.session = guard_session(session or requests.Session(), allow_private=allow_private)
        self.session.auth = (username, password)
        # A connection for each stream's reader, and spare ones for the writer's reads.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(4, self.max_streams + 2),
                              max_retries=server_retry(retries, max_retry_after))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({
            "Accept": "application/json",
            "OData-Version": "4.0",
            "OData-MaxVersion": "4.0",
        })

    # --- transport ---------------------------------------------------------

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request, retried by the session's adapter; 401 is CredentialsRefused."""
        url = urljoin(self.root, url)
        try:
            response = self.session.request(method, url, timeout=TIMEOUT_S, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BackendError(f"the server at {self.root} cannot be reached: "
                               f"{exc.__class__.__name__}") from None
        if response.status_code == 429:  # the retries spent the server's budget
            raise ServerLimited(f"stopped by the server's limit: {method} {url} answered "
                                f"429 {error_message(response)}"
                                + (f" (Retry-After {response.headers['Retry-After']} s)"
                                   if response.headers.get("Retry-After") else ""))
        if response.status_code == 401:
            raise CredentialsRefused(
                f"the server refused the user name or password ({error_message(response)})")
        return response

    def get_json(self, url: str, headers: dict[str, str] | None = None) -> Any:
        """GET a JSON document; BackendError with the server's message on any error."""
        response = self.request("GET", url, headers=headers)
        if response.status_code != 200:
            raise BackendError(f"GET {url} answered {response.status_code}: "
                               f"{error_message(response)}")
        return orjson.loads(response.content)

    # --- the interface -----------------------------------------------------

    def check_credentials(self) -> str:
        """Read the service document: it needs valid credentials."""
        document = self.get_json("")
        if not isinstance(document, dict) or "value" not in document:
            raise BackendError(f"{self.root} is not an OData v4 service document")
        return str(self.session.auth[0])  # type: ignore[index]

    def read_metadata(self) -> list[Entity]:
        """Entities from Dataverse-style EntityDefinitions with their attributes."""
        return entities_from_entity_definitions(
            self.get_json("EntityDefinitions?$expand=Attributes"))

    def read_changes(self, entity: Entity, link: str | None, *, page_size: int = 1000,
                     filter: "Filter | None" = None) -> Generator[ChangesPage, None, None]:
        """Follow next links then the delta link, as Dataverse change tracking works.

        The next page is read while the caller writes this one (`prefetched`).
        """
        tracking = "odata.track-changes," if self.supports_delta else ""
        headers = {"Prefer": f"{tracking}odata.maxpagesize={page_size}"}

        def pages() -> Iterator[ChangesPage]:
            url = link or entity.entitysetname
            while True:
                page = self.changes_page(entity, self.get_json(url, headers))
                yield page
                if page.complete or page.link is None:
                    return
                url = page.link

        return prefetched(pages())

    def changes_page(self, entity: Entity, payload: dict[str, Any]) -> ChangesPage:
        """Split one answer into upserts, versions and deletions."""
        upserts, versions, deleted = [], {}, []
        pk = entity.primaryidattribute
        for item in payload.get("value", []):
            if "@removed" in item or "$deletedEntity" in str(item.get("@odata.context", "")):
                deleted.append(_tombstone_id(item, pk))
                continue
            etag = item.pop("@odata.etag", None)
            record = self.record_from_server(entity, item)
            upserts.append(record)
            if etag:
                versions[record[pk]] = etag
        delta = payload.get("@odata.deltaLink")
        if delta:
            return ChangesPage(upserts, versions, deleted, delta, True)
        more = payload.get("@odata.nextLink")
        # Untracked, the last page completes the read and the next run starts over.
        return ChangesPage(upserts, versions, deleted, more, more is None)

    def count(self, entity: Entity) -> int | None:
        """The entity's record count from `$count=true` on an empty page."""
        payload = self.get_json(f"{entity.entitysetname}?$count=true&$top=0")
        count = payload.get("@odata.count")
        return int(count) if isinstance(count, int) else None

    def read_ids(self, entity: Entity, filter: "Filter | None" = None) -> Iterator[list[str]]:
        """Every id of the entity (of those matching `filter`, if the dialect sends it)."""
        pk = entity.primaryidattribute
        expressed = self.server_filter(entity, filter)
        url: str | None = f"{entity.entitysetname}?$select={pk}" + (
            f"&$filter={expressed}" if expressed else "")
        while url:
            payload = self.get_json(url, {"Prefer": "odata.maxpagesize=5000"})
            yield [str(item[pk]).lower() for item in payload.get("value", [])]
            url = payload.get("@odata.nextLink")

    def get_record(self, entity: Entity, record_id: str) -> tuple[dict[str, Any], str] | None:
        """One record by id with its ETag, or None on 404."""
        return self.read_record(entity, record_id, f"{entity.entitysetname}({record_id})")

    def read_record(self, entity: Entity, record_id: str,
                    path: str) -> tuple[dict[str, Any], str] | None:
        """The record at `path` (relative to the root) with its ETag, or None on 404."""
        item = self.read_item(entity, record_id, path)
        if item is None:
            return None
        etag = str(item.pop("@odata.etag", "") or "")
        return self.record_from_server(entity, item), etag

    def read_item(self, entity: Entity, record_id: str, path: str) -> dict[str, Any] | None:
        """The server's JSON record at `path` as it sent it, or None on 404."""
        response = self.request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise BackendError(f"reading {entity.logicalname} {record_id} answered "
                               f"{response.status_code}: {error_message(response)}")
        item = orjson.loads(response.content)
        return item if isinstance(item, dict) else {}

    def apply_writes(self, writes: list[Write]) -> list[WriteResult]:
        """Send writes as independent requests of JSON $batch calls, in order."""
        results: list[WriteResult] = []
        for start in range(0, len(writes), BATCH_LIMIT):
            results.extend(self._batch(writes[start:start + BATCH_LIMIT]))
        return results

    def _batch(self, writes: list[Write]) -> list[WriteResult]:
        requests_ = []
        for n, write in enumerate(writes):
            url = f"{write.entity.entitysetname}({write.record_id})"
            headers = write_headers(write)
            if write.operation == "delete":
                requests_.append({"id": str(n), "method": "DELETE", "url": url,
                                  "headers": headers})
            else:
                requests_.append({"id": str(n), "method": "PATCH", "url": url, "headers": headers,
                                  "body": self.record_to_server(write.entity, write.values)})
        # Without continue-on-error an OData service stops at the first failed
        # request; each of our writes stands alone, so the others must still run.
        response = self.request("POST", "$batch", data=orjson.dumps({"requests": requests_}),
                                headers={"Content-Type": "application/json",
                                         "Prefer": "odata.continue-on-error"})
        if response.status_code != 200:
            raise BackendError(f"$batch answered {response.status_code}: {error_message(response)}")
        answers = {str(a.get("id")): a for a in orjson.loads(response.content)["responses"]}
        return [_write_result(answers.get(str(n))) for n in range(len(writes))]

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    # --- dialect -------------------------------------------------------------

    def record_from_server(self, entity: Entity, item: dict[str, Any]) -> dict[str, Any]:
        """The server's JSON record in our form: annotations dropped, GUIDs lower-case."""
        # Most records carry no annotation once their ETag is taken: one test for all keys.
        record = item if "@" not in "".join(item) else {
            k: v for k, v in item.items() if "@" not in k}
        pk = entity.primaryidattribute
        if isinstance(record.get(pk), str):
            record[pk] = record[pk].lower()
        return record

    def record_to_server(self, entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
        """Our record in the server's JSON form."""
        return values

    def server_filter(self, entity: Entity, filter: "Filter | None") -> str | None:
        """A sync filter as this dialect's `$filter` (URL-quoted), or None: not sent."""
        return None  # the Org API's reads: the engine filters (change tracking refuses $filter)


def error_message(response: requests.Response) -> str:
    """The server's error message (OData error body), else the start of its answer."""
    try:
        error = orjson.loads(response.content).get("error", {})
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return response.text[:200] or response.reason or str(response.status_code)


def batch_answers(response: requests.Response,
                  count: int) -> list[multipart.ResponsePart | None]:
    """A multipart `$batch` answer's part for each request (Content-ID "1".."count"), or None.

    An answer without a Content-ID stands for the request in its place.
    """
    try:
        answers = multipart.parse_batch_response(response.content,
                                                 response.headers.get("Content-Type"))
    except MalformedMultipart as exc:
        raise BackendError(f"the server's $batch answer cannot be read: {exc.message}") \
            from None
    by_id = {a.content_id: a for a in answers if a.content_id}
    return [by_id.get(str(n + 1)) or (answers[n] if n < len(answers) and
                                      not answers[n].content_id else None)
            for n in range(count)]


def _tombstone_id(item: dict[str, Any], pk: str) -> str:
    """A deleted record's id: a GUID (Dataverse), or the URL of the entity (OData 4.01)."""
    value = str(item.get("id") or item.get(pk) or item.get("@id") or "")
    if value.endswith(")") and "(" in value:
        value = value[value.rindex("(") + 1:-1]
    return value.strip("'").lower()


def _write_result(answer: dict[str, Any] | None) -> WriteResult:
    if answer is None:
        return WriteResult("error", message="the server gave no answer to this write")
    status = int(answer.get("status", 500))
    headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
    body = answer.get("body")
    message = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message"))
    version = headers.get("etag") or (body.get("@odata.etag") if isinstance(body, dict) else None)
    if status < 300:
        record = {k: v for k, v in body.items() if "@" not in k} if isinstance(body, dict) \
            else None
        return WriteResult("ok", version=version, record=record)
    if status == 412:
        return WriteResult("conflict", message=message or "the record changed on the server")
    if status == 404:
        return WriteResult("missing", message=message or "the record does not exist")
    return WriteResult("error", message=f"{status}: {message or 'error'}")


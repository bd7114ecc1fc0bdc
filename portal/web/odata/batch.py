"""$batch in both formats: JSON (OData 4.01) and multipart/mixed (OData 4.0, as Dataverse).

Both formats are read into the same BatchItems and run by one loop: each
request runs through the same dispatch as a top-level one, in order. The
writes of an atomicity group (JSON) or change set (multipart) run inside one
`immediate()` transaction (the data layer's own transactions nest in it as
savepoints); when one of them fails, the group is rolled back. JSON answers
every request of the group with that failure; multipart answers the change
set with the one failed response, as OData 4.0 and Dataverse do. Without
`Prefer: odata.continue-on-error` processing stops at the first failure; with
it, requests that depend on a failed one get 424 (JSON `dependsOn`).
`$<id>` names the entity an earlier request created, in a URL or an
`@odata.bind` value (Content-ID references).
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from werkzeug.datastructures import Headers, MultiDict

from portal import multipart
from portal.db import immediate
from portal.web.odata.bodies import read_json
from portal.web.odata.messages import (
    ODATA_VERSION,
    ApiRequest,
    ApiResponse,
    ErrorKind,
    ProtocolError,
    bad_request,
    json_response,
    kind_error_response,
    portal_error_response,
)
from portal.web.odata.prefer import parse_prefer

# Dataverse accepts at most 1,000 requests in one batch, change sets included.
MAX_REQUESTS = multipart.MAX_REQUESTS
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
REFERENCE_RE = re.compile(r"^\$([^/?]+)(.*)$")

Dispatch = Callable[[ApiRequest], ApiResponse]


@dataclass
class BatchItem:
    """One request of a batch, as the client sent it."""

    id: str
    method: str
    url: str
    headers: dict[str, str]
    body: Any
    group: str | None
    depends_on: list[str] = field(default_factory=list)
    content_id: str | None = None  # multipart: the part's Content-ID, if it has one


class GroupFailed(Exception):
    """Raised inside an atomicity group's transaction to roll it back."""

    def __init__(self, member: int, response: ApiResponse) -> None:
        super().__init__("atomicity group failed")
        self.member = member
        self.response = response


@dataclass
class Outcome:
    """The answers of one request, or of one atomicity group / change set, in order."""

    items: list[BatchItem]
    responses: list[ApiResponse]
    failed_member: int | None = None  # a rolled-back group: the index of the request that failed


def parse_items(data: Any) -> list[BatchItem]:
    """The requests of a JSON batch body, checked before any of them runs."""
    if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
        raise bad_request('a JSON batch is an object with a "requests" array')
    raw = data["requests"]
    if len(raw) > MAX_REQUESTS:
        raise bad_request(f"a batch may hold at most {MAX_REQUESTS} requests, not {len(raw)}")
    items: list[BatchItem] = []
    seen: set[str] = set()
    groups_done: set[str] = set()
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise bad_request(f"batch request {n} is not an object")
        item_id = str(entry.get("id", ""))
        method = str(entry.get("method", "")).upper()
        url = entry.get("url")
        if not item_id or item_id in seen:
            raise bad_request(f"batch request {n} needs an id unique in the batch")
        if method not in ("GET", *WRITE_METHODS) or not isinstance(url, str) or not url:
            raise bad_request(f"batch request {item_id} needs a method and a url")
        headers = entry.get("headers") or {}
        if not isinstance(headers, dict):
            raise bad_request(f"batch request {item_id}: headers must be an object")
        group = entry.get("atomicityGroup")
        group = str(group) if group is not None else None
        depends = entry.get("dependsOn") or []
        if isinstance(depends, str) or not isinstance(depends, list):
            raise bad_request(f"batch request {item_id}: dependsOn must be an array of ids")
        for ref in depends:
            if str(ref) not in seen and str(ref) not in groups_done | {g.group for g in items
                                                                       if g.group}:
                raise bad_request(f"batch request {item_id} depends on {ref!r}, which is not "
                                  "a preceding request or atomicity group")
        if group is not None:
            if group in groups_done or group in seen:
                raise bad_request(f"the requests of atomicity group {group!r} must be adjacent")
            if method not in WRITE_METHODS:
                raise bad_request(f"batch request {item_id}: an atomicity group holds only "
                                  "POST, PATCH, PUT and DELETE requests")
        if items and items[-1].group is not None and items[-1].group != group:
            groups_done.add(items[-1].group)
        seen.add(item_id)
        items.append(BatchItem(item_id, method, url, {str(k): str(v) for k, v in headers.items()},
                               entry.get("body"), group, [str(d) for d in depends]))
    return items


def parse_multipart_items(req: ApiRequest) -> list[BatchItem]:
    """The requests of a multipart/mixed batch body, as BatchItems."""
    parts = multipart.parse_batch_request(req.body, req.headers.get("Content-Type"),
                                          max_requests=MAX_REQUESTS)
    # A part without a Content-ID still needs an id; NUL cannot be in a header, so these
    # never meet a client's.
    return [BatchItem(part.content_id if part.content_id is not None else f"\0{n}",
                      part.method, part.url, part.headers, part.body, part.changeset,
                      content_id=part.content_id)
            for n, part in enumerate(parts)]


def _name(item: BatchItem) -> str:
    """How an error names a batch request: its id, Content-ID, or place in a multipart body."""
    if item.id.startswith("\0"):
        return f"part {int(item.id[1:]) + 1}"
    return item.id


def _reference(url: str, item: BatchItem, references: dict[str, str], known: set[str]) -> str:
    """A `$<id>...` URL resolved against the entities earlier requests created."""
    match = REFERENCE_RE.match(url)
    if match is None:
        return url
    name = match.group(1)
    if name in references:
        return references[name] + match.group(2)
    if name in known or name.isdigit():
        raise bad_request(f"Content-ID Reference: '${name}' does not exist in the batch "
                          f"context (batch request {_name(item)}).")
    return url  # $metadata, $count, ...


def _bind_references(data: Any, item: BatchItem, references: dict[str, str],
                     known: set[str]) -> Any:
    """A body's `nav@odata.bind: "$1"` values resolved to the created entities' URLs."""
    if not isinstance(data, dict):
        return data
    return {k: _reference(v, item, references, known)
            if k.endswith("@odata.bind") and isinstance(v, str) else v
            for k, v in data.items()}


def sub_request(req: ApiRequest, item: BatchItem, references: dict[str, str],
                known: set[str] | None = None) -> ApiRequest:
    """The ApiRequest of one batch item; its URL is relative to the service root."""
    known = known or set()
    url = _reference(item.url, item, references, known)
    root = urlsplit(req.service_root)
    parts = urlsplit(url)
    path = parts.path
    if parts.scheme or path.startswith("/"):
        if (parts.netloc and parts.netloc != root.netloc) or not path.startswith(root.path):
            raise bad_request(f"batch request {_name(item)}: {item.url} is not "
                              "in this service")
        path = path[len(root.path):]
    if path == "$batch":
        raise bad_request(f"batch request {_name(item)}: a batch cannot "
                          "contain a batch")
    headers = Headers(item.headers)
    body = item.body
    if isinstance(body, bytes) and b"@odata.bind" in body and b'"$' in body:
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the handler answers the malformed body
        else:
            body = orjson.dumps(_bind_references(decoded, item, references, known))
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = orjson.dumps(_bind_references(body, item, references, known))
        if "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
    args = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
    # Everything else (org, user, dialect, error codes) is the batch's own.
    return replace(req, method=item.method, path=path, args=args, headers=headers, body=data)


def execute(req: ApiRequest, items: list[BatchItem], dispatch: Dispatch,
            logger: logging.Logger) -> list[Outcome]:
    """Run a batch's requests in order, each group in one transaction; the outcomes."""
    continue_on_error = parse_prefer(req.headers.getlist("Prefer")).continue_on_error
    statuses: dict[str, int] = {}
    references: dict[str, str] = {}
    known = {item.id for item in items}
    outcomes: list[Outcome] = []

    def run(item: BatchItem) -> ApiResponse:
        failed = [d for d in item.depends_on if statuses.get(d, 200) >= 400]
        if failed:
            return kind_error_response(ErrorKind.FAILED_DEPENDENCY, 424,
                                       f"request {item.id} depends on {failed[0]}, which failed",
                                       req.error_codes)
        try:
            response = dispatch(sub_request(req, item, references, known))
        except ProtocolError as error:
            response = portal_error_response(error, req.error_codes)
        except Exception:  # one broken request must not lose the answers of the others
            logger.exception("batch request %s failed", _name(item))
            response = kind_error_response(
                ErrorKind.INTERNAL, 500, "Something went wrong on our side; it has been logged.",
                req.error_codes)
        if "OData-EntityId" in response.headers:
            references[item.id] = response.headers["OData-EntityId"]
        return response

    index = 0
    while index < len(items):
        item = items[index]
        group = [item]
        if item.group is not None:
            while index + len(group) < len(items) and items[index + len(group)].group == \
                    item.group:
                group.append(items[index + len(group)])
        index += len(group)
        if item.group is None:
            response = run(item)
            statuses[item.id] = response.status
            outcomes.append(Outcome(group, [response]))
            if response.status >= 400 and not continue_on_error:
                break
            continue
        try:
            with immediate(req.org.db):
                answers = []
                for n, member in enumerate(group):
                    response = run(member)
                    if response.status >= 400:
                        raise GroupFailed(n, response)
                    answers.append(response)
            outcome = Outcome(group, answers)
        except GroupFailed as failure:
            # Rolled back: what the group created no longer exists to be referenced.
            for member in group:
                references.pop(member.id, None)
            outcome = Outcome(group, [failure.response] * len(group), failure.member)
        outcomes.append(outcome)
        for member, response in zip(group, outcome.responses, strict=True):
            statuses[member.id] = response.status
        statuses[item.group] = max(r.status for r in outcome.responses)
        if statuses[item.group] >= 400 and not continue_on_error:
            break
    return outcomes


def entry(item: BatchItem, response: ApiResponse) -> dict[str, Any]:
    """The JSON batch response object of one request."""
    out: dict[str, Any] = {"id": item.id}
    if item.group is not None:
        out["atomicityGroup"] = item.group
    out["status"] = response.status
    out["headers"] = {k.lower(): v for k, v in response.headers.items()}
    if response.body:
        out["body"] = response.json() if "json" in response.headers.get(
            "Content-Type", "") else response.body.decode()
    return out


def json_batch_response(outcomes: list[Outcome]) -> ApiResponse:
    """The JSON batch answer: one response object per request."""
    return json_response({"responses": [
        entry(item, response) for outcome in outcomes
        for item, response in zip(outcome.items, outcome.responses, strict=True)]})


def multipart_batch_response(outcomes: list[Outcome], continue_on_error: bool
                             ) -> ApiResponse:
    """The multipart answer: change sets as change set responses, a failed one as its error."""
    parts: list[multipart.ResponsePart] = []
    for outcome in outcomes:
        if outcome.failed_member is not None:
            failed = outcome.items[outcome.failed_member]
            parts.append(_part(outcome.responses[0], failed.content_id, None))
            continue
        for item, response in zip(outcome.items, outcome.responses, strict=True):
            parts.append(_part(response, item.content_id, item.group))
    body, content_type = multipart.write_batch_response(parts)
    # Dataverse answers 400 for a batch that stopped at a failure, 200 otherwise.
    stopped = not continue_on_error and any(p.status >= 400 for p in parts)
    return ApiResponse(400 if stopped else 200, body, {"Content-Type": content_type})


def _part(response: ApiResponse, content_id: str | None, group: str | None
          ) -> multipart.ResponsePart:
    headers = {"OData-Version": ODATA_VERSION, **response.headers}
    return multipart.ResponsePart(response.status, headers, response.body, content_id, group)


def run_batch(req: ApiRequest, dispatch: Dispatch, logger: logging.Logger) -> ApiResponse:
    """POST /$batch with a JSON or a multipart/mixed body."""
    mime = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if mime == multipart.MIME_TYPE:
        outcomes = execute(req, parse_multipart_items(req), dispatch, logger)
        continue_on_error = parse_prefer(req.headers.getlist("Prefer")).continue_on_error
        return multipart_batch_response(outcomes, continue_on_error)
    return json_batch_response(execute(req, parse_items(read_json(req)), dispatch, logger))

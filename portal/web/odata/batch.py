"""JSON $batch (OData 4.01): requests in order, atomicity groups all-or-nothing.

Each request runs through the same dispatch as a top-level one. The writes of
an atomicity group run inside one `immediate()` transaction (the data layer's
own transactions nest in it as savepoints); when one of them fails, the group
is rolled back and every request of the group is answered with that failure.
Without `Prefer: odata.continue-on-error` processing stops at the first
failure, as in OData; with it, requests that depend on a failed one get 424.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from werkzeug.datastructures import Headers, MultiDict

from portal.db import immediate
from portal.web.odata.bodies import read_json
from portal.web.odata.messages import (
    ApiRequest,
    ApiResponse,
    ProtocolError,
    bad_request,
    error_response,
    json_response,
)
from portal.web.odata.prefer import parse_prefer

# Dataverse accepts at most 1,000 requests in one batch.
MAX_REQUESTS = 1000
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


class GroupFailed(Exception):
    """Raised inside an atomicity group's transaction to roll it back."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__("atomicity group failed")
        self.response = response


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


def sub_request(req: ApiRequest, item: BatchItem, references: dict[str, str]) -> ApiRequest:
    """The ApiRequest of one batch item; its URL is relative to the service root."""
    url = item.url
    reference = REFERENCE_RE.match(url)
    if reference and reference.group(1) in references:
        # "$<id>" names the entity an earlier request created (OData content-ID references).
        url = references[reference.group(1)] + reference.group(2)
    root = urlsplit(req.service_root)
    parts = urlsplit(url)
    path = parts.path
    if parts.scheme or path.startswith("/"):
        if (parts.netloc and parts.netloc != root.netloc) or not path.startswith(root.path):
            raise bad_request(f"batch request {item.id}: {item.url} is not in this service")
        path = path[len(root.path):]
    if path == "$batch":
        raise bad_request(f"batch request {item.id}: a batch cannot contain a batch")
    headers = Headers(item.headers)
    body = item.body
    if body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = orjson.dumps(body)
        if "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
    args = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
    return ApiRequest(item.method, path, args, headers, data, req.service_root, req.org,
                      req.secret, req.user)


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


def run_batch(req: ApiRequest, dispatch: Dispatch, logger: logging.Logger) -> ApiResponse:
    """POST /$batch with a JSON body."""
    mime = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if mime == "multipart/mixed":
        raise ProtocolError(415, "UnsupportedMediaType",
                            "only the JSON batch format (application/json) is supported")
    items = parse_items(read_json(req))
    continue_on_error = parse_prefer(req.headers.getlist("Prefer")).continue_on_error
    statuses: dict[str, int] = {}
    references: dict[str, str] = {}
    responses: list[dict[str, Any]] = []

    def run(item: BatchItem) -> ApiResponse:
        failed = [d for d in item.depends_on if statuses.get(d, 200) >= 400]
        if failed:
            return error_response(424, "FailedDependency",
                                  f"request {item.id} depends on {failed[0]}, which failed")
        try:
            response = dispatch(sub_request(req, item, references))
        except ProtocolError as error:
            response = error_response(error.status, error.code, error.message)
        except Exception:  # one broken request must not lose the answers of the others
            logger.exception("batch request %s failed", item.id)
            response = error_response(500, "InternalServerError",
                                      "Something went wrong on our side; it has been logged.")
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
            responses.append(entry(item, response))
            if response.status >= 400 and not continue_on_error:
                break
            continue
        try:
            with immediate(req.org.db):
                answers = []
                for member in group:
                    response = run(member)
                    if response.status >= 400:
                        raise GroupFailed(response)
                    answers.append(response)
        except GroupFailed as failure:
            answers = [failure.response] * len(group)
        for member, response in zip(group, answers, strict=True):
            statuses[member.id] = response.status
            responses.append(entry(member, response))
        statuses[item.group] = max(r.status for r in answers)
        if statuses[item.group] >= 400 and not continue_on_error:
            break
    return json_response({"responses": responses})

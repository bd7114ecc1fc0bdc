"""OData multipart/mixed `$batch` framing, both directions (OData 4.0 Part 1 §11.7).

A batch body is a list of parts; each part is one HTTP request (or response)
written as `application/http`, or a change set: a nested `multipart/mixed`
whose requests succeed or fail together. This module turns such bodies into
flat lists of `RequestPart` / `ResponsePart` and back, the change set of each
part named by its `changeset` field (None outside change sets), so a caller
sees the same shape as JSON `$batch`'s atomicity groups.

Used by the Org API's `$batch` (parse requests, write responses) and by the
`dynamics` backend (write requests, parse responses). No Flask, no network.

Tolerated as real clients send it: LF as well as CRLF line ends, quoted or bare
boundaries, a `Content-ID` in the inner request's headers instead of the MIME
part's. Part bodies end where the next delimiter starts, less trailing line
breaks (the `Content-Length` of inner messages is not trusted: Microsoft's own
samples print wrong ones).
"""

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus

from portal.errors import MalformedMultipart

# Dataverse accepts at most 1,000 requests in one batch, change sets included.
MAX_REQUESTS = 1000
# A batch body larger than this is refused before it is split (the API's body limit is
# usually lower; this guards callers that have none).
MAX_BYTES = 64 * 1024 * 1024
MIME_TYPE = "multipart/mixed"
HTTP_VERSION = "HTTP/1.1"
TRANSFER_ENCODINGS = {"binary", "8bit", "7bit"}
REQUEST_LINE_RE = re.compile(r"^([A-Z]+)\s+(\S+)(?:\s+HTTP/\d\.\d)?$")
STATUS_LINE_RE = re.compile(r"^HTTP/\d\.\d\s+(\d{3})(?:\s+(.*))?$")


def _header(headers: dict[str, str], name: str, default: str | None = None) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return default


@dataclass
class RequestPart:
    """One request of a batch: its request line, headers, body and place in a change set."""

    method: str
    url: str  # as written: absolute, absolute path, relative to the service root, or "$1…"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_id: str | None = None
    changeset: str | None = None  # parts with the same value form one change set

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header of the inner request, looked up case-insensitively."""
        return _header(self.headers, name, default)


@dataclass
class ResponsePart:
    """One response of a batch: status, headers, body and place in a change set."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_id: str | None = None
    changeset: str | None = None
    reason: str = ""  # the status line's phrase; written from the status when empty

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header of the inner response, looked up case-insensitively."""
        return _header(self.headers, name, default)


def boundary_of(content_type: str | None) -> str:
    """The boundary parameter of a multipart/mixed Content-Type; MalformedMultipart if none."""
    message = Message()
    message["Content-Type"] = content_type or ""
    if message.get_content_type() != MIME_TYPE:
        raise MalformedMultipart(f"a multipart batch needs Content-Type {MIME_TYPE}, "
                                 f"not {content_type!r}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 70:
        raise MalformedMultipart("the multipart/mixed Content-Type has no valid boundary")
    return boundary


def content_type(boundary: str) -> str:
    """The Content-Type header of a multipart/mixed body with this boundary."""
    return f"{MIME_TYPE}; boundary={boundary}"


def new_boundary(kind: str) -> str:
    """A fresh boundary such as batch_<uuid> or changesetresponse_<uuid>."""
    return f"{kind}_{uuid.uuid4()}"


# ---------------------------------------------------------------- reading


def _split(body: bytes, boundary: str) -> list[bytes]:
    """The encapsulated parts between the delimiters; MalformedMultipart if unframed."""
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) +
                           rb"(--)?[ \t]*(?=\r?\n|$)")
    matches = list(delimiter.finditer(body))
    if not matches:
        raise MalformedMultipart(f"the body holds no part delimited by --{boundary}")
    if matches[-1].group(1) is None:
        raise MalformedMultipart(f"the body does not end with the closing --{boundary}--")
    if any(m.group(1) for m in matches[:-1]):
        raise MalformedMultipart(f"parts follow the closing --{boundary}--")
    parts = []
    for start, end in zip(matches, matches[1:], strict=False):
        chunk = body[start.end():end.start()]
        # The line break after the delimiter line belongs to the delimiter.
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        parts.append(chunk)
    return parts


def _head_and_body(data: bytes, what: str) -> tuple[list[str], bytes]:
    """Header lines and the rest, split at the first empty line."""
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        # Headers only, no blank line (a GET part ends right after its headers).
        head, rest = data, b""
    else:
        head, rest = data[:match.start()], data[match.end():]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMultipart(f"{what}: headers are not UTF-8 text") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    return lines, rest


def _headers(lines: Iterable[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise MalformedMultipart(f"{what}: {line[:80]!r} is not a header line")
        out[name] = value.strip()
    return out


def _trim(body: bytes) -> bytes:
    # The line breaks before the next delimiter are framing, not content.
    return body.rstrip(b"\r\n")


@dataclass
class _Raw:
    start_line: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None
    changeset: str | None


def _read(body: bytes, content_type_header: str | None, what: str, *, max_parts: int,
          max_bytes: int) -> Iterator[_Raw]:
    """Every HTTP message of a batch body, change sets flattened, in order."""
    if len(body) > max_bytes:
        raise MalformedMultipart(f"the batch body is larger than {max_bytes} bytes")
    count = 0
    seen_ids: set[str] = set()
    changesets = 0
    for n, chunk in enumerate(_split(body, boundary_of(content_type_header)), 1):
        lines, content = _head_and_body(chunk, f"part {n}")
        mime = _headers(lines, f"part {n}")
        part_type = (_header(mime, "Content-Type") or "").split(";")[0].strip().lower()
        if part_type == MIME_TYPE:
            changesets += 1
            name = f"changeset{changesets}"
            inner_type = _header(mime, "Content-Type")
            inner = list(enumerate(_split(content, boundary_of(inner_type)), 1))
            if not inner:
                raise MalformedMultipart(f"part {n}: the change set is empty")
            for m, sub in inner:
                sub_lines, sub_content = _head_and_body(sub, f"part {n}.{m}")
                sub_mime = _headers(sub_lines, f"part {n}.{m}")
                sub_type = (_header(sub_mime, "Content-Type") or "").split(";")[0].strip()
                if sub_type.lower() != "application/http":
                    raise MalformedMultipart(
                        f"part {n}.{m}: a change set holds only application/http parts"
                        + (" (change sets cannot be nested)" if sub_type == MIME_TYPE else ""))
                count += 1
                if count > max_parts:
                    raise MalformedMultipart(f"a batch may hold at most {max_parts} requests")
                yield _message(sub_mime, sub_content, f"part {n}.{m}", name, seen_ids)
        elif part_type == "application/http":
            count += 1
            if count > max_parts:
                raise MalformedMultipart(f"a batch may hold at most {max_parts} requests")
            yield _message(mime, content, f"part {n}", None, seen_ids)
        else:
            raise MalformedMultipart(f"part {n}: Content-Type must be application/http or "
                                     f"multipart/mixed, not {part_type or 'missing'!r}")


def _message(mime: dict[str, str], content: bytes, what: str, changeset: str | None,
             seen_ids: set[str]) -> _Raw:
    encoding = (_header(mime, "Content-Transfer-Encoding") or "binary").lower()
    if encoding not in TRANSFER_ENCODINGS:
        raise MalformedMultipart(f"{what}: Content-Transfer-Encoding {encoding!r} is not "
                                 "supported (use binary)")
    lines, body = _head_and_body(content.lstrip(b"\r\n"), what)
    if not lines or not lines[0].strip():
        raise MalformedMultipart(f"{what}: the HTTP message has no start line")
    headers = _headers(lines[1:], what)
    content_id = _header(mime, "Content-ID") or _header(headers, "Content-ID")
    if content_id is not None:
        if not content_id or content_id in seen_ids:
            raise MalformedMultipart(f"{what}: Content-ID {content_id!r} is empty or "
                                     "used twice in the batch")
        seen_ids.add(content_id)
    return _Raw(lines[0].strip(), headers, _trim(body), content_id, changeset)


def parse_batch_request(body: bytes, content_type_header: str | None, *,
                        max_requests: int = MAX_REQUESTS,
                        max_bytes: int = MAX_BYTES) -> list[RequestPart]:
    """The requests of a multipart batch request body, checked before any runs."""
    parts = []
    for raw in _read(body, content_type_header, "request", max_parts=max_requests,
                     max_bytes=max_bytes):
        match = REQUEST_LINE_RE.match(raw.start_line)
        if match is None:
            raise MalformedMultipart(f"{raw.start_line[:80]!r} is not a request line "
                                     "(METHOD URL HTTP/1.1)")
        method = match.group(1)
        if raw.changeset is not None and method == "GET":
            raise MalformedMultipart("a change set holds only POST, PATCH, PUT and DELETE "
                                     f"requests, not GET {match.group(2)}")
        parts.append(RequestPart(method, match.group(2), raw.headers, raw.body,
                                 raw.content_id, raw.changeset))
    return parts


def parse_batch_response(body: bytes, content_type_header: str | None, *,
                         max_responses: int = MAX_REQUESTS,
                         max_bytes: int = MAX_BYTES) -> list[ResponsePart]:
    """The responses of a multipart batch response body, in order."""
    parts = []
    for raw in _read(body, content_type_header, "response", max_parts=max_responses,
                     max_bytes=max_bytes):
        match = STATUS_LINE_RE.match(raw.start_line)
        if match is None:
            raise MalformedMultipart(f"{raw.start_line[:80]!r} is not a status line "
                                     "(HTTP/1.1 200 OK)")
        parts.append(ResponsePart(int(match.group(1)), raw.headers, raw.body, raw.content_id,
                                  raw.changeset, (match.group(2) or "").strip()))
    return parts


# ---------------------------------------------------------------- writing


def _groups(parts: list[RequestPart] | list[ResponsePart]
            ) -> Iterator[tuple[str | None, list[RequestPart] | list[ResponsePart]]]:
    """Consecutive parts of one change set together; parts outside change sets alone."""
    index = 0
    while index < len(parts):
        name = parts[index].changeset
        end = index + 1
        if name is not None:
            while end < len(parts) and parts[end].changeset == name:
                end += 1
        yield name, parts[index:end]
        index = end


def _http_part(start_line: str, headers: dict[str, str], body: bytes,
               content_id: str | None) -> bytes:
    mime = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        mime += f"Content-ID: {content_id}\r\n"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (mime + "\r\n" + start_line + "\r\n" + head + "\r\n").encode() + body + b"\r\n"


def _write(messages: list[tuple[str | None, list[bytes]]], boundary: str, kind: str) -> bytes:
    out = bytearray()
    for changeset, encoded in messages:
        out += f"--{boundary}\r\n".encode()
        if changeset is None:
            out += encoded[0]
            continue
        inner = new_boundary(kind)
        out += f"Content-Type: {content_type(inner)}\r\n\r\n".encode()
        for one in encoded:
            out += f"--{inner}\r\n".encode() + one
        out += f"--{inner}--\r\n".encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def write_batch_request(parts: list[RequestPart], boundary: str | None = None
                        ) -> tuple[bytes, str]:
    """A multipart batch request body and its Content-Type; change sets as the parts say."""
    boundary = boundary or new_boundary("batch")
    messages: list[tuple[str | None, list[bytes]]] = []
    for name, group in _groups(parts):
        encoded = []
        for part in group:
            assert isinstance(part, RequestPart)
            if name is not None and part.method == "GET":
                raise ValueError("a change set holds only data modification requests")
            encoded.append(_http_part(f"{part.method} {part.url} {HTTP_VERSION}",
                                      part.headers, part.body, part.content_id))
        messages.append((name, encoded))
    return _write(messages, boundary, "changeset"), content_type(boundary)


def write_batch_response(parts: list[ResponsePart], boundary: str | None = None
                         ) -> tuple[bytes, str]:
    """A multipart batch response body and its Content-Type; change sets as the parts say."""
    boundary = boundary or new_boundary("batchresponse")
    messages: list[tuple[str | None, list[bytes]]] = []
    for name, group in _groups(parts):
        encoded = []
        for part in group:
            assert isinstance(part, ResponsePart)
            reason = part.reason or _phrase(part.status)
            encoded.append(_http_part(f"{HTTP_VERSION} {part.status} {reason}".rstrip(),
                                      part.headers, part.body, part.content_id))
        messages.append((name, encoded))
    return _write(messages, boundary, "changesetresponse"), content_type(boundary)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""

"""multipart/mixed batch framing (portal.multipart), both directions.

The payloads in tests/fixtures/dataverse/batch/ are copied from Microsoft Learn,
"Execute batch operations using the Web API"
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api,
MicrosoftDocs/powerapps-docs commit 07bda7ad). The docs print LF line ends; the
wire uses CRLF, so each is read both ways.
"""

from pathlib import Path

import orjson
import pytest

from portal.errors import MalformedMultipart
from portal.multipart import (
    RequestPart,
    ResponsePart,
    boundary_of,
    parse_batch_request,
    parse_batch_response,
    write_batch_request,
    write_batch_response,
)

FIXTURES = Path(__file__).parent / "fixtures" / "dataverse" / "batch"
ORG_URL = "https://org.example.crm.dynamics.com"


def load(name: str, crlf: bool) -> tuple[str, bytes, str]:
    """(start line, body, Content-Type) of a documented HTTP message."""
    text = (FIXTURES / name).read_text()
    # The docs' placeholder for the org's address holds a space; a real URL has none.
    text = text.replace("[Organization URI]", ORG_URL).replace("[Organization Uri]", ORG_URL)
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    content_type = next((line.split(":", 1)[1].strip() for line in lines[1:]
                         if line.lower().startswith("content-type:")), "")
    if crlf:
        body = body.replace("\n", "\r\n")
    return lines[0], body.encode(), content_type


CRLF = pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])


@CRLF
def test_parse_change_set_with_content_id_references(crlf: bool) -> None:
    _, body, ctype = load("changeset-content-id-reference.request.http", crlf)
    parts = parse_batch_request(body, ctype)
    assert [(p.method, p.url.rsplit("/", 1)[1], p.content_id) for p in parts] == [
        ("POST", "leads", "1"), ("POST", "contacts", "2"), ("POST", "accounts", "3")]
    assert {p.changeset for p in parts} == {"changeset1"}
    assert parts[0].header("content-type") == "application/json"
    assert orjson.loads(parts[2].body) == {
        "name": "IcM Account",
        "originatingleadid@odata.bind": "$1",
        "primarycontactid@odata.bind": "$2",
    }
    assert orjson.loads(parts[1].body) == {"firstname": "first name"}


@CRLF
def test_parse_change_set_then_get_outside_it(crlf: bool) -> None:
    _, body, ctype = load("changeset-create-tasks.request.http", crlf)
    assert boundary_of(ctype) == "batch_22975cad-7f57-410d-be15-6363209367ea"  # quoted
    parts = parse_batch_request(body, ctype)
    assert [(p.method, p.changeset, p.content_id) for p in parts] == [
        ("POST", "changeset1", "1"), ("POST", "changeset1", "2"), ("POST", "changeset1", "3"),
        ("GET", None, None)]
    assert parts[0].url == "/api/data/v9.2/tasks"
    assert parts[0].header("Content-Type") == "application/json; type=entry"
    assert orjson.loads(parts[1].body)["subject"] == "Task 2 in batch"
    assert parts[3].url == ("/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)"
                            "/Account_Tasks?$select=subject")
    assert parts[3].body == b""


@CRLF
@pytest.mark.parametrize("name", ["error-continue-on-error.request.http",
                                  "error-stops-batch.request.http"])
def test_parse_requests_outside_change_sets(crlf: bool, name: str) -> None:
    _, body, ctype = load(name, crlf)
    parts = parse_batch_request(body, ctype)
    assert [(p.method, p.changeset) for p in parts] == [("POST", None)] * 3
    first = orjson.loads(parts[0].body)
    assert first["subject"] == "Subject is too long " + "x" * 184
    # The docs' Content-Length values are wrong; bodies end at the delimiter instead.
    assert orjson.loads(parts[2].body)["subject"] == "Task 3 in batch"


@CRLF
def test_parse_documented_change_set_response(crlf: bool) -> None:
    status_line, body, _ = load("changeset-create-tasks.response.http", crlf)
    assert status_line == "HTTP/1.1 200 OK"
    # The doc prints the body without the response's Content-Type; its boundary is the
    # first delimiter line.
    boundary = body.split(b"\n", 1)[0].strip()[2:].decode()
    parts = parse_batch_response(body, f"multipart/mixed; boundary={boundary}")
    assert [(p.status, p.changeset, p.content_id) for p in parts] == [
        (204, "changeset1", "1"), (204, "changeset1", "2"), (204, "changeset1", "3"),
        (200, None, None)]
    assert parts[0].reason == "No Content"
    assert parts[0].header("OData-EntityId", "").endswith(
        "tasks(e73ffc82-e292-ed11-aad1-000d3a9933c9)")
    assert parts[0].body == b""
    page = orjson.loads(parts[3].body)
    assert [r["subject"] for r in page["value"]] == [f"Task {n} in batch" for n in (1, 2, 3)]


@CRLF
def test_parse_documented_error_responses(crlf: bool) -> None:
    for name, statuses in [("error-continue-on-error.response.http", [400, 204, 204]),
                           ("error-stops-batch.response.http", [400])]:
        _, body, _ = load(name, crlf)
        boundary = body.split(b"\n", 1)[0].strip()[2:].decode()
        parts = parse_batch_response(body, f"multipart/mixed;boundary={boundary}")
        assert [p.status for p in parts] == statuses
        error = orjson.loads(parts[0].body)["error"]
        assert error["code"] == "0x80044331"
        assert parts[0].header("REQ_ID")


def test_request_round_trip() -> None:
    parts = [
        RequestPart("POST", "accounts", {"Content-Type": "application/json"},
                    b'{"name": "A"}', "1", "cs-a"),
        RequestPart("PATCH", "$1", {"Content-Type": "application/json", "If-Match": "*"},
                    b'{"name": "B"}', "2", "cs-a"),
        RequestPart("GET", "accounts?$select=name", {"Accept": "application/json"}),
        RequestPart("DELETE", "contacts(00000000-0000-0000-0000-000000000001)",
                    content_id="3", changeset="cs-b"),
    ]
    body, ctype = write_batch_request(parts)
    assert ctype.startswith("multipart/mixed; boundary=batch_")
    assert b"\r\n" in body and b"\n" not in body.replace(b"\r\n", b"")
    again = parse_batch_request(body, ctype)
    assert [(p.method, p.url, p.headers, p.body, p.content_id) for p in again] == \
        [(p.method, p.url, p.headers, p.body, p.content_id) for p in parts]
    assert [p.changeset for p in again] == ["changeset1", "changeset1", None, "changeset2"]


def test_response_round_trip_and_documented_layout() -> None:
    parts = [
        ResponsePart(204, {"OData-Version": "4.0", "OData-EntityId": "x/accounts(1)"},
                     content_id="1", changeset="g"),
        ResponsePart(204, {"OData-Version": "4.0"}, content_id="2", changeset="g"),
        ResponsePart(400, {"Content-Type": "application/json; odata.metadata=minimal"},
                     b'{"error":{"code":"0x80040217","message":"no"}}'),
    ]
    body, ctype = write_batch_response(parts, "batchresponse_1")
    assert ctype == "multipart/mixed; boundary=batchresponse_1"
    text = body.decode()
    assert text.startswith("--batchresponse_1\r\nContent-Type: multipart/mixed; "
                           "boundary=changesetresponse_")
    assert "Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n" in text
    assert "\r\nHTTP/1.1 400 Bad Request\r\n" in text
    assert text.endswith("--batchresponse_1--\r\n")
    again = parse_batch_response(body, ctype)
    assert [(p.status, p.headers, p.body, p.content_id) for p in again] == \
        [(p.status, p.headers, p.body, p.content_id) for p in parts]
    assert [p.changeset for p in again] == ["changeset1", "changeset1", None]


def test_change_set_refuses_get_on_writing() -> None:
    with pytest.raises(ValueError):
        write_batch_request([RequestPart("GET", "accounts", changeset="c")])


def framed(*parts: str, boundary: str = "b") -> bytes:
    return ("".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n").encode()


GET = "Content-Type: application/http\r\n\r\nGET accounts HTTP/1.1\r\n"


@pytest.mark.parametrize(("body", "ctype", "reason"), [
    (framed(GET), "application/json", "needs Content-Type multipart/mixed"),
    (framed(GET), "multipart/mixed", "no valid boundary"),
    (b"GET accounts HTTP/1.1\r\n", "multipart/mixed; boundary=b", "no part delimited"),
    (b"--b\r\n" + GET.encode(), "multipart/mixed; boundary=b", "does not end with"),
    (framed(GET) + b"--b\r\n" + GET.encode() + b"--b--\r\n", "multipart/mixed; boundary=b",
     "parts follow the closing"),
    (framed("Content-Type: text/plain\r\n\r\nhello"), "multipart/mixed; boundary=b",
     "must be application/http"),
    (framed("Content-Type: application/http\r\n\r\nnot a request line"),
     "multipart/mixed; boundary=b", "is not a request line"),
    (framed("Content-Type: application/http\r\n\r\n"), "multipart/mixed; boundary=b",
     "no start line"),
    (framed("Content-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "R0VU"), "multipart/mixed; boundary=b", "base64"),
    (framed("Content-Type: application/http\r\n\r\nGET a HTTP/1.1\r\nbad header\r\n"),
     "multipart/mixed; boundary=b", "is not a header line"),
    (framed("Content-Type: multipart/mixed; boundary=c\r\n\r\n" + framed(
        "Content-Type: application/http\r\nContent-ID: 1\r\n\r\nGET a HTTP/1.1\r\n",
        boundary="c").decode()), "multipart/mixed; boundary=b", "only POST, PATCH"),
    (framed("Content-Type: multipart/mixed; boundary=c\r\n\r\n" + framed(
        "Content-Type: multipart/mixed; boundary=d\r\n\r\n--d--", boundary="c").decode()),
     "multipart/mixed; boundary=b", "cannot be nested"),
    (framed("Content-Type: multipart/mixed; boundary=c\r\n\r\n--c--"),
     "multipart/mixed; boundary=b", "change set is empty"),
    (framed("Content-Type: multipart/mixed\r\n\r\n--c--"),
     "multipart/mixed; boundary=b", "no valid boundary"),
    (framed("Content-Type: application/http\r\nContent-ID: 1\r\n\r\nPOST a HTTP/1.1\r\n",
            "Content-Type: application/http\r\nContent-ID: 1\r\n\r\nPOST a HTTP/1.1\r\n"),
     "multipart/mixed; boundary=b", "used twice"),
    (b"--b\r\nContent-Type: application/http\r\n\r\nGET a HTTP/1.1\r\n\xff: x\r\n--b--\r\n",
     "multipart/mixed; boundary=b", "not UTF-8"),
])
def test_malformed_batch_is_refused_with_the_reason(body: bytes, ctype: str,
                                                     reason: str) -> None:
    with pytest.raises(MalformedMultipart, match=reason) as refused:
        parse_batch_request(body, ctype)
    assert refused.value.status == 400


def test_limits_on_requests_and_bytes() -> None:
    body = framed(*[GET] * 4)
    assert len(parse_batch_request(body, "multipart/mixed; boundary=b", max_requests=4)) == 4
    with pytest.raises(MalformedMultipart, match="at most 3 requests"):
        parse_batch_request(body, "multipart/mixed; boundary=b", max_requests=3)
    in_change_set = framed("Content-Type: multipart/mixed; boundary=c\r\n\r\n" + framed(
        *["Content-Type: application/http\r\n\r\nDELETE a(1) HTTP/1.1\r\n"] * 3,
        boundary="c").decode())
    with pytest.raises(MalformedMultipart, match="at most 2 requests"):
        parse_batch_request(in_change_set, "multipart/mixed; boundary=b", max_requests=2)
    with pytest.raises(MalformedMultipart, match="larger than 10 bytes"):
        parse_batch_request(body, "multipart/mixed; boundary=b", max_bytes=10)


def test_content_id_in_the_inner_headers_is_accepted() -> None:
    body = framed("Content-Type: application/http\r\n\r\nPOST accounts HTTP/1.1\r\n"
                  "Content-ID: 7\r\nContent-Type: application/json\r\n\r\n{}")
    [part] = parse_batch_request(body, 'multipart/mixed; boundary="b"')
    assert part.content_id == "7"
    assert part.body == b"{}"

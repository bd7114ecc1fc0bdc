"""Error codes as data: each kind of refusal has the Org API's code and Dataverse's.

Requests run through the one dispatch with an ApiRequest whose `error_codes` names the
column of portal.web.odata.messages.ERROR_CODES (the Dataverse dialect sets "dataverse").
Documented bodies, copied into tests/fixtures/dataverse/errors/ from Microsoft Learn,
"Perform conditional operations using the Web API"
(webapi/perform-conditional-operations-using-web-api): the 412 messages.
"""

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import Headers, MultiDict

from portal import multipart
from portal.multipart import RequestPart
from portal.orgs import records
from portal.orgs.store import OrgDb, current_version
from portal.web.odata.delta import make_deltatoken
from portal.web.odata.dispatch import dispatch
from portal.web.odata.messages import (
    ERROR_CODE_FIELDS,
    ERROR_CODES,
    ApiRequest,
    ApiResponse,
    ErrorKind,
)
from tests.odata_helpers import AUTH, ROOT

ERRORS = Path(__file__).parent / "fixtures" / "dataverse" / "errors"
DATAVERSE_ROOT = "http://localhost/dataverse/sales/api/data/v9.2/"
A = str(uuid.UUID(int=1))


def call(app: Flask, org: OrgDb, method: str, url: str, body: Any = None, *,
         codes: str = "dataverse", admin: bool = True, **headers: str) -> ApiResponse:
    """One request through dispatch, as a dialect with these error codes would send it."""
    parts = urlsplit(url)
    data = orjson.dumps(body) if body is not None else b""
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    req = ApiRequest(method, parts.path, MultiDict(parse_qsl(parts.query)), Headers(headers),
                     data, DATAVERSE_ROOT, org, app.config["SECRET_KEY"],
                     {"is_admin": admin}, error_codes=codes)
    with app.app_context():
        return dispatch(req)


def error(response: ApiResponse) -> dict[str, Any]:
    return dict(response.json()["error"])


def documented(name: str) -> str:
    return str(json.loads((ERRORS / f"{name}.response.json").read_text())["error"]["message"])


def test_every_kind_has_a_code_in_every_dialect() -> None:
    assert set(ERROR_CODES) == set(ErrorKind)
    for kind, codes in ERROR_CODES.items():
        assert all(getattr(codes, f) for f in ERROR_CODE_FIELDS), kind
        assert re.fullmatch(r"0x8[0-9A-F]{7}", codes.dataverse), kind


def test_dataverse_codes_for_not_found_duplicate_and_concurrency(app: Flask,
                                                                 sales_org: OrgDb) -> None:
    missing = call(app, sales_org, "GET", f"accounts({A})")
    assert (missing.status, error(missing)["code"]) == (404, "0x80040217")
    records.create_record(sales_org, "account", {"name": "B"}, record_id=str(uuid.UUID(int=2)))
    duplicate = call(app, sales_org, "POST", "accounts",
                     {"accountid": str(uuid.UUID(int=2)), "name": "again"})
    assert (duplicate.status, error(duplicate)["code"]) == (409, "0x80040237")
    if_none = call(app, sales_org, "PATCH", f"accounts({uuid.UUID(int=2)})", {"name": "x"},
                   **{"If-None-Match": "*"})
    assert if_none.status == 412
    assert error(if_none) == {"code": "0x80040237",
                              "message": documented("412-duplicate-key-upsert-if-none-match")}
    stale = call(app, sales_org, "PATCH", f"accounts({uuid.UUID(int=2)})", {"name": "x"},
                 **{"If-Match": 'W/"12345"'})
    assert stale.status == 412
    assert error(stale) == {"code": "0x80060882",
                            "message": documented("412-concurrency-etag-mismatch")}
    forbidden = call(app, sales_org, "POST", "EntityDefinitions(LogicalName='account')/"
                     "Attributes", {"@odata.type": "Microsoft.Dynamics.CRM."
                                    "StringAttributeMetadata", "SchemaName": "new_x"},
                     admin=False)
    assert (forbidden.status, error(forbidden)["code"]) == (403, "0x80040220")
    invalid = call(app, sales_org, "POST", "accounts", {"name": "x" * 500})
    assert (invalid.status, error(invalid)["code"]) == (400, "0x80044331")


def test_the_org_api_keeps_its_own_codes(client: FlaskClient, sales_org: OrgDb) -> None:
    records.create_record(sales_org, "account", {"name": "A"}, record_id=A)
    assert client.get(ROOT + f"accounts({uuid.UUID(int=9)})", headers=AUTH).json[
        "error"]["code"] == "NotFound"
    assert client.post(ROOT + "accounts", json={"accountid": A, "name": "A"},
                       headers=AUTH).json["error"]["code"] == "AlreadyExists"
    for header in ({"If-None-Match": "*"}, {"If-Match": 'W/"12345"'}):
        answer = client.patch(ROOT + f"accounts({A})", json={"name": "x"},
                              headers={**AUTH, **header})
        assert (answer.status_code, answer.json["error"]["code"]) == (412, "PreconditionFailed")
        assert "RowVersion" not in answer.json["error"]["message"]


def test_batch_parts_carry_the_dialects_codes(app: Flask, sales_org: OrgDb) -> None:
    body, content_type = multipart.write_batch_request([
        RequestPart("GET", f"accounts({A})"),
        RequestPart("POST", "accounts", {"Content-Type": "application/json"},
                    b'{"name": "' + b"x" * 500 + b'"}'),
    ])
    req = ApiRequest("POST", "$batch", MultiDict(), Headers({
        "Content-Type": content_type, "Prefer": "odata.continue-on-error"}), body,
        DATAVERSE_ROOT, sales_org, app.config["SECRET_KEY"], {"is_admin": True},
        error_codes="dataverse")
    with app.app_context():
        answer = dispatch(req)
    parts = multipart.parse_batch_response(answer.body, answer.headers["Content-Type"])
    assert [(p.status, orjson.loads(p.body)["error"]["code"]) for p in parts] == [
        (404, "0x80040217"), (400, "0x80044331")]
    malformed = ApiRequest("POST", "$batch", MultiDict(), Headers({
        "Content-Type": "multipart/mixed; boundary=b"}), b"--b\r\n", DATAVERSE_ROOT, sales_org,
        app.config["SECRET_KEY"], {"is_admin": True}, error_codes="dataverse")
    with app.app_context():
        refused = dispatch(malformed)
    assert (refused.status, error(refused)["code"]) == (400, "0x80040203")


@pytest.mark.parametrize("codes, expected", [("odata", ["BadRequest", "DeltaTokenExpired"]),
                                              ("dataverse", ["0x80044352", "0x80044352"])])
def test_unknown_delta_token_tells_the_client_to_start_over(app: Flask, sales_org: OrgDb,
                                                            codes: str, expected: list[str]
                                                            ) -> None:
    # Not ours (the Org API's code stays BadRequest), and newer than anything this org has
    # given out (a token of an earlier org of the same name).
    future = make_deltatoken(app.config["SECRET_KEY"], "sales", "accounts",
                             current_version(sales_org.db) + 1000)
    answers = [call(app, sales_org, "GET", f"accounts?$deltatoken={token}", codes=codes)
               for token in ["garbage", future]]
    assert [(a.status, error(a)["code"]) for a in answers] == [(400, c) for c in expected]
    if codes == "dataverse":
        assert {error(a)["message"] for a in answers} == {
            "Version stamp associated with the client has expired. Please perform a full sync."}

"""multipart/mixed $batch on the Org API, as Dataverse sends it: change sets, Content-ID
references, continue-on-error, limits and malformed bodies.

The documented request is from Microsoft Learn, "Execute batch operations using the Web
API", section "Reference URIs in request body"
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api),
copied into tests/fixtures/dataverse/batch/.
"""

import uuid
from pathlib import Path

import orjson
import pytest
from flask.testing import FlaskClient
from PowerPlatform.Dataverse.data._batch_base import _BatchBase, _ChangeSetBatchItem
from PowerPlatform.Dataverse.data._odata_base import _ODataBase
from PowerPlatform.Dataverse.data._raw_request import _RawRequest
from werkzeug.test import TestResponse

from portal import multipart
from portal.multipart import RequestPart
from portal.orgs import records, schema
from portal.orgs.metadata import Attribute
from portal.orgs.store import OrgDb, current_version
from tests.odata_helpers import AUTH, ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "dataverse" / "batch"
A = str(uuid.UUID(int=1))
B = str(uuid.UUID(int=2))
JSON = {"Content-Type": "application/json"}


def post(client: FlaskClient, parts: list[RequestPart], **headers: str) -> TestResponse:
    body, content_type = multipart.write_batch_request(parts)
    return client.post(ROOT + "$batch", data=body,
                       headers={**AUTH, "Content-Type": content_type, **headers})


def count(org: OrgDb, table: str) -> int:
    return int(org.db.execute(f"select count(*) from [{table}]").fetchone()[0])


def answers(response: TestResponse) -> list[multipart.ResponsePart]:
    return multipart.parse_batch_response(response.data, response.headers["Content-Type"])


def create(set_name: str, values: dict[str, object], content_id: str | None = None,
           changeset: str | None = None) -> RequestPart:
    return RequestPart("POST", set_name, JSON, orjson.dumps(values), content_id, changeset)


def test_documented_change_set_with_content_id_references(client: FlaskClient,
                                                          sales_org: OrgDb) -> None:
    # The doc's account has an originatingleadid lookup and its contact no last name.
    schema.add_attribute(sales_org, "account", Attribute(
        "originatingleadid", "lookup", "Originating Lead", targets=["lead"]))
    lastname = sales_org.entity("contact").attribute("lastname")
    assert lastname is not None
    lastname.required = False
    schema.alter_attribute(sales_org, "contact", lastname)
    text = (FIXTURES / "changeset-content-id-reference.request.http").read_text()
    head, _, body = text.partition("\n\n")
    body = body.replace("[Organization URI]/api/data/v9.2/", "http://localhost" + ROOT)
    answer = client.post(ROOT + "$batch", data=body.replace("\n", "\r\n").encode(), headers={
        **AUTH, "Content-Type": "multipart/mixed;boundary=batch_AAA123"})
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    parts = answers(answer)
    assert [(p.status, p.content_id, p.changeset) for p in parts] == [
        (201, "1", "changeset1"), (201, "2", "changeset1"), (201, "3", "changeset1")]
    lead_id, contact_id, account_id = (orjson.loads(p.body)[k] for p, k in zip(
        parts, ["leadid", "contactid", "accountid"], strict=True))
    assert parts[0].header("OData-EntityId") == f"http://localhost{ROOT}leads({lead_id})"
    account = records.get_record(sales_org, "account", account_id)
    assert account is not None
    assert account["name"] == "IcM Account"
    assert (account["originatingleadid"], account["primarycontactid"]) == (lead_id, contact_id)


def test_change_set_failing_half_way_applies_nothing(client: FlaskClient,
                                                    sales_org: OrgDb) -> None:
    before = current_version(sales_org.db)
    answer = post(client, [
        create("accounts", {"accountid": A, "name": "A"}, "1", "cs"),
        RequestPart("PATCH", "$1", JSON, b'{"telephone1": "1"}', "2", "cs"),
        create("contacts", {"lastname": "x" * 500}, "3", "cs"),
        create("accounts", {"accountid": B, "name": "B"}, "4"),
    ])
    # Dataverse: a batch that stopped at a failure answers 400, with the one failed part.
    assert answer.status_code == 400
    [part] = answers(answer)
    assert (part.status, part.content_id, part.changeset) == (400, "3", None)
    error = orjson.loads(part.body)["error"]
    assert "at most 50" in error["message"]
    assert records.get_record(sales_org, "account", A) is None
    assert records.get_record(sales_org, "account", B) is None
    assert current_version(sales_org.db) == before


def test_continue_on_error_runs_the_rest(client: FlaskClient, sales_org: OrgDb) -> None:
    # As the doc's "error-continue-on-error" example: the first write fails, the others run.
    parts = [
        create("appointments", {"subject": "Subject is too long " + "x" * 184}),
        create("appointments", {"subject": "Task 2 in batch",
                                "regardingobjectid_account@odata.bind": f"accounts({A})"}),
        RequestPart("GET", "appointments?$select=subject"),
    ]
    records.create_record(sales_org, "account", {"name": "A"}, record_id=A)
    answer = post(client, parts, Prefer="odata.continue-on-error")
    assert answer.status_code == 200
    got = answers(answer)
    assert [p.status for p in got] == [400, 201, 200]
    assert [r["subject"] for r in orjson.loads(got[2].body)["value"]] == ["Task 2 in batch"]
    stopped = post(client, parts)
    assert stopped.status_code == 400
    assert [p.status for p in answers(stopped)] == [400]
    assert count(sales_org, "appointment") == 1


def test_continue_on_error_after_a_failed_change_set(client: FlaskClient,
                                                     sales_org: OrgDb) -> None:
    answer = post(client, [
        create("accounts", {"accountid": A, "name": "A"}, "a", "cs1"),
        create("accounts", {"name": "x" * 500}, "b", "cs1"),
        RequestPart("PATCH", "$a", JSON, b'{"name": "A2"}', "c"),
        create("accounts", {"accountid": B, "name": "B"}, "d", "cs2"),
        RequestPart("DELETE", "$d", content_id="e", changeset="cs2"),
    ], Prefer="odata.continue-on-error")
    assert answer.status_code == 200
    got = answers(answer)
    assert [(p.status, p.content_id, p.changeset) for p in got] == [
        (400, "b", None), (400, "c", None), (201, "d", "changeset1"), (204, "e", "changeset1")]
    # $a was rolled back with its change set, so it names nothing.
    assert "'$a' does not exist in the batch context" in orjson.loads(got[1].body)[
        "error"]["message"]
    assert records.get_record(sales_org, "account", A) is None
    assert records.get_record(sales_org, "account", B) is None


def test_bind_to_a_missing_content_id(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = post(client, [create("contacts", {"lastname": "Doe",
                                               "parentcustomerid@odata.bind": "$9"}, "1")])
    [part] = answers(answer)
    assert part.status == 400
    assert "'$9' does not exist" in orjson.loads(part.body)["error"]["message"]
    assert count(sales_org, "contact") == 0


def test_a_batch_of_1000_runs_and_1001_is_refused(client: FlaskClient,
                                                  sales_org: OrgDb) -> None:
    before = current_version(sales_org.db)
    over = [create("accounts", {"name": f"a{n}"}, str(n), "cs") for n in range(1001)]
    refused = post(client, over)
    assert refused.status_code == 400
    assert refused.json["error"]["code"] == "BadRequest"
    assert "at most 1000 requests" in refused.json["error"]["message"]
    assert current_version(sales_org.db) == before
    answer = post(client, over[:1000])
    assert answer.status_code == 200
    assert count(sales_org, "account") == 1000


@pytest.mark.parametrize(("body", "content_type", "words"), [
    (b"--b\r\nContent-Type: application/http\r\n\r\nPOST accounts HTTP/1.1\r\n"
     b"Content-Type: application/json\r\n\r\n{\"name\": \"A\"}\r\n",
     "multipart/mixed; boundary=b", "does not end with the closing"),
    (b"--b--\r\n", "multipart/mixed", "no valid boundary"),
    (b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n",
     "multipart/mixed; boundary=b", "must be application/http"),
    (b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n"
     b"Content-Type: application/http\r\n\r\nGET accounts HTTP/1.1\r\n\r\n--c--\r\n--b--\r\n",
     "multipart/mixed; boundary=b", "only POST, PATCH"),
    (b"--b\r\nContent-Type: application/http\r\n\r\nPOST accounts\r\n\r\n{}\r\n"
     b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     b"UE9TVA==\r\n--b--\r\n", "multipart/mixed; boundary=b", "base64"),
])
def test_malformed_multipart_is_a_400_and_writes_nothing(
        client: FlaskClient, sales_org: OrgDb, body: bytes, content_type: str,
        words: str) -> None:
    before = current_version(sales_org.db)
    answer = client.post(ROOT + "$batch", data=body,
                         headers={**AUTH, "Content-Type": content_type})
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "BadRequest"
    assert words in answer.json["error"]["message"]
    assert current_version(sales_org.db) == before


def test_multipart_and_json_batches_share_the_sub_request_rules(client: FlaskClient,
                                                                sales_org: OrgDb) -> None:
    answer = post(client, [
        RequestPart("GET", "/odata/v4/other/accounts"),
        RequestPart("POST", "$batch", JSON, b"{}"),
        RequestPart("GET", "http://localhost/odata/v4/sales/accounts?$select=name&$top=1"),
    ], Prefer="odata.continue-on-error")
    got = answers(answer)
    assert [p.status for p in got] == [400, 400, 200]
    assert orjson.loads(got[0].body)["error"]["message"].startswith(
        "batch request part 1: /odata/v4/other/accounts is not in this service")


def test_microsoft_sdk_batch_framing_both_ways(client: FlaskClient, sales_org: OrgDb) -> None:
    # Microsoft's SDK (powerplatform-dataverse-client 1.1.0) writes the body and reads our
    # answer with its own multipart code (data/_batch_base.py).
    sdk = _BatchBase(_ODataBase("https://org.example.crm.dynamics.com"))
    url = "http://localhost" + ROOT
    change_set = _ChangeSetBatchItem([
        _RawRequest("POST", url + "accounts", orjson.dumps({"name": "SDK"}).decode(),
                    content_id=1),
        _RawRequest("POST", url + "contacts", orjson.dumps({
            "lastname": "Doe", "parentcustomerid_account@odata.bind": "$1"}).decode(),
            content_id=2),
    ])
    failing = _RawRequest("PATCH", url + f"accounts({A})", '{"name": "x"}',
                          headers={"If-Match": "*"})
    listing = _RawRequest("GET", url + "contacts?$select=lastname,parentcustomerid")
    boundary = "batch_sdk"
    body = sdk._build_batch_body([change_set, failing, listing], boundary)
    answer = client.post(ROOT + "$batch", data=body.encode(), headers={
        **AUTH, "Content-Type": f'multipart/mixed; boundary="{boundary}"',
        "Prefer": "odata.continue-on-error"})
    result = sdk._parse_batch_response(answer)
    assert [(r.status_code, r.content_id) for r in result.responses] == [
        (201, "1"), (201, "2"), (404, None), (200, None)]
    account_id = result.responses[0].entity_id
    assert account_id and result.responses[1].entity_id
    assert result.responses[2].error_code == "NotFound"
    [contact] = result.responses[3].data["value"]  # type: ignore[index]
    assert contact["parentcustomerid"] == account_id

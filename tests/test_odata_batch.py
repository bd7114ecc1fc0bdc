"""JSON $batch: order, atomicity groups all-or-nothing, dependsOn, limits."""

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb, current_version
from tests.odata_helpers import AUTH, ROOT

A = str(uuid.UUID(int=1))
B = str(uuid.UUID(int=2))


def batch(client: FlaskClient, requests: list[dict[str, Any]], **headers: str) -> Any:
    return client.post(ROOT + "$batch", json={"requests": requests},
                       headers={**AUTH, **headers})


def test_batch_runs_requests_in_order(client: FlaskClient, sales_org: OrgDb) -> None:
    answer = batch(client, [
        {"id": "1", "method": "POST", "url": "accounts", "body": {"accountid": A, "name": "A"}},
        {"id": "2", "method": "PATCH", "url": f"accounts({A})", "body": {"name": "A2"},
         "headers": {"Content-Type": "application/json"}},
        {"id": "3", "method": "GET", "url": f"accounts({A})?$select=name"},
        {"id": "4", "method": "GET", "url": "$1?$select=name", "dependsOn": ["1"]},
        {"id": "5", "method": "DELETE", "url": f"/odata/v4/sales/accounts({A})"},
    ])
    assert answer.status_code == 200
    responses = answer.json["responses"]
    assert [r["status"] for r in responses] == [201, 204, 200, 200, 204]
    assert responses[2]["body"]["name"] == "A2"
    assert responses[3]["body"]["name"] == "A2"
    assert records.get_record(sales_org, "account", A) is None


def test_batch_atomicity_group_is_rolled_back_when_one_request_fails(
        client: FlaskClient, sales_org: OrgDb) -> None:
    before = current_version(sales_org.db)
    answer = batch(client, [
        {"id": "1", "atomicityGroup": "g", "method": "POST", "url": "accounts",
         "body": {"accountid": A, "name": "A"}},
        {"id": "2", "atomicityGroup": "g", "method": "POST", "url": "accounts",
         "body": {"accountid": B, "name": "x" * 500}},
    ])
    assert answer.status_code == 200
    responses = answer.json["responses"]
    assert [(r["id"], r["status"], r["atomicityGroup"]) for r in responses] == \
        [("1", 400, "g"), ("2", 400, "g")]
    assert "at most 160" in responses[0]["body"]["error"]["message"]
    assert records.get_record(sales_org, "account", A) is None
    assert current_version(sales_org.db) == before


def test_batch_successful_group_commits_and_later_requests_see_it(
        client: FlaskClient, sales_org: OrgDb) -> None:
    answer = batch(client, [
        {"id": "1", "atomicityGroup": "g", "method": "POST", "url": "accounts",
         "body": {"accountid": A, "name": "A"}},
        {"id": "2", "atomicityGroup": "g", "method": "POST", "url": "contacts",
         "body": {"lastname": "Doe", "parentcustomerid": A}},
        {"id": "3", "method": "GET", "url": "contacts?$select=lastname", "dependsOn": ["g"]},
    ])
    statuses = [r["status"] for r in answer.json["responses"]]
    assert statuses == [201, 201, 200]
    assert answer.json["responses"][2]["body"]["value"][0]["lastname"] == "Doe"


def test_batch_stops_at_a_failure_unless_told_to_continue(client: FlaskClient,
                                                          sales_org: OrgDb) -> None:
    requests = [
        {"id": "1", "method": "POST", "url": "accounts", "body": {"name": "x" * 500}},
        {"id": "2", "method": "POST", "url": "accounts", "body": {"accountid": A, "name": "A"}},
        {"id": "3", "method": "DELETE", "url": f"accounts({B})", "dependsOn": ["1"]},
    ]
    stopped = batch(client, requests).json["responses"]
    assert [r["status"] for r in stopped] == [400]
    assert records.get_record(sales_org, "account", A) is None
    going = batch(client, requests, Prefer="odata.continue-on-error").json["responses"]
    assert [r["status"] for r in going] == [400, 201, 424]


@pytest.mark.parametrize("body, words", [
    ({"requests": "no"}, "requests"),
    ({"requests": [{"id": "1", "method": "GET", "url": "accounts"}] * 2}, "unique"),
    ({"requests": [{"id": "1", "method": "BREW", "url": "accounts"}]}, "method"),
    ({"requests": [{"id": "1", "method": "GET", "url": "accounts", "dependsOn": ["9"]}]},
     "depends on"),
    ({"requests": [{"id": "1", "method": "GET", "url": "accounts", "atomicityGroup": "g"}]},
     "only POST"),
    ({"requests": [{"id": str(i), "method": "GET", "url": "accounts"} for i in range(1001)]},
     "at most 1000"),
    ({"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "DELETE", "url": f"accounts({A})"},
        {"id": "2", "method": "GET", "url": "accounts"},
        {"id": "3", "atomicityGroup": "g", "method": "DELETE", "url": f"accounts({B})"}]},
     "adjacent"),
])
def test_batch_refuses_malformed_batches(client: FlaskClient, sales_org: OrgDb,
                                         body: dict[str, Any], words: str) -> None:
    answer = client.post(ROOT + "$batch", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert words in answer.json["error"]["message"]


def test_batch_refuses_other_formats_and_nested_batches(client: FlaskClient,
                                                        sales_org: OrgDb) -> None:
    text = client.post(ROOT + "$batch", data=b"GET accounts",
                       headers={**AUTH, "Content-Type": "text/plain"})
    assert text.status_code == 415
    # multipart/mixed is read (tests/test_odata_multipart_batch.py); unframed, it is a 400.
    multipart = client.post(ROOT + "$batch", data=b"--b\r\n",
                            headers={**AUTH, "Content-Type": "multipart/mixed; boundary=b"})
    assert multipart.status_code == 400
    assert "closing --b--" in multipart.json["error"]["message"]
    nested = batch(client, [{"id": "1", "method": "POST", "url": "$batch", "body": {}}])
    assert nested.json["responses"][0]["status"] == 400


def test_batch_request_outside_the_service_is_refused(client: FlaskClient,
                                                      sales_org: OrgDb) -> None:
    answer = batch(client, [{"id": "1", "method": "GET", "url": "/odata/v4/other/accounts"}])
    assert answer.json["responses"][0]["status"] == 400

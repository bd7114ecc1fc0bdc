"""The sync web service's settings calls (JSON and XML): each setting changed, bad input
refused with the element named and nothing changed, only the org's admin let in."""

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.odata_helpers import basic
from tests.test_admin import OTHER_EMAIL, USER_EMAIL, orgs, state  # noqa: F401 (fixture)

AUTH = basic(ADMIN_EMAIL, ADMIN_PASSWORD)
BASE = "/rest/v1/sync/acme"


def send(client: FlaskClient, method: str, path: str, body: Any = None, *,
         xml: str | None = None, headers: dict[str, str] | None = None):
    if xml is not None:
        return client.open(BASE + path, method=method, data=xml, headers={
            **AUTH, "Content-Type": "application/xml", **(headers or {})})
    return client.open(BASE + path, method=method, json=body, headers={**AUTH, **(headers or {})})


def test_service_settings_read_and_change_in_json(orgs: Flask) -> None:  # noqa: F811
    client = orgs.test_client()
    settings = send(client, "GET", "/Settings").json
    assert settings["WriteMode"] == "offline" and settings["ConflictPolicy"] == "server-wins"
    assert [e["Name"] for e in settings["Entities"]] == ["account", "contact", "lead"]
    changed = send(client, "PATCH", "/Settings", {"WriteMode": "instant",
                                                  "ConflictPolicy": "client-wins"}).json
    assert (changed["WriteMode"], changed["ConflictPolicy"]) == ("instant", "client-wins")
    changed = send(client, "PATCH", "/Entities", {"Entities": ["lead"], "Enabled": False,
                                                  "SyncDeletion": False}).json
    assert {e["Name"]: (e["Enabled"], e["SyncDeletion"]) for e in changed["Entities"]}["lead"] \
        == (False, False)
    answer = send(client, "PUT", "/Entities/account/Filter", {
        "FetchXml": '<filter><condition attribute="name" operator="eq" value="A"/></filter>'})
    assert answer.status_code == 200
    assert answer.json["Entities"][0]["Filter"] == (
        '<filter type="and"><condition attribute="name" operator="eq" value="A" /></filter>')
    assert send(client, "DELETE", "/Entities/account/Filter").json["Entities"][0]["Filter"] \
        is None
    schedule = send(client, "PUT", "/Schedule", {"DailyAt": "06:30", "Active": True}).json
    assert schedule["Schedule"]["DailyAt"] == "06:30"
    assert schedule["Schedule"]["NextRun"].endswith("06:30:00Z")


def test_service_settings_streams_set_shown_with_their_cap_and_cleared(
        orgs: Flask) -> None:  # noqa: F811
    client = orgs.test_client()
    assert send(client, "GET", "/Settings").json["Streams"] == {
        "Setting": None, "Asked": 4, "Used": 3, "Cap": "3 entities are enabled"}
    assert send(client, "PATCH", "/Settings", {"Streams": 2}).json["Streams"] == {
        "Setting": 2, "Asked": 2, "Used": 2, "Cap": None}
    answer = send(client, "PATCH", "/Settings", xml="<SyncSettings><Streams>16</Streams>"
                                                    "</SyncSettings>")
    assert "<Streams><Setting>16</Setting><Asked>16</Asked><Used>3</Used>" in \
        answer.get_data(as_text=True)
    assert send(client, "PATCH", "/Settings", {"Streams": "1"}).json["Streams"]["Used"] == 1
    assert send(client, "PATCH", "/Settings", {"Streams": None}).json["Streams"]["Setting"] \
        is None
    assert send(client, "PATCH", "/Settings", {"Streams": 5}).json["Streams"]["Setting"] == 5
    answer = send(client, "PATCH", "/Settings", xml="<SyncSettings><Streams/></SyncSettings>")
    assert "<Setting>" not in answer.get_data(as_text=True)
    refused = send(client, "PATCH", "/Settings", xml="<SyncSettings><WriteMode>instant"
                   "</WriteMode><Streams>17</Streams></SyncSettings>")
    assert refused.status_code == 400 and refused.mimetype == "application/xml"
    assert "<Element>Streams</Element>" in refused.get_data(as_text=True)
    assert send(client, "GET", "/Settings").json["WriteMode"] == "offline"  # nothing changed


def test_service_settings_in_xml(orgs: Flask) -> None:  # noqa: F811
    client = orgs.test_client()
    answer = send(client, "PATCH", "/Entities", xml=(
        "<SyncSettings><Entities><Entity>account</Entity><Entity>contact</Entity></Entities>"
        "<Enabled>false</Enabled></SyncSettings>"))
    assert answer.status_code == 200 and answer.mimetype == "application/xml"
    assert "<Name>account</Name><Enabled>false</Enabled>" in answer.get_data(as_text=True)
    answer = send(client, "PUT", "/Schedule",
                  xml="<Schedule><Every>2h</Every><Active>true</Active></Schedule>")
    assert "<EveryMinutes>120</EveryMinutes>" in answer.get_data(as_text=True)
    answer = send(client, "PUT", "/Entities/contact/Filter", xml=(
        "<SyncFilter><FetchXml>&lt;fetch&gt;&lt;entity name=\"contact\"&gt;&lt;filter&gt;"
        "&lt;condition attribute=\"lastname\" operator=\"null\"/&gt;&lt;/filter&gt;"
        "&lt;/entity&gt;&lt;/fetch&gt;</FetchXml></SyncFilter>"))
    assert answer.status_code == 200
    assert "lastname" in answer.get_data(as_text=True)


@pytest.mark.parametrize("method, path, body, status, element", [
    ("PATCH", "/Settings", {"WriteMode": "sometimes"}, 400, "WriteMode"),
    ("PATCH", "/Settings", {"ConflictPolicy": "loudest-wins"}, 400, "ConflictPolicy"),
    ("PATCH", "/Settings", {"Mode": "instant"}, 400, "Mode"),
    ("PATCH", "/Settings", {"WriteMode": 1}, 400, "WriteMode"),
    ("PATCH", "/Settings", {"Streams": 0}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": 17}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": "abc"}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": -1}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": 2.5}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": True}, 400, "Streams"),
    ("PATCH", "/Settings", {"Streams": [4]}, 400, "Streams"),
    ("PATCH", "/Settings", {"WriteMode": "instant", "Streams": 17}, 400, "Streams"),
    ("PATCH", "/Entities", {"Entities": ["account"], "Enabled": "yes"}, 400, "Enabled"),
    ("PATCH", "/Entities", {"Entities": ["ghost"], "Enabled": False}, 400, "Entities"),
    ("PATCH", "/Entities", {"Entities": [], "Enabled": False}, 400, "Entities"),
    ("PATCH", "/Entities", {"Entities": ["account"]}, 400, "Enabled"),
    ("PUT", "/Entities/account/Filter", {"FetchXml": '<filter><condition attribute="nosuch" '
                                         'operator="eq" value="1"/></filter>'}, 400, "FetchXml"),
    ("PUT", "/Entities/account/Filter", {"FetchXml": ""}, 400, "FetchXml"),
    ("PUT", "/Entities/ghost/Filter", {"FetchXml": "<filter/>"}, 404, "{entity}"),
    ("PUT", "/Schedule", {"DailyAt": "25:00", "Active": True}, 400, "DailyAt"),
    ("PUT", "/Schedule", {"Every": "soon", "Active": True}, 400, "Every"),
    ("PUT", "/Schedule", {"Every": "x" * 3000}, 400, "Every"),
])
def test_service_settings_bad_input_names_the_element_and_changes_nothing(
        orgs: Flask, redis: Redis, method: str, path: str, body: Any, status: int,  # noqa: F811
        element: str) -> None:
    before = state(orgs, redis)
    answer = send(orgs.test_client(), method, path, body)
    assert answer.status_code == status, answer.json
    assert answer.json["Error"]["Element"] == element
    assert state(orgs, redis) == before


@pytest.mark.parametrize("who", [None, (OTHER_EMAIL, ADMIN_PASSWORD),
                                 (USER_EMAIL, ADMIN_PASSWORD), (ADMIN_EMAIL, "wrong-pass-1")])
def test_service_settings_need_the_orgs_admin(orgs: Flask, redis: Redis,  # noqa: F811
                                              who: tuple[str, str] | None) -> None:
    client = orgs.test_client()
    before = state(orgs, redis)
    for method, path, body in [("GET", "/Settings", None),
                               ("PATCH", "/Settings", {"WriteMode": "instant"}),
                               ("PATCH", "/Entities", {"Entities": ["lead"], "Enabled": False}),
                               ("PUT", "/Entities/account/Filter", {"FetchXml": "<filter/>"}),
                               ("DELETE", "/Entities/account/Filter", None),
                               ("PUT", "/Schedule", {"Every": "5m"})]:
        headers = basic(*who) if who else {}
        answer = client.open(BASE + path, method=method, json=body, headers=headers)
        assert answer.status_code == 401, (method, path)
    assert state(orgs, redis) == before

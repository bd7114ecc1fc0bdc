"""N:N rows on the Dataverse root: associated and disassociated through `$ref`, never written.

As associate-disassociate-entities-using-web-api.md (Microsoft Learn) describes:
POST {set}({id})/{navigation}/$ref with the other record's @odata.id answers 204
and the server makes the intersect row, with an id of its own; DELETE
{set}({id})/{navigation}({other})/$ref removes it. A direct write of an
intersect row is refused ("The 'Create' method does not support entities of
type 'intersect'" in Dataverse's words).
"""

from flask import Flask
from flask.testing import FlaskClient

from portal.orgs import records
from portal.orgs.store import OrgDb
from tests.dataverse_helpers import DV_ROOT, bearer, client_token, new_application_user

LEAD = "7b000000-0000-4000-8000-000000000001"
COMPETITOR = "7b000000-0000-4000-8000-000000000002"
REF = f"{DV_ROOT}leads({LEAD})/leadcompetitor"


def _setup(app: Flask, client: FlaskClient, org: OrgDb) -> dict[str, str]:
    records.create_record(org, "lead", {"lastname": "Lead"}, record_id=LEAD)
    records.create_record(org, "competitor", {"name": "Competitor"}, record_id=COMPETITOR)
    return bearer(client_token(client, *new_application_user(app)))


def _links(org: OrgDb) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in org.db.table("leadcompetitor").rows
            if (r["leadid"], r["competitorid"]) == (LEAD, COMPETITOR)]


def test_associate_makes_the_row_with_the_servers_own_id_and_disassociate_removes_it(
        app: Flask, client: FlaskClient, sales_org: OrgDb) -> None:
    token = _setup(app, client, sales_org)
    other = {"@odata.id": f"http://localhost{DV_ROOT}competitors({COMPETITOR})"}
    answer = client.post(f"{REF}/$ref", json=other, headers=token)
    assert answer.status_code == 204, answer.json
    [row] = _links(sales_org)
    # Found by the two ids, as a client finds the row Dataverse made.
    found = client.get(f"{DV_ROOT}leadcompetitors?$select=leadcompetitorid&$filter=leadid eq "
                       f"{LEAD} and competitorid eq {COMPETITOR}", headers=token)
    assert [r["leadcompetitorid"] for r in found.json["value"]] == [row["leadcompetitorid"]]
    again = client.post(f"{REF}/$ref", json=other, headers=token)
    assert again.status_code == 400 and "duplicate" in again.json["error"]["message"]
    assert len(_links(sales_org)) == 1
    gone = client.delete(f"{REF}({COMPETITOR})/$ref", headers=token)
    assert gone.status_code == 204
    assert _links(sales_org) == []
    assert client.delete(f"{REF}({COMPETITOR})/$ref", headers=token).status_code == 404


def test_intersect_rows_are_not_written_directly_and_bad_refs_change_nothing(
        app: Flask, client: FlaskClient, sales_org: OrgDb) -> None:
    token = _setup(app, client, sales_org)
    row = "7b000000-0000-4000-8000-0000000000ff"
    for method in ("patch", "delete"):
        answer = getattr(client, method)(f"{DV_ROOT}leadcompetitors({row})", json={
            "leadid": LEAD, "competitorid": COMPETITOR}, headers=token)
        assert answer.status_code == 400
        assert "does not support entities of type 'leadcompetitor'" in \
            answer.json["error"]["message"]
    bad = [({"@odata.id": f"http://localhost{DV_ROOT}accounts({COMPETITOR})"}, 400),
           ({"@odata.id": f"http://localhost{DV_ROOT}competitors(7b000000-0000-4000-8000-"
                          "000000000099)"}, 404),
           ({}, 400)]
    for body, status in bad:
        assert client.post(f"{REF}/$ref", json=body, headers=token).status_code == status
    assert client.post(f"{DV_ROOT}leads({LEAD})/nosuchnav/$ref", json={
        "@odata.id": f"competitors({COMPETITOR})"}, headers=token).status_code == 404
    assert _links(sales_org) == []

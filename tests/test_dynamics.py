"""The `dynamics` backend's reader and writer on payloads copied from Microsoft Learn, served
over TLS by a scripted Dataverse (tests/scripted_https.py), signed in by MSAL (the real one).

Each test names the Learn page its payloads come from (tests/fixtures/dataverse/, copied
from the pages listed in the vendor-payloads README). Where Learn documents no example,
the body is composed and says so.
"""

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portal import multipart
from portal.backends.base import Write
from portal.backends.dynamics import MAX_WAIT_S, DynamicsBackend, web_api_root
from portal.errors import BackendError, CredentialsRefused, ServerLimited
from portal.multipart import RequestPart
from portal.orgs.metadata import Attribute, Entity
from tests.scripted_https import FIXTURES, Answer, ScriptedHttps, Seen, entra_authority, fixture

TENANT = "4baaeaaf-2771-4583-99eb-7c7e39aa1e74"
API = "/api/data/v9.2/"


class Dataverse:
    """A scripted environment: its Web API root asks for a token from a scripted authority."""

    def __init__(self, server: ScriptedHttps) -> None:
        self.server = server
        entra_authority(server, TENANT, self.token)
        self.tokens = 0
        server.route("GET", API, Answer(401, {"error": {"code": "0x80040220", "message":
                                                          "no token"}}, {
            "WWW-Authenticate": f"Bearer authorization_uri={server.url}/{TENANT}/oauth2/"
                                f"authorize, resource_id={server.url}/"}))

    def token(self, seen: Seen) -> Answer:
        # MicrosoftDocs/entra-docs v2-oauth2-client-creds-grant-flow.md, "Successful response"
        self.tokens += 1
        body = fixture("dataverse/auth/entra-client-credentials-token.response.json")
        body["access_token"] += str(self.tokens)
        return Answer(200, body)

    def route(self, method: str, path: str, answer: Any) -> None:
        """Answer `method` on a path under the Web API root (only with a token)."""
        def authorized(seen: Seen) -> Answer:
            if not seen.headers.get("Authorization", "").startswith("Bearer eyJ"):
                return Answer(401, {"error": {"code": "0x80040220", "message": "no token"}})
            return answer(seen) if callable(answer) else answer
        self.server.route(method, API + path, authorized)

    def backend(self, **options: Any) -> DynamicsBackend:
        """The backend as an application user, trusting the test CA."""
        return DynamicsBackend(self.server.url, "app-id", "app-secret",
                               auth="client_credentials", allow_private=True,
                               session=self.server.session(), retries=1, **options)

    def urls(self, payload: Any) -> Any:
        """A Learn payload with its `[Organization URI]` placeholders made this server's."""
        text = json.dumps(payload).replace("[Organization URI]", self.server.url) \
            .replace("[Organization Uri]", self.server.url)
        return json.loads(text)


@pytest.fixture
def dataverse(tmp_path: Path) -> Iterator[Dataverse]:
    """A scripted Dataverse environment and its authority, stopped at teardown."""
    server = ScriptedHttps(tmp_path)
    yield Dataverse(server)
    server.stop()


def test_dynamics_finds_the_web_api_root() -> None:
    for url in ("https://contoso.crm4.dynamics.com", "https://contoso.crm4.dynamics.com/",
                "https://contoso.crm4.dynamics.com/api/data/v9.2",
                "https://contoso.crm4.dynamics.com/api/data/v9.2/"):
        assert web_api_root(url) == ("https://contoso.crm4.dynamics.com",
                                     "https://contoso.crm4.dynamics.com/api/data/v9.2/")
    assert web_api_root("https://portal.example/dataverse/srv") == (
        "https://portal.example/dataverse/srv", "https://portal.example/dataverse/srv/api/data/v9.2/")
    assert web_api_root("https://h/x/api/data/v9.1/")[1] == "https://h/x/api/data/v9.1/"


def test_dynamics_who_am_i_with_a_token_found_from_the_challenge(dataverse) -> None:
    # MicrosoftDocs/powerapps-docs webapi/use-web-api-functions.md (WhoAmI response)
    dataverse.route("GET", "WhoAmI()", Answer(200, fixture("dataverse/whoami.response.json")))
    backend = dataverse.backend()
    assert backend.check_credentials() == "app-id (user d96e9f55-f06d-e511-80d0-00155db07cb1)"
    token = dataverse.server.requests_to(f"/{TENANT}/oauth2/v2.0/token")[0].form()
    assert token["scope"] == f"{dataverse.server.url}/.default"  # the challenge's resource_id
    backend.close()


def test_dynamics_a_refused_token_is_renewed_once(dataverse) -> None:
    answers = [Answer(401, {"error": {"code": "0x80040220", "message": "expired"}}),
               Answer(200, fixture("dataverse/whoami.response.json"))]
    dataverse.route("GET", "WhoAmI()", lambda seen: answers.pop(0))
    backend = dataverse.backend()
    backend.check_credentials()
    assert dataverse.tokens == 2
    backend.close()


def test_dynamics_an_app_user_without_privileges_is_told_what_to_do(dataverse) -> None:
    # Learn documents 403 PrivilegeDenied by name only (compose-http-requests-handle-errors.md):
    # this body is composed in Dataverse's error shape.
    dataverse.route("GET", "WhoAmI()", Answer(403, {"error": {
        "code": "0x80040220", "message": "Principal user is missing prvReadAccount privilege"}}))
    backend = dataverse.backend()
    with pytest.raises(CredentialsRefused, match="missing prvReadAccount.*security role"):
        backend.check_credentials()
    backend.close()


def test_dynamics_connect_as_an_app_user_without_a_role_fails_makes_nothing_then_resumes(
        dataverse, tmp_path: Path, redis_url: str, redis, monkeypatch) -> None:
    # The connect job, on a real RQ worker, against the scripted environment: WhoAmI 403s
    # until the admin gives the application user a security role.
    from portal import crypto
    from portal.db import get_db
    from portal.sync import connections
    from tests.sync_helpers import Side

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(dataverse.server.ca_path))
    dataverse.route("GET", "WhoAmI()", Answer(403, {"error": {
        "code": "0x80040220", "message": "Principal user is missing prvReadAccount privilege"}}))
    client = Side(tmp_path / "b", redis_url, backend="dynamics")
    client.create_org("cli", template=None)
    with client.app.app_context():
        db = get_db()
        org_id = db.execute("SELECT id FROM orgs WHERE name = 'cli'").fetchone()[0]
        connection = connections.create_connection(
            db, crypto.load_key(client.instance), org_id, backend="dynamics",
            url=dataverse.server.url, username="app-id", password="app-secret",
            server_options={"auth": "client_credentials"})
    client.queue(redis, connection.id, "connect")
    client.work(redis)
    failed = client.connection(connection.id)
    assert failed.status == "failed"
    assert "missing prvReadAccount privilege" in (failed.error or "")
    assert "give the user or application user a security role" in (failed.error or "")
    with client.org("cli") as b:
        assert list(b.entities()) == []  # nothing half-made
    # The role given: the same connection connects when its connect runs again.
    dataverse.route("GET", "WhoAmI()", Answer(200, fixture("dataverse/whoami.response.json")))
    dataverse.route("GET", "EntityDefinitions", Answer(200, {"value": []}))
    dataverse.route("GET", "RelationshipDefinitions", Answer(200, {"value": []}))
    client.queue(redis, connection.id, "connect")
    client.work(redis)
    assert client.connection(connection.id).status == "connected"


def test_dynamics_a_url_that_is_not_dataverse_is_a_clear_failure(dataverse) -> None:
    dataverse.server.route("GET", API, Answer(200, {"value": []}))  # no 401, no challenge
    backend = dataverse.backend()
    with pytest.raises(BackendError, match="is not a Dataverse environment"):
        backend.check_credentials()
    assert dataverse.tokens == 0
    backend.close()


def _label(text: str) -> dict[str, Any]:
    item = {"Label": text, "LanguageCode": 1033}
    return {"LocalizedLabels": [item], "UserLocalizedLabel": item}


def _attribute(name: str, kind: str, **more: Any) -> dict[str, Any]:
    return {"LogicalName": name, "AttributeType": kind, "DisplayName": _label(name.title()),
            "IsValidForCreate": True, "IsValidForUpdate": True, "IsValidForRead": True,
            "SourceType": 0, "AttributeOf": None, "RequiredLevel": {"Value": "None"}, **more}


def _metadata(dataverse: Dataverse) -> None:
    """sample_bankaccount (Learn's) and contact, an N:N between them, and tables to skip."""
    # web-api-metadata-operations-sample.md: the full EntityDefinition of sample_bankaccount.
    bank = fixture("dataverse/metadata/entitydefinition-full.response.json")
    contact = {"LogicalName": "contact", "EntitySetName": "contacts", "IsPrivate": False,
               "PrimaryIdAttribute": "contactid", "PrimaryNameAttribute": "fullname",
               "DisplayName": _label("Contact"), "ChangeTrackingEnabled": True,
               "TableType": "Standard"}
    intersect = {**contact, "LogicalName": "sample_sample_bankaccounts_contacts",
                 "EntitySetName": "sample_sample_bankaccounts_contactsset", "IsIntersect": True,
                 "PrimaryIdAttribute": "sample_sample_bankaccounts_contactsid",
                 "PrimaryNameAttribute": None}
    skipped = [{**contact, "LogicalName": "privatething", "IsPrivate": True},
               {**contact, "LogicalName": "calendarrule", "EntitySetName": "calendarrules"},
               {**contact, "LogicalName": "externalthing", "TableType": "Virtual"},
               {**contact, "LogicalName": "logthing", "TableType": "Elastic"}]
    dataverse.route("GET", "EntityDefinitions", Answer(200, {
        "value": [bank, contact, intersect, *skipped]}))
    # Learn has no `$expand=Attributes` example with mixed types: composed from the
    # documented AttributeMetadata properties.
    bank_attributes = [
        _attribute("sample_bankaccountid", "Uniqueidentifier", IsValidForUpdate=False),
        _attribute("sample_name", "String", MaxLength=100,
                   RequiredLevel={"Value": "ApplicationRequired"}),
        _attribute("accountcategorycode", "Picklist"),
        _attribute("sample_customer", "Customer"),
        _attribute("sample_customername", "String", AttributeOf="sample_customer"),
        _attribute("sample_money", "Money", Precision=1),
        _attribute("sample_calculated", "Decimal", Precision=2, SourceType=1),
        _attribute("statecode", "State"),
        _attribute("createdon", "DateTime", IsValidForCreate=False, IsValidForUpdate=False),
        _attribute("modifiedon", "DateTime", IsValidForCreate=False, IsValidForUpdate=False),
    ]
    dataverse.route("GET", "EntityDefinitions(LogicalName='sample_bankaccount')?$expand",
                    Answer(200, {**bank, "Attributes": bank_attributes}))
    cast = "EntityDefinitions(LogicalName='sample_bankaccount')/Attributes/Microsoft.Dynamics.CRM."
    # retrieve-metadata-name-metadataid.md: the Picklist cast with OptionSet and GlobalOptionSet.
    dataverse.route("GET", cast + "PicklistAttributeMetadata", Answer(200, {"value": [
        fixture("dataverse/metadata/attribute-picklist-cast-optionset.response.json")]}))
    state = copy.deepcopy(fixture(
        "dataverse/metadata/attribute-picklist-cast-optionset.response.json"))
    state["LogicalName"] = "statecode"  # composed: Learn shows no State cast answer
    dataverse.route("GET", cast + "StateAttributeMetadata", Answer(200, {"value": [state]}))
    # web-api-metadata-operations-sample.md: the Lookup cast with $select=Targets (account,
    # contact); as a collection item it carries its LogicalName.
    targets = fixture("dataverse/metadata/attribute-lookup-cast-targets.response.json")
    dataverse.route("GET", cast + "LookupAttributeMetadata", Answer(200, {"value": [
        {**targets, "LogicalName": "sample_customer", "Targets": ["account", "contact"]}]}))
    dataverse.route("GET", "EntityDefinitions(LogicalName='contact')?$expand", Answer(200, {
        **contact, "Attributes": [_attribute("contactid", "Uniqueidentifier"),
                                  _attribute("fullname", "String", MaxLength=160),
                                  _attribute("modifiedon", "DateTime", IsValidForUpdate=False)]}))
    dataverse.route("GET", "EntityDefinitions(LogicalName='sample_sample_bankaccounts_contacts')"
                    "?$expand", Answer(200, {**intersect, "Attributes": [
                        _attribute("sample_sample_bankaccounts_contactsid", "Uniqueidentifier"),
                        _attribute("sample_bankaccountid", "Uniqueidentifier"),
                        _attribute("contactid", "Uniqueidentifier")]}))
    # web-api-metadata-operations-sample.md: the ManyToManyRelationshipMetadata cast.
    dataverse.route("GET", "RelationshipDefinitions/Microsoft.Dynamics.CRM.ManyToMany",
                    Answer(200, {"value": [fixture(
                        "dataverse/metadata/relationship-manytomany-cast.response.json")]}))


def test_dynamics_metadata_from_entity_definitions_with_casts(dataverse) -> None:
    _metadata(dataverse)
    backend = dataverse.backend()
    entities = {e.logicalname: e for e in backend.read_metadata()}
    backend.close()
    # Private, virtual, elastic and known-to-fail tables are not offered.
    assert sorted(entities) == ["contact", "sample_bankaccount",
                                "sample_sample_bankaccounts_contacts"]
    bank = entities["sample_bankaccount"]
    assert (bank.displayname, bank.entitysetname, bank.primaryidattribute,
            bank.primarynameattribute) == ("Bank Account", "sample_bankaccounts",
                                           "sample_bankaccountid", "sample_name")
    attrs = {a.logicalname: a for a in bank.attributes}
    assert "sample_customername" not in attrs  # a helper column of the lookup
    assert attrs["sample_name"].maxlength == 100 and attrs["sample_name"].required
    assert [(o.value, o.label) for o in attrs["accountcategorycode"].options] == [
        (1, "Preferred Customer"), (2, "Standard")]
    assert attrs["statecode"].type == "picklist" and attrs["statecode"].options
    assert (attrs["sample_customer"].type, attrs["sample_customer"].targets) == (
        "lookup", ["account", "contact"])
    assert attrs["sample_money"].precision == 1
    assert attrs["sample_calculated"].issystem  # calculated: synced down, never up
    assert attrs["modifiedon"].issystem and not attrs["sample_name"].issystem
    link = entities["sample_sample_bankaccounts_contacts"]
    assert link.isintersect
    sides = {a.logicalname: (a.type, a.targets) for a in link.attributes}
    assert sides["sample_bankaccountid"] == ("lookup", ["sample_bankaccount"])
    assert sides["contactid"] == ("lookup", ["contact"])


ACCOUNT = Entity("account", primaryidattribute="accountid", entitysetname="accounts",
                 attributes=[Attribute("accountid", "uniqueidentifier"),
                             Attribute("name", "string"), Attribute("accountnumber", "string"),
                             Attribute("telephone1", "string"), Attribute("fax", "string"),
                             Attribute("modifiedon", "datetime", issystem=True),
                             Attribute("ownerid", "lookup", targets=["systemuser", "team"])])


def _accounts(dataverse: Dataverse, *, tracked: bool = True) -> None:
    definition = {"LogicalName": "account", "EntitySetName": "accounts",
                  "PrimaryIdAttribute": "accountid", "ChangeTrackingEnabled": tracked}
    dataverse.route("GET", "EntityDefinitions", Answer(200, {"value": [
        definition, {"LogicalName": "team", "EntitySetName": "teams",
                     "PrimaryIdAttribute": "teamid"},
        {"LogicalName": "systemuser", "EntitySetName": "systemusers",
         "PrimaryIdAttribute": "systemuserid"}]}))
    dataverse.route("GET", "EntityDefinitions(LogicalName='account')?$expand", Answer(200, {
        **definition, "Attributes": [_attribute(a.logicalname, "String")
                                     for a in ACCOUNT.attributes]}))


def test_dynamics_delta_pages_with_deleted_entity(dataverse) -> None:
    # MicrosoftDocs/powerapps-docs use-change-tracking-synchronize-data-external-systems.md:
    # the initial answer to odata.track-changes, then the delta with a $deletedEntity.
    _accounts(dataverse)
    initial = dataverse.urls(fixture(
        "dataverse/change-tracking/accounts-initial-track-changes.response.json"))
    delta = dataverse.urls(fixture("dataverse/change-tracking/accounts-delta.response.json"))
    dataverse.route("GET", "accounts?$select", Answer(200, initial))
    backend = dataverse.backend()
    [page] = list(backend.read_changes(ACCOUNT, None, page_size=5000))
    seen = dataverse.server.requests_to(API + "accounts?")[-1]
    assert "odata.track-changes" in seen.headers["Prefer"]
    assert "odata.maxpagesize=5000" in seen.headers["Prefer"]
    assert "$select=accountid,name,accountnumber,telephone1,fax,modifiedon,_ownerid_value" \
        in seen.path
    assert page.complete and not page.reconcile
    assert page.link == initial["@odata.deltaLink"]
    assert page.upserts == [{"name": "Monte Orton", "accountnumber": None, "telephone1": "555000",
                             "fax": "10101", "accountid": "60c4e274-0d87-e711-80e5-00155db19e6d"}]
    assert page.versions == {"60c4e274-0d87-e711-80e5-00155db19e6d": 'W/"915244"'}
    # The delta link (v9.0 in the doc) is followed as given.
    dataverse.server.route("GET", "/api/data/v9.0/accounts?$select", Answer(200, delta))
    [page] = list(backend.read_changes(ACCOUNT, page.link))
    assert page.deleted == ["2e451703-c686-e711-80e5-00155db19e6d"]
    assert [r["accountid"] for r in page.upserts] == ["60c4e274-0d87-e711-80e5-00155db19e6d"]
    assert page.link == delta["@odata.deltaLink"] and page.complete
    backend.close()


def test_dynamics_an_expired_delta_token_reads_again_in_full_with_reconciliation(
        dataverse) -> None:
    _accounts(dataverse)
    initial = dataverse.urls(fixture(
        "dataverse/change-tracking/accounts-initial-track-changes.response.json"))
    dataverse.route("GET", "accounts?$select", Answer(200, initial))
    # Learn documents no Web API body for an expired delta token; composed in Dataverse's
    # error shape with the SDK's ExpiredVersionStamp code.
    dataverse.route("GET", "accounts?$select=name&$deltatoken", Answer(400, {"error": {
        "code": "0x80044352", "message": "Version stamp associated with the client has "
                                          "expired. Please perform a full sync."}}))
    backend = dataverse.backend()
    old = f"{dataverse.server.url}{API}accounts?$select=name&$deltatoken=1%2101%2f01%2f2020"
    [page] = list(backend.read_changes(ACCOUNT, old))
    backend.close()
    assert page.reconcile and page.complete
    assert "Version stamp associated with the client has expired" in (page.note or "")
    assert "reading account again in full" in (page.note or "")
    assert [r["accountid"] for r in page.upserts] == ["60c4e274-0d87-e711-80e5-00155db19e6d"]


def test_dynamics_a_table_without_change_tracking_continues_from_modifiedon(dataverse) -> None:
    _accounts(dataverse, tracked=False)
    # page-results.md shows the paging shape (odata.maxpagesize, @odata.nextLink); the
    # records are composed, with the modifiedon an untracked read continues from.
    first = {"value": [{"@odata.etag": 'W/"1"', "accountid": "A1", "name": "one",
                        "modifiedon": "2026-11-30T10:00:00Z"}],
             "@odata.nextLink": f"{dataverse.server.url}{API}accounts?$select=name&"
                                "$skiptoken=page2"}
    second = {"value": [{"@odata.etag": 'W/"2"', "accountid": "A2", "name": "two",
                         "modifiedon": "2026-12-01T09:00:00Z"}]}
    dataverse.route("GET", "accounts?$select=accountid", Answer(200, first))
    dataverse.route("GET", "accounts?$select=name&$skiptoken", Answer(200, second))
    backend = dataverse.backend()
    pages = list(backend.read_changes(ACCOUNT, None))
    backend.close()
    assert "odata.track-changes" not in dataverse.server.seen[-1].headers["Prefer"]
    assert [p.reconcile for p in pages] == [True, True]
    assert [r["accountid"] for p in pages for r in p.upserts] == ["a1", "a2"]
    assert pages[-1].complete
    assert pages[-1].link is not None and \
        pages[-1].link.endswith("&$filter=modifiedon ge 2026-12-01T09:00:00Z")


def test_dynamics_records_with_annotations_and_polymorphic_lookups(dataverse) -> None:
    # MicrosoftDocs/powerapps-docs webapi/query/select-columns.md: _ownerid_value with
    # lookuplogicalname team / systemuser and associatednavigationproperty ownerid.
    _accounts(dataverse)
    payload = fixture("dataverse/query/accounts-lookup-annotations.response.json")
    backend = dataverse.backend()
    page = backend.changes_page(ACCOUNT, payload)
    assert page.upserts[0] == {"name": "Adventure Works (sample)",
                               "ownerid": "39e0dbe4-131b-e111-ba7e-78e7d1620f5e",
                               "accountid": "1adef0b8-54d3-ed11-a7c7-000d3a993550"}
    owner = ACCOUNT.attribute("ownerid")
    assert owner is not None
    # Written back, each owner binds the table it was read from.
    body = backend.record_to_server(ACCOUNT, {"name": "x", "ownerid": page.upserts[1]["ownerid"]})
    assert body == {"name": "x",
                    "ownerid@odata.bind": "/systemusers(4026be43-6b69-e111-8f65-78e7d1620f5e)"}
    body = backend.record_to_server(ACCOUNT, {"ownerid": page.upserts[0]["ownerid"]})
    assert body == {"ownerid@odata.bind": "/teams(39e0dbe4-131b-e111-ba7e-78e7d1620f5e)"}
    assert backend.record_to_server(ACCOUNT, {"ownerid": None}) == {"ownerid@odata.bind": None}
    backend.close()


CONTACT = Entity("contact", primaryidattribute="contactid", entitysetname="contacts",
                 attributes=[Attribute("contactid", "uniqueidentifier"),
                             Attribute("lastname", "string"),
                             Attribute("fullname", "string", issystem=True),
                             Attribute("parentcustomerid", "lookup",
                                       targets=["account", "contact"])])


def test_dynamics_a_polymorphic_lookup_not_read_before_is_found_and_bound(dataverse) -> None:
    definition = {"LogicalName": "contact", "EntitySetName": "contacts",
                  "PrimaryIdAttribute": "contactid"}
    dataverse.route("GET", "EntityDefinitions", Answer(200, {"value": [definition, {
        "LogicalName": "account", "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid"}]}))
    dataverse.route("GET", "EntityDefinitions(LogicalName='contact')?$expand", Answer(200, {
        **definition, "Attributes": [
            _attribute("contactid", "Uniqueidentifier"), _attribute("lastname", "String"),
            _attribute("fullname", "String", IsValidForCreate=False, IsValidForUpdate=False),
            _attribute("parentcustomerid", "Customer")]}))
    dataverse.route("GET", "accounts(", Answer(404, fixture(
        "dataverse/errors/404-record-not-found.response.json")))
    dataverse.route("GET", "contacts(", Answer(200, {"contactid": "c2"}))
    backend = dataverse.backend()
    # fullname is computed by the server: never sent up.
    body = backend.record_to_server(CONTACT, {"lastname": "L", "fullname": "F L",
                                              "parentcustomerid": "c2"})
    assert body == {"lastname": "L", "parentcustomerid_contact@odata.bind": "/contacts(c2)"}
    # A parent created in the same round is bound without asking the server.
    body = backend.record_to_server(CONTACT, {"parentcustomerid": "new1"},
                                    created={"new1": "account"})
    assert body == {"parentcustomerid_account@odata.bind": "/accounts(new1)"}
    backend.close()


def _batch_server(dataverse: Dataverse, answers: dict[str, Answer]) -> list[RequestPart]:
    """A `$batch` endpoint answering each part by its URL's last segment; the parts it got."""
    received: list[RequestPart] = []

    def answer(seen: Seen) -> Answer:
        parts = multipart.parse_batch_request(seen.body, seen.headers["Content-Type"])
        received.extend(parts)
        out = []
        for part in parts:
            canned = answers[part.url.rsplit("/", 1)[-1]]
            body = canned.body if isinstance(canned.body, bytes) else json.dumps(
                canned.body).encode()
            out.append(multipart.ResponsePart(canned.status, {
                "Content-Type": "application/json; odata.metadata=minimal", **canned.headers},
                body, part.content_id))
        data, content_type = multipart.write_batch_response(out)
        return Answer(200, data, {"Content-Type": content_type})

    dataverse.route("POST", "$batch", answer)
    return received


def test_dynamics_writes_conditional_upserts_in_a_batch_and_maps_each_answer(dataverse) -> None:
    # MicrosoftDocs/powerapps-docs perform-conditional-operations-using-web-api.md: the 412
    # (ETag mismatch, and a create of a record that exists) and 404 bodies;
    # compose-http-requests-handle-errors.md: a plugin's 400 with annotations.
    _accounts(dataverse)
    received = _batch_server(dataverse, {
        "accounts(a1)": Answer(200, {"@odata.etag": 'W/"9"', "accountid": "a1", "name": "n",
                                     "modifiedon": "2026-12-02T00:00:00Z"}),
        "accounts(a2)": Answer(412, fixture(
            "dataverse/errors/412-concurrency-etag-mismatch.response.json")),
        "accounts(a3)": Answer(412, fixture(
            "dataverse/errors/412-duplicate-key-upsert-if-none-match.response.json")),
        "accounts(a4)": Answer(404, fixture("dataverse/errors/404-record-not-found.response.json")),
        "accounts(a5)": Answer(400, fixture(
            "dataverse/errors/400-plugin-error-annotations.response.json")),
        "accounts(a6)": Answer(204, b""),
    })
    backend = dataverse.backend()
    results = backend.apply_writes([
        Write(ACCOUNT, "a1", "upsert", {"name": "n"}, create_only=True),
        Write(ACCOUNT, "a2", "upsert", {"name": "n"}, if_match='W/"1"'),
        Write(ACCOUNT, "a3", "upsert", {"name": "n"}, create_only=True),
        Write(ACCOUNT, "a4", "upsert", {"name": "n"}, if_match='W/"1"'),
        Write(ACCOUNT, "a5", "upsert", {"name": "n"}),
        Write(ACCOUNT, "a6", "delete", if_match='W/"3"'),
    ])
    backend.close()
    assert [r.status for r in results] == ["ok", "conflict", "conflict", "missing", "error", "ok"]
    assert results[0].version == 'W/"9"' and results[0].record is not None
    assert results[0].record["modifiedon"] == "2026-12-02T00:00:00Z"
    assert "doesn't match the RowVersion" in (results[1].message or "")
    assert (results[4].message or "").startswith("400: ")
    [batch] = dataverse.server.requests_to(API + "$batch")
    assert batch.headers["Prefer"] == "odata.continue-on-error"
    sent = {p.url.rsplit("/", 1)[-1]: p for p in received}
    assert [p.method for p in received] == ["PATCH"] * 5 + ["DELETE"]
    assert all(p.changeset is None for p in received)  # each write stands alone
    assert sent["accounts(a1)"].header("If-None-Match") == "*"
    assert sent["accounts(a2)"].header("If-Match") == 'W/"1"'
    assert sent["accounts(a6)"].header("If-Match") == 'W/"3"'
    assert json.loads(sent["accounts(a1)"].body) == {"name": "n"}


def test_dynamics_reads_the_documented_continue_on_error_batch_answer(dataverse) -> None:
    # MicrosoftDocs/powerapps-docs execute-batch-operations-using-web-api.md: with
    # Prefer: odata.continue-on-error, a 400 part (0x80044331) then two 204 parts.
    text = (FIXTURES / "dataverse/batch/error-continue-on-error.response.http").read_text()
    body = text.split("\n\n", 1)[1]
    boundary = body.split("\n", 1)[0][2:]
    _accounts(dataverse)
    dataverse.route("POST", "$batch", Answer(200, body.encode(), {
        "Content-Type": f"multipart/mixed; boundary={boundary}"}))
    backend = dataverse.backend()
    results = backend.apply_writes([Write(ACCOUNT, f"t{n}", "upsert", {"name": "x"},
                                          create_only=True) for n in range(3)])
    backend.close()
    assert [r.status for r in results] == ["error", "ok", "ok"]
    assert "The length of the 'subject' attribute" in (results[0].message or "")


def test_dynamics_a_batch_over_1000_writes_goes_in_several(dataverse) -> None:
    _accounts(dataverse)
    received = _batch_server(dataverse, {f"accounts(r{n})": Answer(204, b"")
                                         for n in range(1500)})
    backend = dataverse.backend()
    results = backend.apply_writes([Write(ACCOUNT, f"r{n}", "delete") for n in range(1500)])
    backend.close()
    assert len(dataverse.server.requests_to(API + "$batch")) == 2
    assert len(received) == 1500 and {r.status for r in results} == {"ok"}


# The N:N of _metadata's two tables, and Dataverse's refusal to write one of its rows
# itself (composed: Learn shows no body).
LINK = Entity("sample_sample_bankaccounts_contacts", isintersect=True,
              primaryidattribute="sample_sample_bankaccounts_contactsid",
              entitysetname="sample_sample_bankaccounts_contactsset", attributes=[
                  Attribute("sample_bankaccountid", "lookup", targets=["sample_bankaccount"]),
                  Attribute("contactid", "lookup", targets=["contact"])])
REFUSED_ROW = Answer(400, {"error": {"code": "0x80040203", "message": "The 'Create' method "
                                     "does not support entities of type 'intersect'"}})


def test_dynamics_associates_and_disassociates_n_to_n_rows(dataverse) -> None:
    _metadata(dataverse)
    link = LINK
    nav = "sample_bankaccounts(b1)/sample_sample_BankAccounts_Contacts"
    _batch_server(dataverse, {f"sample_sample_bankaccounts_contactsset({row})": REFUSED_ROW
                              for row in ("r1", "r2", "r3")})
    dataverse.route("POST", nav + "/$ref", Answer(204, b""))
    dataverse.route("GET", "sample_sample_bankaccounts_contactsset?", Answer(200, {"value": []}))
    dataverse.route("GET", "sample_sample_bankaccounts_contactsset(r2)", Answer(200, {
        "sample_sample_bankaccounts_contactsid": "r2", "sample_bankaccountid": "b1",
        "contactid": "c9"}))
    dataverse.route("GET", "sample_sample_bankaccounts_contactsset(r3)", Answer(404, {
        "error": {"code": "", "message": "gone"}}))
    dataverse.route("DELETE", nav + "(c9)/$ref", Answer(204, b""))
    backend = dataverse.backend()
    results = backend.apply_writes([
        Write(link, "r1", "upsert", {"sample_bankaccountid": "b1", "contactid": "c1"},
              create_only=True),
        Write(link, "r2", "delete"), Write(link, "r3", "delete")])
    backend.close()
    assert [r.status for r in results] == ["ok", "ok", "missing"]
    # Tried once as a row (in the batch), then associated; deletes went to disassociate.
    assert len(dataverse.server.requests_to(API + "$batch")) == 1
    post = dataverse.server.requests_to(API + nav + "/$ref")[0]
    assert post.json() == {"@odata.id": f"{dataverse.server.url}{API}contacts(c1)"}
    assert dataverse.server.requests_to(API + nav + "(c9)/$ref")[0].method == "DELETE"


def test_dynamics_an_associated_n_to_n_row_maps_to_the_servers_own_row_id(dataverse) -> None:
    # associate-disassociate-entities-using-web-api.md: POST .../$ref answers 204 and the
    # server makes the intersect row with an id of its own; reading the intersect table by
    # its two ids finds it (query-data-web-api.md: $filter on the lookup columns).
    _metadata(dataverse)
    link = LINK
    rows = "sample_sample_bankaccounts_contactsset"
    nav = "sample_bankaccounts(b1)/sample_sample_BankAccounts_Contacts"
    _batch_server(dataverse, {f"{rows}(r1)": REFUSED_ROW})
    dataverse.route("POST", nav + "/$ref", Answer(204, b""))
    server_row = {"sample_sample_bankaccounts_contactsid": "5E0F5A7C-0000-4000-8000-00000000A001",
                  "sample_bankaccountid": "b1", "contactid": "c1"}
    dataverse.route("GET", rows + "?", Answer(200, {"value": [
        {"sample_sample_bankaccounts_contactsid": server_row[
            "sample_sample_bankaccounts_contactsid"]}]}))
    backend = dataverse.backend()
    [result] = backend.apply_writes([Write(link, "r1", "upsert", {
        "sample_bankaccountid": "b1", "contactid": "c1"}, create_only=True)])
    assert result.status == "ok"
    assert result.server_key == "5e0f5a7c-0000-4000-8000-00000000a001"
    [lookup] = dataverse.server.requests_to(API + rows + "?")
    assert "$filter=sample_bankaccountid%20eq%20b1%20and%20contactid%20eq%20c1" in lookup.path
    # The delete reads the row by the server's id (the engine gives it as the server key).
    dataverse.route("GET", f"{rows}(5e0f5a7c", Answer(200, server_row))
    dataverse.route("DELETE", nav + "(c1)/$ref", Answer(204, b""))
    [result] = backend.apply_writes([Write(link, "r1", "delete",
                                           server_key="5e0f5a7c-0000-4000-8000-00000000a001")])
    assert result.status == "ok"
    assert dataverse.server.requests_to(API + nav + "(c1)/$ref")[0].method == "DELETE"
    # Pages of an intersect table name each row's server id, for the engine to map.
    dataverse.route("GET", rows + "?", Answer(200, {
        "value": [{"@odata.etag": 'W/"1"', **server_row}],
        "@odata.deltaLink": f"{dataverse.server.url}{API}{rows}?$deltatoken=1"}))
    [page] = list(backend.read_changes(link, None))
    backend.close()
    assert page.keys == {"5e0f5a7c-0000-4000-8000-00000000a001":
                         "5e0f5a7c-0000-4000-8000-00000000a001"}


def test_dynamics_429_waits_as_retry_after_says(dataverse) -> None:
    # api-limits.md: 429 with Retry-After (seconds) and the 0x80072322 message.
    answers = [Answer(429, {"error": {"code": "0x80072322", "message": "Number of requests "
                                      "exceeded the limit of 6000 over time window of 300 "
                                      "seconds."}}, {"Retry-After": "1"}),
               Answer(200, fixture("dataverse/whoami.response.json"))]
    seen: list[float] = []

    def answer(_: Seen) -> Answer:
        seen.append(time.monotonic())
        return answers.pop(0)

    dataverse.route("GET", "WhoAmI()", answer)
    backend = dataverse.backend()
    backend.check_credentials()
    backend.close()
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.9


def test_dynamics_a_wait_longer_than_a_run_stops_it_with_the_reason(dataverse) -> None:
    dataverse.route("GET", "WhoAmI()", Answer(429, {"error": {
        "code": "0x80072321", "message": "Combined execution time of incoming requests "
                                         "exceeded limit"}}, {"Retry-After": str(MAX_WAIT_S * 3)}))
    backend = dataverse.backend()
    # ServerLimited: the run ends "limited" (not failed), and the next run resumes.
    with pytest.raises(ServerLimited, match="service protection limits.*next run continues"):
        backend.check_credentials()
    backend.close()
    assert len(dataverse.server.requests_to(API + "WhoAmI()")) == 1  # no waiting, no retry


def test_dynamics_low_ratelimit_headers_slow_the_run_down(dataverse) -> None:
    # api-limits.md names the headers, not their values: these are composed (6,000 requests
    # left, then 5 of them).
    left = ["6000", "5"]
    dataverse.route("GET", "WhoAmI()", lambda seen: Answer(
        200, fixture("dataverse/whoami.response.json"), {
            "x-ms-ratelimit-burst-remaining-xrm-requests": left.pop(0),
            "x-ms-ratelimit-time-remaining-xrm-requests": "1200000"}))
    backend = dataverse.backend()
    backend.check_credentials()
    started = time.monotonic()
    backend.check_credentials()
    assert time.monotonic() - started >= 0.9  # it paused before going on
    backend.close()


def test_dynamics_an_explicit_authority_is_used_without_asking_the_server(dataverse) -> None:
    dataverse.route("GET", "WhoAmI()", Answer(200, fixture("dataverse/whoami.response.json")))
    backend = dataverse.backend(authority=f"{dataverse.server.url}/{TENANT}")
    backend.check_credentials()
    backend.close()
    assert all("Authorization" in s.headers for s in dataverse.server.requests_to(API))
    # The token is for the environment itself when no challenge named a resource.
    token = dataverse.server.requests_to(f"/{TENANT}/oauth2/v2.0/token")[0].form()
    assert token["scope"] == f"{dataverse.server.url}/.default"
    named = DynamicsBackend("https://contoso.crm4.dynamics.com", "u", "p",
                            tenant="contoso.onmicrosoft.com", allow_private=True)  # no DNS here
    assert named.authority == "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    named.close()

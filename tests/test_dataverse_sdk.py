"""The Dataverse root against software nobody here wrote: msal and Microsoft's Dataverse SDK.

A real portal process serves HTTPS (gunicorn with a trustme CA; the SDK refuses
plain HTTP); clients trust the CA through REQUESTS_CA_BUNDLE. msal gets tokens
from the org's authority `https://127.0.0.1:PORT/dataverse/sales` (instance
discovery off, as for any authority that is not Microsoft's), and the SDK
(`powerplatform-dataverse-client`) gets its token from msal through an
azure.core TokenCredential.
"""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from portal import create_app
from portal.db import get_db
from portal.orgs import application_users, records, registry, store
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.portal_process import PortalProcess, Tls

PUBLIC_CLIENT = "51f81489-12ee-4a9e-aaae-a2591f45987d"  # Microsoft's Dataverse samples


class Served:
    """A TLS portal serving `sales` and `other`, with an application user of `sales`."""

    def __init__(self, process: PortalProcess, org: store.OrgDb, client_id: str, secret: str,
                 other_client: tuple[str, str]) -> None:
        self.process, self.org = process, org
        self.client_id, self.secret = client_id, secret
        self.other_client = other_client

    def authority(self, org: str = "sales") -> str:
        """The org's OAuth 2.0 authority, as MSAL is given it."""
        return f"{self.process.url}/dataverse/{org}"

    def scope(self, org: str = "sales") -> str:
        """The scope the SDK asks for: the org URL + /.default."""
        return f"{self.process.url}/dataverse/{org}/.default"


@pytest.fixture
def served(tmp_path: Path, redis_url: str, portal_process: Any,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The portal process over TLS, its CA trusted by requests (and so msal and the SDK)."""
    instance = tmp_path / "served"
    app = create_app({"INSTANCE_PATH": instance, "REDIS_URL": redis_url})
    with app.app_context():
        for name, email in (("sales", ADMIN_EMAIL), ("other", "boss@other.example")):
            registry.create_org(get_db(), instance / "orgs", name, email=email,
                                password=ADMIN_PASSWORD, template="sales")
        row, secret = application_users.create_application_user(get_db(), "sales", "SDK",
                                                                 admin=True)
        other_row, other_secret = application_users.create_application_user(
            get_db(), "other", "SDK")
    tls = Tls.make(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    process = portal_process(instance, tls=tls,
                             env={"PORTAL_DATAVERSE_SERVICE_PROTECTION": "true"})
    org = store.open_org(instance / "orgs", "sales")
    yield Served(process, org, row["client_id"], secret,
                 (other_row["client_id"], other_secret))
    org.close()


def confidential_app(served: Served, client_id: str | None = None, secret: str | None = None,
                     org: str = "sales") -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        client_id or served.client_id, client_credential=secret or served.secret,
        authority=served.authority(org), instance_discovery=False, validate_authority=False)


class MsalCredential:
    """An azure.core TokenCredential whose tokens come from the portal's token endpoint."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        """What azure.core's TokenCredential protocol asks for."""
        from azure.core.credentials import AccessToken

        result = self.app.acquire_token_for_client(scopes=list(scopes))
        assert "access_token" in result, result
        return AccessToken(result["access_token"], int(time.time()) + result["expires_in"])

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        """The newer form of get_token."""
        from azure.core.credentials import AccessTokenInfo

        token = self.get_token(*scopes)
        return AccessTokenInfo(token.token, token.expires_on)


def test_msal_client_credentials_from_the_portals_authority(served: Served) -> None:
    result = confidential_app(served).acquire_token_for_client(scopes=[served.scope()])
    assert result.get("token_type") == "Bearer" and result["access_token"], result
    who = requests.get(served.process.url + "/dataverse/sales/api/data/v9.2/WhoAmI",
                       headers={"Authorization": f"Bearer {result['access_token']}"}, timeout=30)
    assert who.status_code == 200 and set(who.json()) >= {"UserId", "OrganizationId"}


class DefaultPortToTestPort(requests.adapters.HTTPAdapter):
    """Sends https://127.0.0.1/... to the test portal's port.

    msal's user realm discovery (msal/authority.py, user_realm_discovery) builds
    its URL from the authority's host name without its port, so with an authority
    on a port other than 443 it would knock on 127.0.0.1:443. A portal on 443
    answers it itself (/common/userrealm/<user>).
    """

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
             ) -> requests.Response:
        """Rewrite the URL to the test port, then send."""
        assert request.url is not None
        request.url = request.url.replace("https://127.0.0.1/", f"https://127.0.0.1:{self.port}/",
                                          1)
        return super().send(request, *args, **kwargs)


def test_msal_username_password_from_the_portals_authority(served: Served) -> None:
    import msal

    session = requests.Session()
    session.mount("https://127.0.0.1/", DefaultPortToTestPort(served.process.port))
    app = msal.PublicClientApplication(PUBLIC_CLIENT, authority=served.authority(),
                                       instance_discovery=False, validate_authority=False,
                                       http_client=session)
    # msal 1.39 deprecates the password grant for public clients (it still works);
    # Microsoft's Dataverse samples use it.
    with pytest.warns(DeprecationWarning, match="deprecated for public client flows"):
        result = app.acquire_token_by_username_password(ADMIN_EMAIL, ADMIN_PASSWORD,
                                                        scopes=[served.scope()])
    assert "access_token" in result, result
    accounts = requests.get(served.process.url + "/dataverse/sales/api/data/v9.2/accounts",
                            headers={"Authorization": f"Bearer {result['access_token']}"},
                            timeout=30)
    assert accounts.status_code == 200
    with pytest.warns(DeprecationWarning, match="deprecated for public client flows"):
        wrong = app.acquire_token_by_username_password(ADMIN_EMAIL, "wrong-pass-1",
                                                       scopes=[served.scope()])
    assert wrong["error"] == "invalid_grant" and 50126 in wrong["error_codes"]


def test_msal_wrong_secret_gets_entras_error(served: Served) -> None:
    result = confidential_app(served, secret="crs_wrong").acquire_token_for_client(
        scopes=[served.scope()])
    assert "access_token" not in result
    assert result["error"] == "invalid_client" and result["error_codes"] == [7000215]
    assert {"error_description", "timestamp", "trace_id", "correlation_id"} <= set(result)


def test_token_of_org_a_is_refused_on_org_b(served: Served) -> None:
    token = confidential_app(served).acquire_token_for_client(
        scopes=[served.scope()])["access_token"]
    answer = requests.get(served.process.url + "/dataverse/other/api/data/v9.2/accounts",
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer error=invalid_token")
    assert f"authorization_uri={served.authority('other')}/oauth2/authorize" in \
        answer.headers["WWW-Authenticate"]
    # other's own application user does get in.
    own = confidential_app(served, *served.other_client, org="other").acquire_token_for_client(
        scopes=[served.scope("other")])
    assert requests.get(served.process.url + "/dataverse/other/api/data/v9.2/accounts",
                        headers={"Authorization": f"Bearer {own['access_token']}"},
                        timeout=30).status_code == 200


def test_a_client_finds_the_authority_from_the_org_url_alone(served: Served) -> None:
    answer = requests.get(served.process.url + "/dataverse/sales/api/data/v9.2/", timeout=30)
    assert answer.status_code == 401
    challenge = answer.headers["WWW-Authenticate"]
    authorization_uri = challenge.split("authorization_uri=")[1].split(",")[0]
    found_authority = authorization_uri.removesuffix("/oauth2/authorize")
    assert found_authority == served.authority()
    import msal

    app = msal.ConfidentialClientApplication(
        served.client_id, client_credential=served.secret, authority=found_authority,
        instance_discovery=False, validate_authority=False)
    assert "access_token" in app.acquire_token_for_client(scopes=[served.scope()])


def sdk_client(served: Served) -> Any:
    from PowerPlatform.Dataverse.client import DataverseClient

    return DataverseClient(f"{served.process.url}/dataverse/sales",
                           MsalCredential(confidential_app(served)))


def test_sdk_records_create_get_update_delete(served: Served) -> None:
    client = sdk_client(served)
    account_id = client.records.create("account", {"name": "Contoso", "revenue": 1200.5,
                                                   "numberofemployees": 12})
    assert uuid.UUID(account_id)
    fetched = client.records.retrieve("account", account_id, select=["name", "revenue"])
    assert fetched["name"] == "Contoso" and fetched["revenue"] == 1200.5
    client.records.update("account", account_id, {"name": "Contoso Ltd"})
    assert client.records.retrieve("account", account_id)["name"] == "Contoso Ltd"
    # The same write as through the Org API: the record is in the org file, versioned.
    row = served.org.db.execute("SELECT name, versionnumber FROM account WHERE accountid = ?",
                                [account_id]).fetchone()
    assert row[0] == "Contoso Ltd" and row[1] > 0
    contact_id = client.records.create("contact", {
        "lastname": "Doe", "parentcustomerid_account@odata.bind": f"/accounts({account_id})"})
    contact = client.records.retrieve("contact", contact_id)
    assert contact["_parentcustomerid_value"] == account_id
    client.records.delete("contact", contact_id)
    client.records.delete("account", account_id)
    assert served.org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 0
    assert served.org.db.execute("SELECT count(*) FROM _tombstones").fetchone()[0] == 2


def test_sdk_records_list_with_filter_select_orderby_and_paging(served: Served) -> None:
    records.save_records(served.org, "account", [
        {"accountid": str(uuid.UUID(int=i + 1)), "name": f"Account {i:04d}",
         "numberofemployees": i} for i in range(1200)])
    client = sdk_client(served)
    result = client.records.list("account", filter="numberofemployees ge 1000",
                                 select=["name", "numberofemployees"],
                                 orderby=["numberofemployees desc"], page_size=50)
    rows = list(result)
    assert len(rows) == 200
    assert rows[0]["name"] == "Account 1199" and rows[-1]["name"] == "Account 1000"
    everything = list(client.records.list("account", select=["name"], page_size=500))
    assert len({r["accountid"] for r in everything}) == 1200


def test_sdk_records_create_many_update_many_upsert_and_delete_many(served: Served) -> None:
    from PowerPlatform.Dataverse.models.upsert import UpsertItem

    client = sdk_client(served)
    ids = client.records.create("account", [{"name": f"Bulk {i}"} for i in range(3)])
    assert len(ids) == 3
    assert served.org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 3
    client.records.update("account", ids, {"numberofemployees": 7})  # UpdateMultiple
    assert {r[0] for r in served.org.db.execute("SELECT numberofemployees FROM account")} == {7}
    client.records.update("account", ids[:2], [{"name": "First"}, {"name": "Second"}])
    assert client.records.retrieve("account", ids[1])["name"] == "Second"
    new_id = str(uuid.uuid4())
    client.records.upsert("account", [UpsertItem(alternate_key={"accountid": new_id},
                                                 record={"name": "Upserted"})])
    client.records.upsert("account", [
        UpsertItem(alternate_key={"accountid": new_id}, record={"name": "Upserted again"}),
        UpsertItem(alternate_key={"accountid": ids[0]}, record={"name": "First again"})])
    assert client.records.retrieve("account", new_id)["name"] == "Upserted again"
    assert client.records.retrieve("account", ids[0])["name"] == "First again"
    client.records.delete("account", ids + [new_id], use_bulk_delete=False)
    assert served.org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 0


def test_sdk_create_many_is_all_or_nothing(served: Served) -> None:
    from PowerPlatform.Dataverse.core.errors import HttpError

    client = sdk_client(served)
    with pytest.raises(HttpError) as refused:
        client.records.create("account", [{"name": "Good"}, {"name": "x" * 500}])
    assert refused.value.status_code == 400
    assert "Targets[1]" in str(refused.value)
    assert served.org.db.execute("SELECT count(*) FROM account").fetchone()[0] == 0


def test_sdk_reads_lookups_expansions_and_formatted_values(served: Served) -> None:
    client = sdk_client(served)
    account_id = client.records.create("account", {"name": "Contoso", "revenue": 1500})
    contact_id = client.records.create("contact", {
        "lastname": "Doe", "parentcustomerid_account@odata.bind": f"/accounts({account_id})"})
    contact = client.records.retrieve("contact", contact_id, select=["lastname"],
                                      expand=["parentcustomerid_account($select=name)"],
                                      include_annotations="*")
    assert contact["parentcustomerid_account"]["name"] == "Contoso"
    listed = list(client.records.list(
        "account", select=["name", "revenue"], filter=f"accountid eq {account_id}",
        include_annotations="OData.Community.Display.V1.FormattedValue"))
    assert listed[0]["revenue@OData.Community.Display.V1.FormattedValue"] == "$1,500.00"
    contacts = list(client.records.list(
        "contact", select=["lastname", "_parentcustomerid_value"],
        filter=f"_parentcustomerid_value eq {account_id}", count=True))
    assert [c["contactid"] for c in contacts] == [contact_id]


def test_sdk_query_builder(served: Served) -> None:
    from PowerPlatform.Dataverse.models.filters import col

    records.save_records(served.org, "account", [
        {"accountid": str(uuid.UUID(int=i + 1)), "name": f"Account {i:03d}",
         "numberofemployees": i, "creditonhold": i % 2 == 0} for i in range(300)])
    client = sdk_client(served)
    result = list(client.query.builder("account")
                  .select("name", "numberofemployees")
                  .where((col("numberofemployees") < 10) | (col("numberofemployees") >= 295))
                  .where(col("creditonhold") == False)  # noqa: E712 - the SDK's operator
                  .where(col("name").startswith("Account"))
                  .order_by("numberofemployees", descending=True)
                  .page_size(2)
                  .execute())
    assert [r["numberofemployees"] for r in result] == [299, 297, 295, 9, 7, 5, 3, 1]
    top = list(client.query.builder("account").where(col("numberofemployees") <= 3)
               .top(2).execute())
    assert len(top) == 2
    # Dataverse's query functions: col.in_ / not_in send Microsoft.Dynamics.CRM.In / NotIn;
    # between / not_between send ge and le.
    within = list(client.query.builder("account").select("numberofemployees")
                  .where(col("numberofemployees").in_([1, 2, 400])).execute())
    assert sorted(r["numberofemployees"] for r in within) == [1, 2]
    outside = list(client.query.builder("account").select("numberofemployees")
                   .where(col("numberofemployees").not_in(list(range(3, 300)))).execute())
    assert sorted(r["numberofemployees"] for r in outside) == [0, 1, 2]
    between = list(client.query.builder("account").select("numberofemployees")
                   .where(col("numberofemployees").between(10, 12)).execute())
    assert sorted(r["numberofemployees"] for r in between) == [10, 11, 12]


def test_sdk_fetchxml_pages_through_a_filtered_query(served: Served) -> None:
    records.save_records(served.org, "account", [
        {"accountid": str(uuid.UUID(int=i + 1)), "name": f"Account {i:03d}",
         "numberofemployees": i} for i in range(30)])
    client = sdk_client(served)
    query = client.query.fetchxml("""
      <fetch count="4">
        <entity name="account">
          <attribute name="name" />
          <order attribute="numberofemployees" descending="true" />
          <filter><condition attribute="numberofemployees" operator="lt" value="10" /></filter>
        </entity>
      </fetch>""")
    pages = list(query.execute_pages())
    names = [r["name"] for page in pages for r in page]
    assert len(pages) == 3
    assert names == [f"Account {i:03d}" for i in range(9, -1, -1)]


def test_sdk_sql_query_is_refused_not_ignored(served: Served) -> None:
    from PowerPlatform.Dataverse.core.errors import HttpError

    records.save_records(served.org, "account", [{"accountid": str(uuid.UUID(int=1)),
                                                  "name": "A"}])
    with pytest.raises(HttpError) as refused:
        sdk_client(served).query.sql("SELECT name FROM account")
    assert refused.value.status_code == 501


def test_sdk_tables_get_list_create_columns_delete(served: Served) -> None:
    client = sdk_client(served)
    account = client.tables.get("account")
    assert account is not None and account["entity_set_name"] == "accounts"
    listed = client.tables.list()
    assert {"account", "contact", "lead"} <= {t["LogicalName"] for t in listed}
    created = client.tables.create("new_widget", {"new_size": "int", "new_note": "string"})
    assert created["entity_set_name"]
    client.tables.add_columns("new_widget", {"new_weight": "decimal"})
    widget_id = client.records.create("new_widget", {"new_name": "W", "new_size": 3,
                                                     "new_weight": 1.5})
    assert client.records.retrieve("new_widget", widget_id)["new_size"] == 3
    client.tables.remove_columns("new_widget", ["new_note"])
    assert "new_note" not in {a.logicalname for a in served.org.entity("new_widget").attributes}
    client.tables.delete("new_widget")
    assert client.tables.get("new_widget") is None


def test_sdk_batch_with_a_change_set(served: Served) -> None:
    client = sdk_client(served)
    account_id = client.records.create("account", {"name": "Batch base"})
    batch = client.batch.new()
    batch.records.retrieve("account", account_id, select=["name"])
    with batch.changeset() as change_set:
        contact = change_set.records.create("contact", {"lastname": "In a change set"})
        change_set.records.update("account", account_id,
                                  {"primarycontactid@odata.bind": contact})
    result = batch.execute()
    assert not result.has_errors, [r.error_message for r in result.failed]
    row = served.org.db.execute("SELECT primarycontactid FROM account WHERE accountid = ?",
                                [account_id]).fetchone()
    assert row[0] is not None
    failing = client.batch.new()
    with failing.changeset() as change_set:
        change_set.records.create("contact", {"lastname": "never written"})
        change_set.records.create("contact", {"firstname": "no lastname"})  # required
    assert failing.execute().has_errors
    assert served.org.db.execute("SELECT count(*) FROM contact WHERE lastname = ?",
                                 ["never written"]).fetchone()[0] == 0


def test_sdk_tables_relationships_and_columns(served: Served) -> None:
    from PowerPlatform.Dataverse.models.relationship import ManyToManyRelationshipMetadata

    client = sdk_client(served)
    client.tables.create("new_order", {"new_total": "decimal"})
    created = client.tables.create_lookup_field("new_order", "new_AccountId", "account",
                                                display_name="Account")
    assert created.relationship_id and created.lookup_schema_name == "new_AccountId"
    found = client.tables.get_relationship(created.relationship_schema_name)
    assert found is not None and found.relationship_id == created.relationship_id
    assert (found.referenced_entity, found.referencing_entity) == ("account", "new_order")
    account_id = client.records.create("account", {"name": "Contoso"})
    order_id = client.records.create("new_order", {
        "new_name": "O-1", "new_AccountId@odata.bind".lower(): f"/accounts({account_id})"})
    assert client.records.retrieve("new_order", order_id)["_new_accountid_value"] == account_id
    listed = client.tables.list_table_relationships("new_order")
    assert created.relationship_schema_name in {r["SchemaName"] for r in listed}
    many = client.tables.create_many_to_many_relationship(ManyToManyRelationshipMetadata(
        schema_name="new_order_contact", entity1_logical_name="new_order",
        entity2_logical_name="contact"))
    assert "new_order_contact" in served.org.entities()
    assert {r["SchemaName"] for r in client.tables.list_relationships()} >= {
        "new_order_contact", created.relationship_schema_name}
    columns = client.tables.list_columns("new_order", select=["LogicalName", "AttributeType"])
    assert {"new_accountid", "new_total"} <= {c["LogicalName"] for c in columns}
    column = client.tables.get_column("new_order", "new_total")
    assert column is not None and column["AttributeType"] == "Decimal"
    client.tables.update_column("new_order", "new_name", {"max_length": 300})
    name = served.org.entity("new_order").attribute("new_name")
    assert name is not None and name.maxlength == 300
    client.tables.delete_relationship(str(many.relationship_id))
    assert "new_order_contact" not in served.org.entities()
    client.tables.delete_relationship(str(created.relationship_id))
    assert served.org.entity("new_order").attribute("new_accountid") is None
    assert client.tables.get_relationship(created.relationship_schema_name) is None


def test_sdk_fetchxml_link_entity_and_aggregate(served: Served) -> None:
    client = sdk_client(served)
    contact_id = client.records.create("contact", {"lastname": "Stubberod",
                                                   "fullname": "Susanna Stubberod"})
    client.records.create("account", [
        {"name": "Litware", "numberofemployees": 10,
         "primarycontactid@odata.bind": f"/contacts({contact_id})"},
        {"name": "Fabrikam", "numberofemployees": 30}])
    joined = [r for page in client.query.fetchxml("""
      <fetch><entity name="account"><attribute name="name" />
        <link-entity name="contact" from="contactid" to="primarycontactid" alias="contact">
          <attribute name="fullname" /></link-entity></entity></fetch>""").execute_pages()
              for r in page]
    assert [(r["name"], r["contact.fullname"]) for r in joined] == [
        ("Litware", "Susanna Stubberod")]
    totals = [r for page in client.query.fetchxml("""
      <fetch aggregate="true"><entity name="account">
        <attribute name="numberofemployees" alias="Total" aggregate="sum" />
        <attribute name="numberofemployees" alias="Average" aggregate="avg" />
      </entity></fetch>""").execute_pages() for r in page]
    assert [(r["Total"], r["Average"]) for r in totals] == [(40, 20)]


def test_sdk_alternate_keys_and_upsert_by_them(served: Served) -> None:
    from PowerPlatform.Dataverse.models.upsert import UpsertItem

    client = sdk_client(served)
    key = client.tables.create_alternate_key("account", "new_AccountNumberKey",
                                             ["accountnumber"], display_name="Account number")
    assert key.metadata_id
    [listed] = client.tables.get_alternate_keys("account")
    assert (listed.schema_name, listed.key_attributes, listed.status) == (
        "new_AccountNumberKey", ["accountnumber"], "Active")
    client.records.upsert("account", [UpsertItem(alternate_key={"accountnumber": "A1"},
                                                 record={"name": "One"})])
    client.records.upsert("account", [
        UpsertItem(alternate_key={"accountnumber": "A1"}, record={"name": "One again"}),
        UpsertItem(alternate_key={"accountnumber": "A2"}, record={"name": "Two"})])
    rows = served.org.db.execute("SELECT accountnumber, name FROM account ORDER BY 1").fetchall()
    assert [tuple(r) for r in rows] == [("A1", "One again"), ("A2", "Two")]
    client.tables.delete_alternate_key("account", str(key.metadata_id))
    assert client.tables.get_alternate_keys("account") == []

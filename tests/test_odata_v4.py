"""The `odata` backend's refusals and sign-ins, against a small scripted service on 127.0.0.1.

Bad input gets a clear failure and changes nothing: a URL that serves no
`$metadata`, an OData v2 service, a `$metadata` bomb (DTD entities, depth,
size), a service whose keys change type after connecting. Sign-in by a
bearer token and by OAuth 2.0 client credentials against a token URL. The
sync itself is tested against real servers in tests/test_sync_servers.py.
"""

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from portal.backends.csdl_metadata import read_csdl
from portal.backends.odata_v4 import ODataV4Backend, check_options
from portal.errors import BackendError, CredentialsRefused, InvalidInput
from tests.sync_helpers import Side

Answer = tuple[int, str, bytes]  # status, content type, body


class Service:
    """A plain HTTP server on 127.0.0.1 answering from `routes` (path without query -> answer)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], Answer]] = {}
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.answer()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.answer()

            def answer(self) -> None:
                path = self.path.split("?")[0]
                route = service.routes.get(path)
                status, kind, body = route(self) if route else (404, "text/html",
                                                                 b"<h1>Not Found</h1>")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/svc/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    """A scripted service, stopped after the test."""
    running = Service()
    yield running
    running.stop()


def _xml(text: str) -> Callable[[BaseHTTPRequestHandler], Answer]:
    return lambda _: (200, "application/xml", text.encode())


def _json(data: Any) -> Callable[[BaseHTTPRequestHandler], Answer]:
    return lambda _: (200, "application/json", json.dumps(data).encode())


def metadata(key_type: str = "Edm.Guid") -> str:
    """A CSDL 4.0 document of one entity set, Things, keyed by one property of `key_type`."""
    return f"""<?xml version="1.0"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
 <edmx:DataServices><Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="t">
  <EntityType Name="Thing"><Key><PropertyRef Name="ID"/></Key>
   <Property Name="ID" Type="{key_type}" Nullable="false"/>
   <Property Name="name" Type="Edm.String" MaxLength="50"/></EntityType>
  <EntityContainer Name="C"><EntitySet Name="Things" EntityType="t.Thing">
   <Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record>
    <PropertyValue Property="Supported" Bool="false"/></Record></Annotation>
   <Annotation Term="Org.OData.Capabilities.V1.DeleteRestrictions"><Record>
    <PropertyValue Property="Deletable" Bool="false"/></Record></Annotation>
  </EntitySet></EntityContainer>
 </Schema></edmx:DataServices>
</edmx:Edmx>"""


V2_METADATA = """<?xml version="1.0"?>
<edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0">
 <edmx:DataServices xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"
   m:DataServiceVersion="2.0">
  <Schema xmlns="http://schemas.microsoft.com/ado/2008/09/edm" Namespace="t"/>
 </edmx:DataServices>
</edmx:Edmx>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">&lol2;</edmx:Edmx>"""

DEEP = ('<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">'
        + "<a>" * 100 + "</a>" * 100 + "</edmx:Edmx>")

THINGS = {"value": [{"ID": "11111111-1111-4111-8111-111111111111", "name": "one"},
                    {"ID": "22222222-2222-4222-8222-222222222222", "name": "two"}]}


def _serve_v4(service: Service, key_type: str = "Edm.Guid") -> None:
    service.routes["/svc/$metadata"] = _xml(metadata(key_type))
    service.routes["/svc/"] = _json({"value": [{"name": "Things", "url": "Things"}]})
    service.routes["/svc/Things"] = _json(THINGS)


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Side:
    """Portal B with an empty org `cli`, connecting with the odata backend."""
    side = Side(tmp_path / "b", redis_url, backend="odata")
    side.create_org("cli", template=None)
    return side


def _connect_fails(client: Side, redis: Redis, url: str) -> str:
    """Run the connect job; it must fail, leave the client org empty; returns its error."""
    connection_id = client.connect("cli", url, username="u", password="p")
    client.queue(redis, connection_id, "connect")
    client.work(redis)
    connection = client.connection(connection_id)
    assert connection.status == "failed"
    with client.org("cli") as b:
        assert list(b.entities()) == []  # nothing half-made
    return connection.error or ""


@pytest.mark.parametrize(("route", "message"), [
    (None, "$metadata answered 404: <h1>Not Found</h1> — is this an OData v4 service?"),
    (_xml(V2_METADATA), "the service speaks OData v2: OData v2 is not supported"),
    (_xml(BILLION_LAUGHS), "the $metadata document declares a DTD or XML entities: refused"),
    (_xml(DEEP), "the $metadata document nests deeper than 32 elements: refused"),
    (lambda _: (200, "application/xml", b"<" + b"x" * (17 * 1024 * 1024)),
     "the $metadata document is larger than 16 MB: refused"),
    (_xml("<html><body>a login page</body></html>"),
     "the $metadata document is not OData CSDL (no edmx:Edmx root)"),
], ids=["no metadata", "odata v2", "billion laughs", "too deep", "too large", "not csdl"])
def test_odata_connect_refuses_a_service_that_is_not_odata_v4_clearly(
        service: Service, client: Side, redis: Redis, route, message: str) -> None:
    service.routes["/svc/"] = _json({"value": []})
    if route is not None:
        service.routes["/svc/$metadata"] = route
    assert message in _connect_fails(client, redis, service.url)


def test_odata_a_key_that_changes_type_fails_the_run_and_changes_nothing(
        service: Service, client: Side, redis: Redis) -> None:
    _serve_v4(service)
    connection_id = client.connect_now(redis, "cli", service.url, username="u", password="p")
    with client.org("cli") as b:
        assert {r["name"] for r in b.db.table("things").rows} == {"one", "two"}
    service.routes["/svc/$metadata"] = _xml(metadata("Edm.Int32"))
    service.routes["/svc/Things"] = _json({"value": [{"ID": 7, "name": "seven"}]})

    client.sync_now(redis, connection_id)

    with client.app.app_context():
        from portal.db import get_db
        from portal.sync import runs

        last = runs.list_runs(get_db(), client.connection(connection_id).org_id)[0]
    assert last["status"] == "failed"
    assert "the key of Things changed on the service" in last["error"]
    with client.org("cli") as b:
        assert {r["name"] for r in b.db.table("things").rows} == {"one", "two"}


def test_odata_capabilities_are_read_and_honoured(service: Service) -> None:
    _serve_v4(service)
    backend = ODataV4Backend(service.url, "u", "p", allow_private=True)
    (entity,) = backend.read_metadata()
    capabilities = backend.entity_map(entity).capabilities
    assert (capabilities.change_tracking, capabilities.deletable, capabilities.insertable) == (
        False, False, True)
    from portal.backends.base import Write

    (result,) = backend.apply_writes([Write(entity, THINGS["value"][0]["ID"], "delete")])
    assert (result.status, result.message) == ("error", "Things does not take deletions")
    backend.close()


def test_odata_capabilities_in_external_annotations() -> None:
    inline = """   <Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record>
    <PropertyValue Property="Supported" Bool="false"/></Record></Annotation>
"""
    document = metadata().replace(inline, "").replace("</EntityContainer>", """</EntityContainer>
  <Annotations Target="t.C/Things"><Annotation Term="Org.OData.Capabilities.V1.ChangeTracking">
   <Record><PropertyValue Property="Supported" Bool="true"/></Record></Annotation>
  <Annotation Term="Org.OData.Capabilities.V1.UpdateRestrictions">
   <Record><PropertyValue Property="Updatable" Bool="false"/></Record></Annotation>
  </Annotations>""")
    found = read_csdl(document.encode()).capabilities_of("Things")
    assert (found.change_tracking, found.updatable, found.deletable) == (True, False, False)


def _bearer_guard(token: str, answer: Callable[[BaseHTTPRequestHandler], Answer]):
    def route(request: BaseHTTPRequestHandler) -> Answer:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return 401, "application/json", b'{"error":{"message":"no valid token"}}'
        return answer(request)
    return route


def test_odata_signs_in_with_client_credentials_at_a_token_url(service: Service) -> None:
    _serve_v4(service)
    asked: list[dict[str, str]] = []

    def token(request: BaseHTTPRequestHandler) -> Answer:
        form = request.rfile.read(int(request.headers["Content-Length"])).decode()
        asked.append({"auth": request.headers.get("Authorization", ""), "form": form})
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(
                b"app-id:app-secret").decode():
            return 401, "application/json", json.dumps({
                "error": "invalid_client", "error_description": "unknown client"}).encode()
        return 200, "application/json", b'{"access_token":"t-123","expires_in":3600}'

    service.routes["/token"] = token
    for path in ("/svc/", "/svc/$metadata", "/svc/Things"):
        service.routes[path] = _bearer_guard("t-123", service.routes[path])
    token_url = service.url.replace("/svc/", "/token")
    backend = ODataV4Backend(service.url, "app-id", "app-secret", auth="client_credentials",
                             token_url=token_url, scope="api://crm/.default",
                             allow_private=True)
    assert backend.check_credentials() == "app-id"
    (entity,) = backend.read_metadata()
    pages = list(backend.read_changes(entity, None))
    assert {r["name"] for p in pages for r in p.upserts} == {"one", "two"}
    assert asked[0]["form"] == "grant_type=client_credentials&scope=api%3A%2F%2Fcrm%2F.default"
    backend.close()

    refused = ODataV4Backend(service.url, "app-id", "wrong", auth="client_credentials",
                             token_url=token_url, allow_private=True)
    with pytest.raises(CredentialsRefused, match="refused the client credentials: unknown "
                                                 "client"):
        refused.check_credentials()
    refused.close()


def test_odata_signs_in_with_a_bearer_token(service: Service) -> None:
    _serve_v4(service)
    for path in ("/svc/", "/svc/$metadata"):
        service.routes[path] = _bearer_guard("given-token", service.routes[path])
    backend = ODataV4Backend(service.url, "", "given-token", auth="bearer", allow_private=True)
    assert backend.check_credentials() == "bearer"
    backend.close()
    stale = ODataV4Backend(service.url, "", "old-token", auth="bearer", allow_private=True)
    with pytest.raises(CredentialsRefused):
        stale.check_credentials()
    stale.close()


@pytest.mark.parametrize(("options", "field"), [
    ({"auth": "kerberos"}, "auth"),
    ({"auth": "client_credentials"}, "token_url"),
    ({"page_size": "0"}, "page_size"),
    ({"page_size": "many"}, "page_size"),
    ({"colour": "blue"}, "auth"),
])
def test_odata_options_refused_by_field(options: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_options(options)
    assert refused.value.field == field


def test_odata_a_record_with_an_unreadable_answer_is_a_clear_error(service: Service) -> None:
    _serve_v4(service)
    service.routes["/svc/Things"] = lambda _: (200, "application/json", b"[1, 2")
    backend = ODataV4Backend(service.url, "u", "p", allow_private=True)
    (entity,) = backend.read_metadata()
    with pytest.raises(BackendError, match="not JSON"):
        list(backend.read_changes(entity, None))
    backend.close()


def test_odata_options_from_the_web_service_connect_request() -> None:
    from portal.web.connect_request import ConnectRequest

    request = ConnectRequest()
    request.setup = {"ProviderID": "{9C1D6A53-2F7E-4B8A-8E1F-0A4B5C6D7E8F}",
                     "Url": "https://cap.example.com/odata/v4/crm/", "ClientId": "app",
                     "ClientSecret": "s3cret", "TokenUrl": "https://id.example.com/token",
                     "TimestampProperty": "modifiedAt", "PageSize": "500", "TenantId": "x"}
    server = request.server()
    assert (server.username, server.password) == ("app", "s3cret")
    assert server.options == {"auth": "client_credentials",
                              "token_url": "https://id.example.com/token",
                              "timestamp_property": "modifiedAt", "page_size": "500"}
    assert check_options(server.options) == server.options


def test_odata_options_from_the_connect_form(app) -> None:
    from portal.web.forms import ServerFields

    with app.test_request_context(method="POST", data={
            "backend": "odata", "server_url": "https://cap.example.com/odata/v4/crm/",
            "server_username": "u", "server_password": "p", "odata_auth": "bearer",
            "odata_timestamp_property": "changedAt", "odata_page_size": "0"}):
        form = ServerFields(meta={"csrf": False})
        assert form.server_options() == {"auth": "bearer", "timestamp_property": "changedAt",
                                         "page_size": "0"}
        form.validate()
        assert form.odata_page_size.errors == ["The page size must be a number from 1 to 5000"]


def test_odata_a_foreign_key_to_a_keyed_set_is_a_lookup_by_the_targets_key(
        service: Service) -> None:
    """CAP's `country_code` -> `Countries(code)` (tests/fixtures/odata/cap_metadata.xml)."""
    import dataclasses

    from portal.backends.base import Write
    from portal.orgs.sync_state import server_key_id

    fixture = Path(__file__).parent / "fixtures" / "odata" / "cap_metadata.xml"
    service.routes["/svc/$metadata"] = _xml(fixture.read_text())
    backend = ODataV4Backend(service.url, "u", "p", allow_private=True)
    customers = next(e for e in backend.read_metadata() if e.logicalname == "customers")
    lookup = customers.attribute("country_code")
    assert lookup is not None and (lookup.type, lookup.targets) == ("lookup", ["countries"])
    emap = backend.entity_map(customers)
    references: dict[str, tuple[str, str]] = {}
    record = emap.from_server({"ID": "11111111-1111-4111-8111-111111111111", "name": "A",
                               "country_code": "CZ"}, references)
    assert record["country_code"] == server_key_id("countries", "CZ")
    assert references == {record["country_code"]: ("countries", "CZ")}
    client_guid = "33333333-3333-4333-8333-333333333333"
    assert emap.to_server({"country_code": client_guid}, creating=False, record_id="x",
                          references={client_guid: "SK"}) == {"country_code": "SK"}
    # A target whose key is not known: that write fails with the reason, nothing is sent.
    (result,) = backend.apply_writes([Write(customers, record["id"], "upsert",
                                            {"country_code": client_guid}, if_match="*")])
    assert result.status == "error" and "is not on the service (yet)" in str(result.message)
    # An org connected when the foreign key was a plain value keeps it plain.
    plain = dataclasses.replace(customers, attributes=[
        dataclasses.replace(a, type="string", targets=[]) if a.logicalname == "country_code"
        else a for a in customers.attributes])
    assert backend.record_from_server(plain, {"ID": "11111111-1111-4111-8111-111111111111",
                                              "country_code": "CZ"})["country_code"] == "CZ"
    backend.close()


COMPOSITE_METADATA = """<?xml version="1.0"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
 <edmx:DataServices><Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="t">
  <EntityType Name="Period"><Key><PropertyRef Name="year"/><PropertyRef Name="code"/></Key>
   <Property Name="year" Type="Edm.Int32" Nullable="false"/>
   <Property Name="code" Type="Edm.String" Nullable="false"/></EntityType>
  <EntityType Name="Budget"><Key><PropertyRef Name="ID"/></Key>
   <Property Name="ID" Type="Edm.Guid" Nullable="false"/>
   <Property Name="name" Type="Edm.String"/>
   <Property Name="period_year" Type="Edm.Int32"/>
   <Property Name="period_code" Type="Edm.String"/>
   <NavigationProperty Name="period" Type="t.Period">
    <ReferentialConstraint Property="period_code" ReferencedProperty="code"/>
    <ReferentialConstraint Property="period_year" ReferencedProperty="year"/>
   </NavigationProperty></EntityType>
  <EntityType Name="Line"><Key><PropertyRef Name="period_year"/>
    <PropertyRef Name="period_code"/><PropertyRef Name="no"/></Key>
   <Property Name="period_year" Type="Edm.Int32" Nullable="false"/>
   <Property Name="period_code" Type="Edm.String" Nullable="false"/>
   <Property Name="no" Type="Edm.Int32" Nullable="false"/>
   <NavigationProperty Name="period" Type="t.Period">
    <ReferentialConstraint Property="period_year" ReferencedProperty="year"/>
    <ReferentialConstraint Property="period_code" ReferencedProperty="code"/>
   </NavigationProperty></EntityType>
  <EntityContainer Name="C"><EntitySet Name="Periods" EntityType="t.Period"/>
   <EntitySet Name="Budgets" EntityType="t.Budget"/>
   <EntitySet Name="Lines" EntityType="t.Line"/></EntityContainer>
 </Schema></edmx:DataServices>
</edmx:Edmx>"""


def test_odata_a_navigation_filling_a_composite_key_is_one_lookup(service: Service) -> None:
    """Budgets.period -> Periods(year, code): the foreign keys are the lookup's, both ways."""
    import dataclasses

    from portal.backends.base import Write
    from portal.orgs.sync_state import server_key_id

    service.routes["/svc/$metadata"] = _xml(COMPOSITE_METADATA)
    backend = ODataV4Backend(service.url, "u", "p", allow_private=True)
    entities = {e.logicalname: e for e in backend.read_metadata()}
    budgets, lines = entities["budgets"], entities["lines"]
    lookup = budgets.attribute("period")
    assert lookup is not None and (lookup.type, lookup.targets) == ("lookup", ["periods"])
    assert budgets.attribute("period_year") is None and budgets.attribute("period_code") is None
    # Foreign keys that are the record's own key stay plain values: no lookup.
    assert lines.attribute("period") is None
    assert {lines.attribute(n).type for n in ("period_year", "period_code")} == {  # type: ignore[union-attr]
        "integer", "string"}
    emap = backend.entity_map(budgets)
    key = '{"year":2026,"code":"Q1"}'  # the target's key order, not the constraint's
    references: dict[str, tuple[str, str]] = {}
    item = {"ID": "11111111-1111-4111-8111-111111111111", "name": "A", "period_year": 2026,
            "period_code": "Q1"}
    record = emap.from_server(item, references)
    assert record["period"] == server_key_id("periods", key)
    assert references == {record["period"]: ("periods", key)}
    # A part missing is no reference.
    assert emap.from_server({**item, "period_code": None})["period"] is None
    client_guid = "33333333-3333-4333-8333-333333333333"
    assert emap.to_server({"period": client_guid, "name": "B"}, creating=False, record_id="x",
                          references={client_guid: key}) == {
        "period_year": 2026, "period_code": "Q1", "name": "B"}
    assert emap.to_server({"period": None}, creating=False, record_id="x") == {
        "period_year": None, "period_code": None}
    # A target whose key is not known: that write fails with the reason, nothing is sent.
    (result,) = backend.apply_writes([Write(budgets, record["id"], "upsert",
                                            {"period": client_guid}, if_match="*")])
    assert result.status == "error" and "period: the record" in str(result.message)
    assert "is not on the service (yet)" in str(result.message)
    # An org connected when the foreign keys were plain values keeps them plain.
    plain = dataclasses.replace(budgets, attributes=[
        a for a in budgets.attributes if a.logicalname != "period"] + [
        dataclasses.replace(budgets.attributes[0], logicalname=n, type=t)
        for n, t in (("period_year", "integer"), ("period_code", "string"))])
    assert backend.record_from_server(plain, item) == {
        "id": item["ID"], "name": "A", "period_year": 2026, "period_code": "Q1"}
    assert backend.entity_map(plain).to_server({"period_year": 2027}, creating=False,
                                               record_id="x") == {"period_year": 2027}
    backend.close()


def _cap_maps(timestamp_property: str | None) -> dict[str, Any]:
    from portal.backends import odata_mapping

    fixture = Path(__file__).parent / "fixtures" / "odata" / "cap_metadata.xml"
    return odata_mapping.entity_maps(read_csdl(fixture.read_bytes()),
                                     timestamp_property=timestamp_property)


def test_odata_timestamp_property_for_every_set_and_per_set() -> None:
    """Customers' `modifiedAt` found by name; `createdAt` named for Customers alone."""
    found = {m.entity_set: m.modified for m in _cap_maps(None).values()}
    assert (found["Customers"], found["Orders"]) == ("modifiedAt", None)
    chosen = {m.entity_set: m.modified for m in _cap_maps("Customers=createdAt").values()}
    assert (chosen["Customers"], chosen["Orders"]) == ("createdAt", None)
    mixed = {m.entity_set: m.modified
             for m in _cap_maps("modifiedAt, Customers=createdAt").values()}
    assert (mixed["Customers"], mixed["Orders"]) == ("createdAt", None)
    assert _cap_maps("modifiedAt")["customers"].modified == "modifiedAt"


@pytest.mark.parametrize(("option", "message"), [
    ("Shipments=modifiedAt", "entity set Shipments, which the service does not have"),
    ("Orders=placed", "Orders has no DateTimeOffset property placed"),  # an Int64
])
def test_odata_timestamp_property_naming_what_the_service_lacks_fails_by_name(
        option: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        _cap_maps(option)


@pytest.mark.parametrize("option", ["timestamp_property", "client_id_property"])
@pytest.mark.parametrize("value", ["modified at", "Orders=", "=x", "a, b", "Orders=a=b"])
def test_odata_property_option_that_is_no_name_is_refused_beside_its_field(
        app, option: str, value: str) -> None:
    from portal.web.forms import ServerFields, sentence

    with pytest.raises(InvalidInput) as refused:
        check_options({option: value})
    assert refused.value.field == option
    with app.test_request_context(method="POST", data={
            "backend": "odata", "server_url": "https://cap.example.com/odata/v4/crm/",
            "server_username": "u", "server_password": "p", f"odata_{option}": value}):
        form = ServerFields(meta={"csrf": False})
        assert not form.validate()
        assert form[f"odata_{option}"].errors == [sentence(refused.value.message)]


def _odatapy_maps(client_id_property: str | None) -> dict[str, Any]:
    """Maps of our odatapy model: Companies' Int32 key is Core.Computed (the service picks it)."""
    from portal.backends import odata_mapping

    fixture = Path(__file__).parent / "fixtures" / "odata" / "odatapy_model.xml"
    return odata_mapping.entity_maps(read_csdl(fixture.read_bytes()),
                                     client_id_property=client_id_property)


def test_odata_client_id_property_for_every_set_and_per_set() -> None:
    """Companies keeps our GUID in Code (a String) or Name, named for all or for it alone."""
    assert _odatapy_maps(None)["companies"].client_id is None
    assert _odatapy_maps("Code")["companies"].client_id == "Code"
    assert _odatapy_maps("Companies=Name")["companies"].client_id == "Name"
    assert _odatapy_maps("Code, Companies=Name")["companies"].client_id == "Name"
    # One name for every set: used where a set picks its keys and has it as a String.
    assert _odatapy_maps("Rating")["companies"].client_id is None  # an enum
    assert _odatapy_maps("Code")["contacts"].client_id is None  # Contacts' keys are ours


@pytest.mark.parametrize(("option", "message"), [
    ("Shipments=Code", "entity set Shipments, which the service does not have"),
    ("Companies=Revenue", "Companies has no String property Revenue"),  # a Decimal
    ("Companies=Missing", "Companies has no String property Missing"),
    ("Contacts=FullName", "Contacts, whose keys the service does not pick"),
])
def test_odata_client_id_property_naming_what_the_service_lacks_fails_by_name(
        option: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        _odatapy_maps(option)

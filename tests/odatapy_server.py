"""A real OData v4 server nobody here wrote: odatapy's in-memory service, with a model of ours.

Run as `python -m tests.odatapy_server PORT [PAGE_SIZE] [--untracked]`; it binds 127.0.0.1,
asks Basic auth of `alice` / `alice-secret` and ends when its parent does. What
odatapy gives on its own: CSDL `$metadata` from our XML, CRUD, ETags (428
without If-Match, 412 when stale), JSON `$batch`, server paging
(`odata.maxpagesize`), change tracking (`Prefer: odata.track-changes`, absolute
delta links, `$deletedEntity` tombstones whose `id` is the record's URL) and
server-generated integer keys. What this file adds: `modifiedAt` stamped on
every change (the model declares it Core.Computed), as a service would.

The model: Accounts (Guid key), Contacts (Guid key, a lookup to Accounts by
`account_ID`, an enum), Tickets (an Int32 key the server picks, a `clientId`
for the client's GUID, a lookup to Countries by `country_code`), Countries (a String key),
Periods (a composite key: year Int32, code String), Budgets (a Guid key, a lookup to
Periods by `period_year` and `period_code`).
"""

import base64
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from odatapy.data import ValueType
from odatapy.edm.xml_io import XmlEdmProvider
from odatapy.server import OData
from odatapy.server.adapters.wsgi import ODataWSGIApp
from odatapy.server.inmemory import InMemoryDataStore, InMemoryProcessor
from odatapy.server.processor import CustomETagSupport

USER, PASSWORD = "alice", "alice-secret"
SETS = ("Accounts", "Contacts", "Tickets", "Countries", "Periods", "Budgets")

CHANGE_TRACKED = """<Annotation Term="Capabilities.ChangeTracking"><Record>
  <PropertyValue Property="Supported" Bool="true"/></Record></Annotation>"""
MODIFIED = """<Property Name="modifiedAt" Type="Edm.DateTimeOffset" Precision="3">
  <Annotation Term="Core.Computed" Bool="true"/></Property>"""

METADATA = f"""<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
 <edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Core.V1.xml">
  <edmx:Include Namespace="Org.OData.Core.V1" Alias="Core"/></edmx:Reference>
 <edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Capabilities.V1.xml">
  <edmx:Include Namespace="Org.OData.Capabilities.V1" Alias="Capabilities"/></edmx:Reference>
 <edmx:DataServices>
  <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="crm">
   <EnumType Name="Priority"><Member Name="low" Value="1"/><Member Name="normal" Value="2"/>
    <Member Name="high" Value="3"/></EnumType>
   <EntityType Name="Account"><Key><PropertyRef Name="ID"/></Key>
    <Property Name="ID" Type="Edm.Guid" Nullable="false"/>
    <Property Name="name" Type="Edm.String" MaxLength="100"/>
    <Property Name="employees" Type="Edm.Int32"/>
    <Property Name="revenue" Type="Edm.Decimal" Precision="12" Scale="2"/>
    <Property Name="vip" Type="Edm.Boolean"/>
    {MODIFIED}
    <NavigationProperty Name="contacts" Type="Collection(crm.Contact)" Partner="account"/>
   </EntityType>
   <EntityType Name="Contact"><Key><PropertyRef Name="ID"/></Key>
    <Property Name="ID" Type="Edm.Guid" Nullable="false"/>
    <Property Name="lastName" Type="Edm.String" MaxLength="80"/>
    <Property Name="priority" Type="crm.Priority"/>
    <Property Name="account_ID" Type="Edm.Guid"/>
    {MODIFIED}
    <NavigationProperty Name="account" Type="crm.Account" Partner="contacts">
     <ReferentialConstraint Property="account_ID" ReferencedProperty="ID"/></NavigationProperty>
   </EntityType>
   <EntityType Name="Ticket"><Key><PropertyRef Name="number"/></Key>
    <Property Name="number" Type="Edm.Int32" Nullable="false">
     <Annotation Term="Core.Computed" Bool="true"/></Property>
    <Property Name="title" Type="Edm.String" MaxLength="200"/>
    <Property Name="clientId" Type="Edm.String" MaxLength="36"/>
    <Property Name="account_ID" Type="Edm.Guid"/>
    <Property Name="country_code" Type="Edm.String" MaxLength="3"/>
    {MODIFIED}
    <NavigationProperty Name="account" Type="crm.Account">
     <ReferentialConstraint Property="account_ID" ReferencedProperty="ID"/></NavigationProperty>
    <NavigationProperty Name="country" Type="crm.Country">
     <ReferentialConstraint Property="country_code" ReferencedProperty="code"/></NavigationProperty>
   </EntityType>
   <EntityType Name="Country"><Key><PropertyRef Name="code"/></Key>
    <Property Name="code" Type="Edm.String" MaxLength="3" Nullable="false"/>
    <Property Name="name" Type="Edm.String" MaxLength="60"/>
    {MODIFIED}
   </EntityType>
   <EntityType Name="Period"><Key><PropertyRef Name="year"/><PropertyRef Name="code"/></Key>
    <Property Name="year" Type="Edm.Int32" Nullable="false"/>
    <Property Name="code" Type="Edm.String" MaxLength="10" Nullable="false"/>
    <Property Name="name" Type="Edm.String" MaxLength="60"/>
    {MODIFIED}
   </EntityType>
   <EntityType Name="Budget"><Key><PropertyRef Name="ID"/></Key>
    <Property Name="ID" Type="Edm.Guid" Nullable="false"/>
    <Property Name="name" Type="Edm.String" MaxLength="100"/>
    <Property Name="amount" Type="Edm.Decimal" Precision="12" Scale="2"/>
    <Property Name="period_year" Type="Edm.Int32"/>
    <Property Name="period_code" Type="Edm.String" MaxLength="10"/>
    {MODIFIED}
    <NavigationProperty Name="period" Type="crm.Period">
     <ReferentialConstraint Property="period_year" ReferencedProperty="year"/>
     <ReferentialConstraint Property="period_code" ReferencedProperty="code"/>
    </NavigationProperty>
   </EntityType>
   <EntityContainer Name="Service">
    <EntitySet Name="Accounts" EntityType="crm.Account">
     <NavigationPropertyBinding Path="contacts" Target="Contacts"/>{CHANGE_TRACKED}</EntitySet>
    <EntitySet Name="Contacts" EntityType="crm.Contact">
     <NavigationPropertyBinding Path="account" Target="Accounts"/>{CHANGE_TRACKED}</EntitySet>
    <EntitySet Name="Tickets" EntityType="crm.Ticket">
     <NavigationPropertyBinding Path="account" Target="Accounts"/>
     <NavigationPropertyBinding Path="country" Target="Countries"/>{CHANGE_TRACKED}</EntitySet>
    <EntitySet Name="Countries" EntityType="crm.Country">{CHANGE_TRACKED}</EntitySet>
    <EntitySet Name="Periods" EntityType="crm.Period">{CHANGE_TRACKED}</EntitySet>
    <EntitySet Name="Budgets" EntityType="crm.Budget">
     <NavigationPropertyBinding Path="period" Target="Periods"/>{CHANGE_TRACKED}</EntitySet>
   </EntityContainer>
  </Schema>
 </edmx:DataServices>
</edmx:Edmx>
"""


class StampedStore(InMemoryDataStore):
    """odatapy's store, stamping `modifiedAt` on every change before it is answered."""

    frozen: datetime | None = None  # POST /_clock: every change gets this time

    def record_change(self, entity_set: str, entity: Any, kind: str) -> None:
        """Stamp the time (to the millisecond, as CAP does), then log the change."""
        if kind != "deleted":
            now = self.frozen or datetime.now(UTC)
            entity.set_property("modifiedAt", now.replace(microsecond=now.microsecond // 1000
                                                          * 1000),
                                ValueType.PRIMITIVE, "Edm.DateTimeOffset")
        super().record_change(entity_set, entity, kind)


class ETags(CustomETagSupport):
    """Every entity set has ETags (odatapy then asks If-Match of each change)."""

    def has_etag(self, entity_set_or_singleton: Any) -> bool:
        """All of them."""
        return True


def application(page_size: int | None, tracked: bool = True, json_batch: bool = True) -> Any:
    """The WSGI app: odatapy's handler behind Basic auth (untracked: no ChangeTracking said).

    Without `json_batch`, a JSON `$batch` is refused (415), as by services that
    take only multipart: odatapy's own multipart `$batch` answers the rest.
    """
    odata = OData.new_instance()
    metadata = METADATA if tracked else METADATA.replace(CHANGE_TRACKED, "")
    # 4.01 unless the client asks for 4.0 (OData-MaxVersion), as FIELD-NOTES saw.
    handler = odata.create_handler(odata.create_service_metadata(XmlEdmProvider(metadata)))
    store = StampedStore()
    for name in SETS:
        store.set_entities(name, [])
    store.declare_key_auto_generating("Tickets")
    handler.register(InMemoryProcessor(store, page_size=page_size))
    handler.register(ETags())
    app = ODataWSGIApp(handler)
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [
                ("Content-Type", "application/json"), ("WWW-Authenticate", 'Basic realm="crm"')])
            return [b'{"error":{"code":"401","message":"Unauthorized"}}']
        if environ.get("PATH_INFO") == "/_clock":  # the tests' control of modifiedAt
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length).decode().strip()
            store.frozen = datetime.fromisoformat(text) if text else None
            start_response("204 No Content", [])
            return [b""]
        if not json_batch and environ.get("PATH_INFO", "").endswith("$batch") and \
                environ.get("CONTENT_TYPE", "").startswith("application/json"):
            start_response("415 Unsupported Media Type", [("Content-Type", "application/json")])
            return [b'{"error":{"code":"415","message":"$batch takes multipart/mixed only"}}']
        return app(environ, start_response)

    return guarded


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """End when the test process that started this server ends (even by SIGKILL)."""
    while os.getppid() == parent:
        threading.Event().wait(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """Serve until killed or orphaned."""
    port = int(sys.argv[1])
    page_size = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "0" else None
    tracked = "--untracked" not in sys.argv
    json_batch = "--multipart-batch-only" not in sys.argv
    threading.Thread(target=_die_with_parent, args=(os.getppid(),), daemon=True).start()
    server = make_server("127.0.0.1", port, application(page_size, tracked, json_batch),
                         server_class=_Server,
                         handler_class=_Quiet)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The Org API against real OData clients nobody here wrote: odatapy and python-odata.

A real portal process (gunicorn on 127.0.0.1) serves an org made from the
sales template; the clients talk to it over HTTP.
"""

import uuid
from pathlib import Path

import pytest
import requests

from portal import create_app
from portal.db import get_db
from portal.orgs import records, registry, store
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

ACCOUNTS = 2500


@pytest.fixture
def served_org(tmp_path: Path, redis_url: str, portal_process):
    """A portal process serving the org `sales` with 2,500 accounts; yields (process, org)."""
    instance = tmp_path / "served"
    app = create_app({"INSTANCE_PATH": instance, "REDIS_URL": redis_url})
    orgs = store.orgs_path(app)
    with app.app_context():
        registry.create_org(get_db(), orgs, "sales", email=ADMIN_EMAIL,
                            password=ADMIN_PASSWORD, template="sales")
    org = store.open_org(orgs, "sales")
    records.save_records(org, "account", (
        {"accountid": str(uuid.UUID(int=i + 1)), "name": f"Account {i:05d}",
         "revenue": i * 10.5, "creditonhold": i % 3 == 0} for i in range(ACCOUNTS)))
    process = portal_process(instance)
    yield process, org
    org.close()


def odatapy_client(root: str):
    from odatapy.client import EdmEnabledODataClient
    from odatapy.client.auth import BasicAuth
    from odatapy.client.transport import HttpxTransport

    transport = HttpxTransport(auth=BasicAuth(ADMIN_EMAIL, ADMIN_PASSWORD))
    return EdmEnabledODataClient(root.rstrip("/"), transport, odata_version="4.0")


def test_odatapy_reads_service_document_and_metadata(served_org) -> None:
    process, _ = served_org
    client = odatapy_client(process.odata_root("sales"))
    document = client.get_service_document()
    assert "accounts" in document.entity_sets and "leadcompetitors" in document.entity_sets
    edm = client.get_edm()
    account = client.entity_set_type("accounts")
    assert account is not None
    assert edm is not None


def test_odatapy_pages_through_all_records(served_org) -> None:
    process, _ = served_org
    client = odatapy_client(process.odata_root("sales"))
    uri = client.entity_set_uri("accounts").select("accountid", "name")
    pages = list(client.iter_pages(uri))
    ids = [e.get_value("accountid") for page in pages for e in page.entities]
    assert len(pages) == 3  # pages of 1,000
    assert len(ids) == ACCOUNTS and len(set(map(str, ids))) == ACCOUNTS


def test_odatapy_updates_with_etag_and_gets_412_when_stale(served_org) -> None:
    from odatapy.client.responses import ODataClientError

    process, _ = served_org
    client = odatapy_client(process.odata_root("sales"))
    key = uuid.UUID(int=7)
    entity = client.get_entity(client.entity_uri("accounts", key))
    stale = entity.etag
    assert stale and stale.startswith('W/"')
    client.update_entity(client.entity_uri("accounts", key), {"name": "Renamed"}, etag=stale)
    assert client.get_entity(client.entity_uri("accounts", key)).get_value("name") == "Renamed"
    with pytest.raises(ODataClientError) as failure:
        client.update_entity(client.entity_uri("accounts", key), {"name": "Again"}, etag=stale)
    assert failure.value.status_code == 412
    assert failure.value.error_code == "PreconditionFailed"


def test_odatapy_follows_delta_links(served_org) -> None:
    process, org = served_org
    client = odatapy_client(process.odata_root("sales"))
    uri = client.entity_set_uri("accounts").select("name")
    pages = list(client.iter_pages(uri, track_changes=True))
    delta_link = pages[-1].delta_link
    assert delta_link and "$deltatoken=" in delta_link and "$select=name" in delta_link
    changed = str(uuid.UUID(int=3))
    deleted = str(uuid.UUID(int=4))
    records.update_record(org, "account", changed, {"name": "Changed"})
    records.delete_record(org, "account", deleted)
    delta = client.get_delta(delta_link)
    assert [str(e.get_value("accountid")) for e in delta.entities] == [changed]
    assert [e.get_value("name") for e in delta.entities] == ["Changed"]
    assert [str(d.id) for d in delta.deleted_entities] == [deleted]
    assert delta.delta_link
    assert client.get_delta(delta.delta_link).entities == []


def test_python_odata_reflects_lists_and_creates(served_org) -> None:
    from odata import ODataService

    process, org = served_org
    session = requests.Session()
    session.auth = (ADMIN_EMAIL, ADMIN_PASSWORD)
    service = ODataService(process.odata_root("sales"), session=session, reflect_entities=True,
                           quiet_progress=True)
    Account = service.entities["accounts"]  # noqa: N806 - a class made from $metadata
    first = service.query(Account).order_by(Account.name.asc()).first()
    assert first.name == "Account 00000"
    assert len(list(service.query(Account).filter(Account.name.startswith("Account 0001")))) == 10
    Contact = service.entities["contacts"]  # noqa: N806
    contact = Contact()
    contact.lastname = "Lovelace"
    contact.firstname = "Ada"
    contact.parentcustomerid = str(uuid.UUID(int=1))
    service.save(contact)
    assert contact.contactid
    stored = records.get_record(org, "contact", str(contact.contactid))
    assert stored is not None and stored["lastname"] == "Lovelace"
    assert stored["parentcustomerid"] == str(uuid.UUID(int=1))

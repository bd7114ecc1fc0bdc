"""The `salesforce` backend by itself against the Salesforce-shaped server (its sign-ins,
options, budget and reads), with simple-salesforce as the client."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from portal.backends.registry import check_options, make_backend
from portal.backends.salesforce import SalesforceBackend
from portal.errors import BackendError, CredentialsRefused, InvalidInput, ServerLimited
from tests.portal_process import Tls
from tests.salesforce_server import SalesforceServer

USER, PASSWORD, TOKEN = "ann@example.com", "pw-1", "TOK"
KEY, SECRET = "3MVG9-app", "app-secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SalesforceServer]:
    org = SalesforceServer(Tls.make(tmp_path / "tls")).start()
    org.add_user(USER, PASSWORD, TOKEN)
    yield org
    org.stop()


def session(server: SalesforceServer) -> requests.Session:
    """Trusts the test CA (the environment's CA bundle is not read)."""
    http = requests.Session()
    http.trust_env = False
    http.verify = str(server.tls.ca_file)
    return http


def backend(server: SalesforceServer, username: str = USER, password: str = PASSWORD + TOKEN,
            **options: str) -> SalesforceBackend:
    made = make_backend("salesforce", server.url, username, password, allow_private=True,
                        session=session(server), **options)
    assert isinstance(made, SalesforceBackend)
    return made


def rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def test_jwt_bearer_signs_in_with_the_apps_key(server: SalesforceServer) -> None:
    private, public = rsa_pair()
    server.add_app(KEY, SECRET, public)
    who = backend(server, password=private, auth="jwt", consumer_key=KEY).check_credentials()
    assert who.startswith(f"{USER} at 127.0.0.1:")
    other, _ = rsa_pair()  # a key the app does not know
    with pytest.raises(CredentialsRefused, match="invalid_grant: invalid assertion"):
        backend(server, password=other, auth="jwt", consumer_key=KEY).check_credentials()
    with pytest.raises(CredentialsRefused, match="not an RSA key"):
        backend(server, password="not a key", auth="jwt", consumer_key=KEY).check_credentials()


def test_client_credentials_sign_in_as_the_app(server: SalesforceServer) -> None:
    server.add_app(KEY, SECRET)
    made = backend(server, username=KEY, password=SECRET, auth="client_credentials")
    assert made.check_credentials().startswith("the connected app at")
    with pytest.raises(CredentialsRefused, match="invalid_client"):
        backend(server, username=KEY, password="wrong",
                auth="client_credentials").check_credentials()


def test_the_password_flow_needs_the_apps_key_and_secret(server: SalesforceServer) -> None:
    server.add_app(KEY, SECRET)
    with pytest.raises(CredentialsRefused, match="invalid_client_id"):
        backend(server, consumer_key="nope", consumer_secret=SECRET).check_credentials()
    made = backend(server, password=PASSWORD, security_token=TOKEN, consumer_key=KEY,
                   consumer_secret=SECRET)
    assert "100000 daily API requests" in made.check_credentials()


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"auth": "saml"}, "auth", "unknown Salesforce sign-in"),
    ({}, "consumer_key", "consumer key"),
    ({"consumer_key": KEY}, "consumer_secret", "consumer secret"),
    ({"auth": "jwt"}, "consumer_key", "consumer key"),
    ({"consumer_key": KEY, "consumer_secret": SECRET, "api_budget": "0"}, "api_budget",
     "percentage"),
    ({"consumer_key": KEY, "consumer_secret": SECRET, "tenant": "x"}, "auth",
     "unknown Salesforce option"),
])
def test_bad_options_are_refused_with_the_field_named(options: dict[str, str], field: str,
                                                      message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        check_options("salesforce", options)
    assert refused.value.field == field


def test_client_credentials_need_no_consumer_options() -> None:
    assert check_options("salesforce", {"auth": "client_credentials"}) == {
        "auth": "client_credentials"}


def test_the_budget_is_read_from_sforce_limit_info(server: SalesforceServer) -> None:
    server.add_app(KEY, SECRET)
    made = backend(server, consumer_key=KEY, consumer_secret=SECRET, api_budget="10")
    made.check_credentials()  # 1 of 100000: under the budget
    server.used = 10_000  # 10% used by others: the next answer says so
    with pytest.raises(ServerLimited, match="used 10001 of its 100000 daily API requests"):
        made.read_metadata()


def test_a_private_login_url_is_refused_unless_allowed(server: SalesforceServer) -> None:
    with pytest.raises(InvalidInput):
        SalesforceBackend(server.url, USER, PASSWORD, consumer_key=KEY, consumer_secret=SECRET)


def test_an_unreachable_login_url_is_a_backend_error(server: SalesforceServer) -> None:
    made = SalesforceBackend("https://127.0.0.1:9", USER, PASSWORD, consumer_key=KEY,
                             consumer_secret=SECRET, allow_private=True,
                             session=session(server), retries=0)
    with pytest.raises(BackendError, match="cannot be reached"):
        made.check_credentials()


def test_an_object_that_is_not_replicateable_is_not_offered(server: SalesforceServer) -> None:
    server.add_app(KEY, SECRET)
    made = backend(server, consumer_key=KEY, consumer_secret=SECRET)
    assert [e.logicalname for e in made.read_metadata()] == ["account", "contact", "lead",
                                                            "task"]
    with pytest.raises(BackendError, match="accounthistory cannot sync: it is not replicateable"):
        made.salesforce_object("accounthistory")
    only = backend(server, consumer_key=KEY, consumer_secret=SECRET, objects="Account, Lead")
    assert [e.logicalname for e in only.read_metadata()] == ["account", "lead"]


def test_a_large_first_read_goes_through_one_bulk_api_job(server: SalesforceServer) -> None:
    server.add_app(KEY, SECRET)
    account = server.insert("Account", {"Name": "Big", "NumberOfEmployees": 7,
                                        "AnnualRevenue": 12.5})
    keys = {server.insert("Contact", {"LastName": f"C{n}", "AccountId": account})
            for n in range(7)}
    gone = server.insert("Contact", {"LastName": "Gone"})
    server.delete("Contact", gone)
    made = backend(server, consumer_key=KEY, consumer_secret=SECRET, bulk_threshold="5")
    contact = made.salesforce_object("contact").entity
    pages = list(made.read_changes(contact, None, page_size=3))
    assert [p.complete for p in pages] == [False, False, True]
    assert {p.keys[r["id"]] for p in pages for r in p.upserts} == keys
    assert [p.keys[d] for p in pages for d in p.deleted] == [gone]  # queryAll: IsDeleted rows
    first = pages[0].upserts[0]
    assert first["isdeleted"] is False and first["accountid"] in pages[0].references
    assert len(server.bulk_jobs) == 1
    assert "Bulk API 2.0" in (pages[-1].note or "")
    # A stopped read goes on with the same job, from the locator in its link.
    again = list(made.read_changes(contact, pages[0].link, page_size=3))
    assert len(server.bulk_jobs) == 1 and len(again) == 2
    # The next read is by SOQL from the job's start: records changed since arrive.
    server.update("Contact", sorted(keys)[0], {"FirstName": "Later"})
    later = list(made.read_changes(contact, pages[-1].link, page_size=100))
    assert "Later" in {r["firstname"] for p in later for r in p.upserts}
    accounts = list(made.read_changes(made.salesforce_object("account").entity, None))
    assert accounts[0].upserts[0]["annualrevenue"] == 12.5  # few records: SOQL, typed JSON

"""OAuth 2.0 for the `dynamics` backend: MSAL (the real library) against an Entra-like
authority served over TLS with Microsoft Learn's payloads, and the Bearer challenge."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.backends.auth import (
    DEFAULT_PUBLIC_CLIENT_ID,
    BearerAuth,
    ClientCredentials,
    UserPassword,
    authority_of,
    discover_authority,
    parse_bearer_challenge,
)
from portal.errors import BackendError, CredentialsRefused, InvalidInput
from tests.scripted_https import FIXTURES, Answer, ScriptedHttps, Seen, entra_authority, fixture

TENANT = "4baaeaaf-2771-4583-99eb-7c7e39aa1e74"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ScriptedHttps]:
    """A scripted HTTPS server, stopped at teardown."""
    started = ScriptedHttps(tmp_path)
    yield started
    started.stop()


def test_auth_reads_the_documented_bearer_challenge() -> None:
    # Payload: MicrosoftDocs/dynamics-365-customer-engagement,
    # ce/developer/walkthrough-multi-tenant-server-server-authentication.md
    text = (FIXTURES / "dataverse/auth/401-bearer-challenge.http").read_text()
    header = next(line.split(":", 1)[1] for line in text.splitlines()
                  if line.startswith("WWW-Authenticate:"))
    challenge = parse_bearer_challenge(header)
    assert challenge is not None
    assert challenge.authority == f"https://login.windows.net/{TENANT}"
    assert challenge.resource == "https://<org name>.crm.dynamics.com/"
    assert parse_bearer_challenge('Basic realm="x"') is None
    assert parse_bearer_challenge("Bearer realm=x") is None
    v2 = parse_bearer_challenge('Bearer authorization_uri="https://h/t/oauth2/v2.0/authorize"')
    assert v2 is not None and v2.authority == "https://h/t" and v2.resource is None


def test_auth_explicit_tenant_or_authority_overrides_discovery() -> None:
    assert authority_of("contoso.onmicrosoft.com") == \
        "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    assert authority_of(TENANT, "https://login.microsoftonline.us/x/") == \
        "https://login.microsoftonline.us/x"
    assert authority_of(None, None) is None
    for tenant, authority in [("not a tenant/", None), (None, "http://login/x"),
                              (None, "https://login.microsoftonline.com/")]:
        with pytest.raises(InvalidInput):
            authority_of(tenant, authority)


def test_auth_finds_the_authority_from_an_unauthenticated_request(server) -> None:
    server.route("GET", "/api/data/v9.2/", Answer(401, {"error": {"code": "0x80040220"}}, {
        "WWW-Authenticate": f"Bearer authorization_uri={server.url}/{TENANT}/oauth2/authorize"
                            f", resource_id={server.url}/"}))
    challenge = discover_authority(server.session(), f"{server.url}/api/data/v9.2/")
    assert challenge.authority == f"{server.url}/{TENANT}"
    assert challenge.resource == f"{server.url}/"
    assert "Authorization" not in server.seen[0].headers


@pytest.mark.parametrize("answer", [Answer(200, {"value": []}), Answer(404, {"no": 1}),
                                    Answer(401, {}, {"WWW-Authenticate": 'Basic realm="x"'})])
def test_auth_a_server_that_is_not_dataverse_is_named_so(server, answer: Answer) -> None:
    server.route("GET", "/", answer)
    with pytest.raises(BackendError, match="is not a Dataverse environment"):
        discover_authority(server.session(), f"{server.url}/api/data/v9.2/")


def _token(seen: Seen) -> Answer:
    # Payload: MicrosoftDocs/entra-docs, docs/identity-platform/v2-oauth2-client-creds-grant-flow.md
    # ("Successful response"); the token is made unique per request so renewals show.
    body = fixture("dataverse/auth/entra-client-credentials-token.response.json")
    body["access_token"] += str(len(seen.body))
    return Answer(200, body)


def test_auth_client_credentials_through_msal_cached_and_renewed_after_a_401(server) -> None:
    authority = entra_authority(server, TENANT, _token)
    source = ClientCredentials(server.session(), authority, "https://contoso.crm4.dynamics.com/",
                               "app-id", "app-secret")
    first = source.token()
    assert first.startswith("eyJ0eXAi")
    assert source.token() == first  # cached for the run
    tokens = server.requests_to(f"/{TENANT}/oauth2/v2.0/token")
    assert len(tokens) == 1
    form = tokens[0].form()
    assert form["grant_type"] == "client_credentials"
    assert form["client_id"] == "app-id" and form["client_secret"] == "app-secret"
    assert form["scope"] == "https://contoso.crm4.dynamics.com/.default"
    source.refused()  # the server answered 401: the next request gets a new token
    source.token()
    assert len(server.requests_to(f"/{TENANT}/oauth2/v2.0/token")) == 2


def test_auth_user_password_through_msal_with_the_samples_public_client(server) -> None:
    authority = entra_authority(server, TENANT, _token)
    source = UserPassword(server.session(), authority, "https://contoso.crm4.dynamics.com",
                          "someone@contoso.com", "pa55word")
    session_request = BearerAuth(source)
    import requests

    prepared = session_request(requests.Request("GET", "https://x/").prepare())
    assert prepared.headers["Authorization"].startswith("Bearer eyJ0eXAi")
    form = server.requests_to(f"/{TENANT}/oauth2/v2.0/token")[0].form()
    assert form["grant_type"] == "password"
    assert form["username"] == "someone@contoso.com" and form["password"] == "pa55word"
    assert form["client_id"] == DEFAULT_PUBLIC_CLIENT_ID
    # Entra's user realm discovery is not asked of an authority that is not Microsoft's.
    assert not server.requests_to("/common/userrealm")


def test_auth_a_token_near_its_expiry_is_renewed(server) -> None:
    def short(seen: Seen) -> Answer:
        answer = _token(seen)
        answer.body["expires_in"] = 0  # already due: every call needs a new one
        return answer

    source = ClientCredentials(server.session(), entra_authority(server, TENANT, short),
                               "https://org.crm.dynamics.com", "app-id", "app-secret")
    source.token()
    source.token()
    assert len(server.requests_to(f"/{TENANT}/oauth2/v2.0/token")) == 2


def test_auth_a_refused_secret_shows_the_aadsts_code_and_message(server) -> None:
    # Payload: MicrosoftDocs/entra-docs, v2-oauth2-client-creds-grant-flow.md ("Error response").
    error = fixture("dataverse/auth/entra-token-error.response.json")
    source = ClientCredentials(server.session(),
                               entra_authority(server, TENANT, Answer(400, error)),
                               "https://org.crm.dynamics.com", "app-id", "wrong")
    with pytest.raises(CredentialsRefused) as refused:
        source.token()
    message = refused.value.message
    assert "AADSTS70011: The provided value for the input parameter 'scope' is not valid." \
        in message
    assert "Trace ID" not in message and "Traceback" not in message


def test_auth_an_unknown_tenant_is_a_readable_refusal(server) -> None:
    source = UserPassword(server.session(), f"{server.url}/no-such-tenant",
                          "https://org.crm.dynamics.com", "u@x.com", "p")
    with pytest.raises(CredentialsRefused, match="does not know this tenant"):
        source.token()


def test_auth_an_authority_that_is_down_is_a_readable_error(server) -> None:
    from tests.portal_process import free_port

    source = ClientCredentials(server.session(), f"https://127.0.0.1:{free_port()}/{TENANT}",
                               "https://org.crm.dynamics.com", "a", "b")
    with pytest.raises(BackendError, match="cannot be reached"):
        source.token()

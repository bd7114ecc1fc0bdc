"""OAuth 2.0 bearer tokens for backends, obtained through MSAL and kept for the run.

A backend asks a `TokenSource` for a token before each request and tells it
when the server refused one (401), so the next request carries a new token.
The sources here are MSAL's two ways into Microsoft Entra ID (or any
authority that serves the same endpoints, as a hosted org's Dataverse root
does): an application user (client credentials) and a user name + password
(the resource-owner password flow, as the seed's ConnectRequest sends).
Another OAuth flow, e.g. the `odata` backend's client credentials against a
plain token URL, is one more `TokenSource`; `BearerAuth` serves them all.

Where to get a token is found from the server itself, as Dataverse tells its
clients: an unauthenticated request answers `401` with
`WWW-Authenticate: Bearer authorization_uri=https://login.microsoftonline.com/{tenant}/oauth2/authorize`
(`discover_authority`); an explicit tenant or authority overrides that.
A refused credential raises CredentialsRefused with the authority's own
message (`AADSTS50126: Error validating credentials...`), never a stack trace.
"""

import re
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from requests.auth import AuthBase

from portal.errors import BackendError, CredentialsRefused, InvalidInput, ServerLimited

# The public client id of Microsoft's Dataverse samples, registered by
# Microsoft in every tenant; a customer may register and name their own.
DEFAULT_PUBLIC_CLIENT_ID = "51f81489-12ee-4a9e-aaae-a2591f45987d"
ENTRA_HOST = "https://login.microsoftonline.com"
# Tokens are renewed this long before they expire (at most a quarter of their life),
# so a request never leaves with a token that expires on its way.
RENEW_BEFORE_S = 300
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")  # a GUID or a domain name
MICROSOFT_AUTHORITY_HOSTS = frozenset(msal.authority.WELL_KNOWN_AUTHORITY_HOSTS)


@dataclass(frozen=True)
class Challenge:
    """What a server's `WWW-Authenticate: Bearer ...` says: the authority and the resource."""

    authority: str  # e.g. https://login.microsoftonline.com/{tenant}
    resource: str | None  # resource_id, the audience a token must be for


def parse_bearer_challenge(header: str) -> Challenge | None:
    """The authority and resource of a `Bearer authorization_uri=..., resource_id=...` header."""
    match = re.match(r"\s*Bearer\s+(.*)$", header or "", re.IGNORECASE | re.DOTALL)
    if not match:
        return None
    # A value runs to the next comma (the documented example has a space in its placeholder).
    params = {k.lower(): v.strip().strip('"') for k, v in
              re.findall(r'([A-Za-z_]+)\s*=\s*("[^"]*"|[^,]*)', match.group(1))}
    uri = params.get("authorization_uri")
    if not uri:
        return None
    # The authorize endpoint, v1 or v2, lives under the authority.
    authority = re.sub(r"/oauth2(/v2\.0)?/authorize/?$", "", uri.rstrip("/"))
    return Challenge(authority, params.get("resource_id") or None)


def authority_of(tenant: str | None = None, authority: str | None = None) -> str | None:
    """The authority URL an explicit tenant or authority names (None: find it from the server)."""
    if authority:
        parts = urlsplit(authority.strip())
        if parts.scheme != "https" or not parts.hostname or len(parts.path.strip("/")) == 0:
            raise InvalidInput("the authority must be an https:// URL with a tenant, like "
                               "https://login.microsoftonline.com/contoso.onmicrosoft.com",
                               field="authority")
        return authority.strip().rstrip("/")
    if tenant:
        tenant = tenant.strip()
        if not TENANT_RE.match(tenant):
            raise InvalidInput("the tenant must be a directory (tenant) id or a domain name, "
                               "like contoso.onmicrosoft.com", field="tenant")
        return f"{ENTRA_HOST}/{tenant}"
    return None


class TokenSource(ABC):
    """Where a backend's bearer tokens come from; thread-safe, cached until near expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        """A valid access token: the cached one, or a new one near (or past) its expiry."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                answer = self.acquire()
                if "access_token" not in answer:
                    raise CredentialsRefused(self.refusal(answer))
                lifetime = float(answer.get("expires_in", 3600))
                self._token = str(answer["access_token"])
                self._renew_at = time.monotonic() + lifetime - min(RENEW_BEFORE_S, lifetime / 4)
            return self._token

    def refused(self) -> None:
        """The server refused the token (401): the next call of token() gets a new one."""
        with self._lock:
            self._token = None
            self.forget()

    @abstractmethod
    def acquire(self) -> dict[str, Any]:
        """A new token answer: {'access_token', 'expires_in'} or {'error', 'error_description'}."""

    def forget(self) -> None:  # noqa: B027 - most sources cache nothing else
        """Drop whatever the source caches besides the token (MSAL's cache)."""

    @abstractmethod
    def refusal(self, answer: dict[str, Any]) -> str:
        """The refusal in words for the status page."""


class BearerAuth(AuthBase):
    """requests' auth: the source's current token on every request, and one retry after a 401.

    A token can be refused before its time (revoked, or the server's clock
    differs); the request is sent once more with a new token, as requests'
    own digest auth does, and a second 401 is the server's answer.
    """

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.source.token()}"
        request.register_hook("response", self.handle_401)
        return request

    def handle_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """Renew the token and send the request again, once."""
        if response.status_code != 401 or getattr(response.request, "bearer_retry", False):
            return response
        self.source.refused()
        response.content  # noqa: B018 - read, so the connection can be used again
        response.close()
        retry = response.request.copy()
        retry.headers["Authorization"] = f"Bearer {self.source.token()}"
        retry.bearer_retry = True  # type: ignore[attr-defined]
        again: requests.Response = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


class _EntraHttpClient:
    """MSAL's HTTP client: the backend's session, minus Entra-only user realm discovery.

    MSAL's password flow first asks `https://{host}/common/userrealm/...` (with
    the port dropped) whether the user is federated. Only Microsoft's hosts
    serve that; for any other authority (a portal's) the answer is "not
    found", which MSAL reads as "not federated" and goes on to the token.
    """

    def __init__(self, session: requests.Session, authority: str) -> None:
        self.session = session
        self.foreign = urlsplit(authority).hostname not in MICROSOFT_AUTHORITY_HOSTS

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """GET through the session (realm discovery answered locally off Microsoft's hosts)."""
        if self.foreign and "/common/userrealm/" in url:
            response = requests.Response()
            response.status_code = 404
            response.url = url
            response._content = b"{}"  # noqa: SLF001 - a complete, empty answer
            return response
        return self.session.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST through the session."""
        return self.session.post(url, **kwargs)

    def close(self) -> None:
        """The session belongs to the backend, which closes it."""


class MsalSource(TokenSource):
    """A token source on an MSAL application for one authority and one resource."""

    def __init__(self, session: requests.Session, authority: str, resource: str) -> None:
        super().__init__()
        self.session = session
        self.authority = authority
        self.scopes = [resource.rstrip("/") + "/.default"]
        self._app: msal.ClientApplication | None = None

    @property
    def app(self) -> msal.ClientApplication:
        """The MSAL application, made (and the authority's OpenID configuration read) once."""
        if self._app is None:
            try:
                self._app = self.make_app(_EntraHttpClient(self.session, self.authority))
            except ValueError as exc:  # MSAL: the authority's discovery document was not there
                raise CredentialsRefused(
                    f"the authority {self.authority} does not know this tenant, or is not an "
                    f"OAuth authority ({_first_line(str(exc))})") from None
            except requests.RequestException as exc:
                raise BackendError(f"the authority {self.authority} cannot be reached: "
                                   f"{exc.__class__.__name__}") from None
        return self._app

    @abstractmethod
    def make_app(self, http_client: _EntraHttpClient) -> msal.ClientApplication:
        """The MSAL application of this flow."""

    def msal_options(self, http_client: _EntraHttpClient) -> dict[str, Any]:
        """What every MSAL application here is made with."""
        # Instance discovery asks Microsoft whether a host is an authority; only
        # Microsoft's own hosts are known there, so it is off for any other.
        known = urlsplit(self.authority).hostname in MICROSOFT_AUTHORITY_HOSTS
        return {"authority": self.authority, "http_client": http_client,
                "instance_discovery": None if known else False}

    def refusal(self, answer: dict[str, Any]) -> str:
        """The authority's error code and message, first line only (trace ids dropped)."""
        description = _first_line(str(answer.get("error_description") or ""))
        return (f"the authority {self.authority} refused the sign-in: "
                f"{description or answer.get('error') or 'no reason given'}")

    def _call(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return dict(call(*args, **kwargs))
        except requests.RequestException as exc:
            raise BackendError(f"the authority {self.authority} cannot be reached: "
                               f"{exc.__class__.__name__}") from None
        except (ValueError, RuntimeError) as exc:  # MSAL's readable refusals of odd answers
            raise CredentialsRefused(f"the authority {self.authority} gave no token: "
                                     f"{_first_line(str(exc))}") from None


class ClientCredentials(MsalSource):
    """An application user: client id and secret of an Entra app registration."""

    def __init__(self, session: requests.Session, authority: str, resource: str,
                 client_id: str, client_secret: str) -> None:
        super().__init__(session, authority, resource)
        self.client_id = client_id
        self.client_secret = client_secret

    def make_app(self, http_client: _EntraHttpClient) -> msal.ClientApplication:
        """A confidential client."""
        return msal.ConfidentialClientApplication(
            self.client_id, client_credential=self.client_secret,
            **self.msal_options(http_client))

    def acquire(self) -> dict[str, Any]:
        """A token for the application itself."""
        app = self.app
        assert isinstance(app, msal.ConfidentialClientApplication)
        return self._call(app.acquire_token_for_client, self.scopes)

    def forget(self) -> None:
        """MSAL caches client tokens too: a refused one must not come back from there."""
        if isinstance(self._app, msal.ConfidentialClientApplication):
            self._app.remove_tokens_for_client()


class UserPassword(MsalSource):
    """A user's name and password through a public client (the resource-owner password flow)."""

    def __init__(self, session: requests.Session, authority: str, resource: str,
                 username: str, password: str,
                 client_id: str = DEFAULT_PUBLIC_CLIENT_ID) -> None:
        super().__init__(session, authority, resource)
        self.username = username
        self.password = password
        self.client_id = client_id or DEFAULT_PUBLIC_CLIENT_ID

    def make_app(self, http_client: _EntraHttpClient) -> msal.ClientApplication:
        """A public client."""
        return msal.PublicClientApplication(self.client_id, **self.msal_options(http_client))

    def acquire(self) -> dict[str, Any]:
        """A token for the user."""
        app = self.app
        assert isinstance(app, msal.PublicClientApplication)
        with warnings.catch_warnings():
            # MSAL marks the password flow deprecated for public clients; it is
            # still served, and it is how the seed's ConnectRequest signs in.
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*deprecated for public client flows")
            return self._call(app.acquire_token_by_username_password, self.username,
                              self.password, self.scopes)


class StaticToken(TokenSource):
    """A bearer token the connection was given (it cannot renew it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.given = token

    def acquire(self) -> dict[str, Any]:
        """The given token, once; refused once, there is no other."""
        return {"access_token": self.given} if self.given else {"error": "no token"}

    def refused(self) -> None:
        """The server refused the token: a second request with it would be refused too."""
        with self._lock:
            self._token = None
            self.given = ""

    def refusal(self, answer: dict[str, Any]) -> str:
        """Why there is no token."""
        return "the server refused the bearer token (a new one is needed)"


class TokenUrlCredentials(TokenSource):
    """OAuth 2.0 client credentials (RFC 6749, 4.4) against a plain token URL, as the
    `odata` backend signs in to services not behind Microsoft Entra ID."""

    def __init__(self, session: requests.Session, token_url: str, client_id: str,
                 client_secret: str, scope: str | None = None) -> None:
        super().__init__()
        self.session = session
        self.token_url = token_url
        self.client_id, self.client_secret, self.scope = client_id, client_secret, scope

    def acquire(self) -> dict[str, Any]:
        """A new token from the token URL (client id and secret as HTTP Basic, RFC 6749 2.3.1)."""
        data = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope
                                                        else {})}
        try:
            response = self.session.post(self.token_url, data=data, timeout=(10, 60),
                                         auth=(self.client_id, self.client_secret))
        except requests.RequestException as exc:
            raise BackendError(f"the token URL {self.token_url} cannot be reached: "
                               f"{exc.__class__.__name__}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code != 200 and "error" not in answer:
            answer = {"error": f"{response.status_code}"}
        return answer

    def refusal(self, answer: dict[str, Any]) -> str:
        """The token URL's error and description."""
        description = _first_line(str(answer.get("error_description") or ""))
        return (f"the token URL {self.token_url} refused the client credentials: "
                f"{description or answer.get('error') or 'no token in its answer'}")


def discover_authority(session: requests.Session, url: str) -> Challenge:
    """Ask the server (no token) where its tokens come from, as Dataverse answers: 401 + Bearer."""
    try:
        response = session.get(url, timeout=(10, 60), allow_redirects=False)
    except requests.RequestException as exc:
        raise BackendError(f"the server at {url} cannot be reached: "
                           f"{exc.__class__.__name__}") from None
    if response.status_code == 429:  # the service protection limits, not a wrong URL
        retry_after = response.headers.get("Retry-After")
        raise ServerLimited(f"stopped by the server's limit: GET {url} answered 429"
                            + (f" (Retry-After {retry_after} s)" if retry_after else ""))
    if response.status_code in (502, 503, 504):
        raise BackendError(f"the server at {url} is unavailable (it answered "
                           f"{response.status_code}); the next run tries again")
    challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
    if response.status_code != 401 or challenge is None:
        raise BackendError(
            f"{url} is not a Dataverse environment: without a token it answered "
            f"{response.status_code}, not 401 with a Bearer authorization_uri (enter the "
            "environment URL, like https://contoso.crm4.dynamics.com, or its tenant)")
    return challenge


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""

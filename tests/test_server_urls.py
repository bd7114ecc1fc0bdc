"""Server URL checks: private, loopback, link-local and multicast hosts are refused unless allowed.

Only loopback traffic is sent: names are resolved and literals inspected, and
the redirect test's first hop is a server on 127.0.0.1 that is never followed
to the address it points at.
"""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

from portal.backends.resco import RescoBackend
from portal.backends.server_urls import check_server_url, guard_session, refused_reason
from portal.errors import InvalidInput


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/odata/v4/srv/", "loopback"),
    ("http://127.8.9.10:8080/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.5/", "private"),
    ("http://172.31.255.1/", "private"),
    ("https://192.168.1.10/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://100.64.0.1/", "private or reserved"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[fd00::1]/", "private"),
    ("http://localhost:5000/odata/v4/srv/", "loopback"),
])
def test_server_url_private_address_is_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_server_url(url, allow_private=False)
    assert reason in refused.value.message
    assert refused.value.field == "url"
    assert "PORTAL_ALLOW_PRIVATE_SERVERS" in refused.value.message


@pytest.mark.parametrize("url", [
    "http://93.184.215.14/odata/v4/srv/",
    "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
    "https://8.8.8.8:8443/x",
])
def test_server_url_public_literal_is_allowed(url: str) -> None:
    assert check_server_url(url, allow_private=False) == url


def test_server_url_name_is_judged_by_every_address_it_resolves_to() -> None:
    public_only = lambda host: ["93.184.215.14"]  # noqa: E731
    mixed = lambda host: ["93.184.215.14", "10.0.0.7"]  # noqa: E731
    assert check_server_url("https://crm.example.com/", allow_private=False,
                            resolver=public_only)
    with pytest.raises(InvalidInput, match=r"crm.example.com \(10.0.0.7\)"):
        check_server_url("https://crm.example.com/", allow_private=False, resolver=mixed)


def test_server_url_unresolvable_name_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot be found"):
        check_server_url("http://no-such-host.invalid/", allow_private=False)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:5000/odata/v4/srv/", "http://localhost/", "http://10.0.0.1/"])
def test_server_url_private_address_is_allowed_when_the_operator_allows_it(url: str) -> None:
    assert check_server_url(url, allow_private=True) == url


@pytest.mark.parametrize("url, message", [
    ("ftp://93.184.215.14/", "http:// or https://"),
    ("93.184.215.14/odata", "http:// or https://"),
    ("http:///path", "name a host"),
    ("http://93.184.215.14:port/", "not a valid URL"),
    ("http://user:pw@93.184.215.14/", "user name or password"),
    ("", "http:// or https://"),
])
def test_server_url_malformed_is_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_server_url(url, allow_private=True)


def test_refused_reason_of_a_public_address_is_none() -> None:
    import ipaddress

    assert refused_reason(ipaddress.ip_address("93.184.215.14")) is None


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        target = {"/private": "http://10.9.8.7/odata/", "/relative": "/elsewhere",
                  "/metadata": "http://169.254.169.254/latest/"}.get(self.path)
        if target:
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
        else:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"here")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    """A server on 127.0.0.1 that redirects /private to a private address."""
    server = HTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("path, reason", [("/private", "private"), ("/metadata", "link-local"),
                                          ("/relative", "loopback")])
def test_guarded_session_refuses_a_redirect_to_a_private_address(redirector: str, path: str,
                                                                 reason: str) -> None:
    # The first hop is loopback (this test's own server); the hook refuses the
    # redirect target before requests sends anything to it.
    with requests.Session() as session:
        guard_session(session, allow_private=False)
        with pytest.raises(InvalidInput, match=reason):
            session.get(redirector + path, timeout=5)


def test_unguarded_session_follows_redirects_when_private_servers_are_allowed(
        redirector: str) -> None:
    with requests.Session() as session:
        guard_session(session, allow_private=True)
        assert session.get(redirector + "/relative", timeout=5).text == "here"


@pytest.mark.parametrize("url, reason", [("http://10.1.2.3/odata/v4/srv/", "private"),
                                         ("http://127.0.0.1:8080/odata/v4/srv/", "loopback")])
def test_backend_refuses_a_private_server_unless_allowed(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        RescoBackend(url, "user", "password")
    backend = RescoBackend(url, "user", "password", allow_private=True)
    backend.close()

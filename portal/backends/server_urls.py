"""Which server URLs a connection may reach: no loopback, private, link-local or multicast hosts.

A connection makes the portal send requests to a URL a stranger typed in, so
by default the portal refuses hosts inside the operator's network (the
classic server-side request forgery): the host is checked as a literal
address, and a host name by every address it resolves to. The operator turns
this off with ALLOW_PRIVATE_SERVERS (dev and tests, where servers are local).

Redirects are checked too: `guard_session` makes a requests session refuse
to follow a redirect whose target fails the same check, before the request
to that target is sent. What is not covered: a name that resolves to a
public address when checked and to a private one when the backend connects
(DNS rebinding); an operator who fears that runs the portal behind an egress
proxy or firewall.
"""

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from portal.errors import InvalidInput

Resolver = Callable[[str], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolve(host: str) -> list[str]:
    """Every address a host name resolves to (TCP), as text; InvalidInput if none."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidInput(f"the server host {host!r} cannot be found (DNS)", field="url") \
            from None
    return sorted({str(info[4][0]) for info in infos})


def refused_reason(address: IPAddress) -> str | None:
    """Why an address may not be a server's ('a loopback address'...), or None if it may."""
    # An IPv4 address written as IPv6 (::ffff:127.0.0.1) is judged as the IPv4 one.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private or reserved address"
    return None


def check_host(host: str, *, resolver: Resolver = resolve) -> None:
    """Refuse a host that is, or resolves to, an address the portal must not connect to."""
    host = host.strip("[]")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host)]
    for address in addresses:
        reason = refused_reason(address)
        if reason is not None:
            shown = host if str(address) == host else f"{host} ({address})"
            raise InvalidInput(
                f"the server URL points to {reason}: {shown}. This portal only connects to "
                "servers on public addresses (the operator can allow private ones with "
                "PORTAL_ALLOW_PRIVATE_SERVERS)", field="url")


def check_server_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> str:
    """Refuse a URL that is not http(s)://host/..., or whose host is not public (unless allowed)."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise InvalidInput("the server URL is not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("the server URL must start with http:// or https://", field="url")
    if not host:
        raise InvalidInput("the server URL must name a host", field="url")
    if parts.username is not None or parts.password is not None:
        # Credentials belong in the user name and password fields, not in a URL that is shown.
        raise InvalidInput("the server URL must not contain a user name or password", field="url")
    if not allow_private:
        check_host(host, resolver=resolver)
    return url


def guard_session(session: requests.Session, *, allow_private: bool,
                  resolver: Resolver = resolve) -> requests.Session:
    """Make a session refuse redirects to hosts check_server_url refuses (InvalidInput)."""
    if allow_private:
        return session

    def check_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        # Response hooks run for every response, redirects included, before
        # requests follows them: the next hop is checked before it is sent.
        if response.is_redirect:
            target = urljoin(response.url, response.headers.get("Location", ""))
            check_server_url(target, allow_private=False, resolver=resolver)

    session.hooks["response"].append(check_redirect)
    return session

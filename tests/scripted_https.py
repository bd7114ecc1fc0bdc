"""A scripted HTTPS server on 127.0.0.1 (trustme's test CA) that answers with vendor payloads.

For the parts of Dataverse and Microsoft Entra ID that cannot run here: each
route answers what Microsoft Learn documents (payloads in tests/fixtures/),
and every request is kept so a test can see what the client sent. MSAL
insists on an https:// authority, so the server speaks TLS; `session()` is a
requests session that trusts the test CA.
"""

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests
import trustme

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        """The body as an application/x-www-form-urlencoded form."""
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Answer:
    """What a route answers: status, headers, and a body (bytes, or JSON-able)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Seen], Answer]


def fixture(path: str) -> Any:
    """A JSON vendor payload from tests/fixtures/."""
    return json.loads((FIXTURES / path).read_text())


class ScriptedHttps:
    """Routes by method and path prefix; the longest matching prefix answers."""

    def __init__(self, tmp_path: Path) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[Seen] = []
        ca = trustme.CA()
        self.ca_path = tmp_path / "test-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()),
                            self.rfile.read(length))
                server.seen.append(seen)
                answer = server.answer(seen)
                body = answer.body if isinstance(answer.body, bytes) else \
                    json.dumps(answer.body).encode() if answer.body is not None else b""
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json; odata.metadata=minimal",
                           **answer.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = handle_any  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, method: str, prefix: str, route: Route | Answer) -> None:
        """Answer requests of `method` whose path starts with `prefix`."""
        self.routes[(method, prefix)] = route if callable(route) else (lambda _: route)

    def answer(self, seen: Seen) -> Answer:
        """The answer of the longest route that matches."""
        matching = [(len(p), r) for (m, p), r in self.routes.items()
                    if m == seen.method and seen.path.startswith(p)]
        if not matching:
            return Answer(404, {"error": {"code": "", "message": f"no route {seen.path}"}})
        return max(matching, key=lambda item: item[0])[1](seen)

    def requests_to(self, prefix: str) -> list[Seen]:
        """The requests received whose path starts with `prefix`."""
        return [s for s in self.seen if s.path.startswith(prefix)]

    def session(self) -> requests.Session:
        """A requests session that trusts the test CA."""
        session = requests.Session()
        # REQUESTS_CA_BUNDLE, when set, would win over `verify`: the environment is not read.
        session.trust_env = False
        session.verify = str(self.ca_path)
        return session

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def entra_authority(server: ScriptedHttps, tenant: str, token: Route | Answer) -> str:
    """Serve an Entra-like authority for `tenant` (OpenID discovery + token endpoint)."""
    base = f"{server.url}/{tenant}"
    server.route("GET", f"/{tenant}/v2.0/.well-known/openid-configuration", Answer(200, {
        "issuer": f"{base}/v2.0",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "response_types_supported": ["code"],
    }))
    server.route("POST", f"/{tenant}/oauth2/v2.0/token", token)
    return base

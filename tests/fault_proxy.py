"""A loopback HTTP proxy for fault tests: forwards to a portal, and can be told to fail.

* `down = True`: every connection is closed at once (the server is unreachable).
* `drop_batch_answers = N`: the next N `$batch` requests the server accepts (2xx)
  are applied, but their answers are dropped (the connection is cut), as when a
  network fails after the server did the work. `batch_forms`: each `$batch`'s
  Content-Type and status.
* `served`: records answered per entity set (GET pages' `value`), to prove
  what a resumed download read again; `pages`: non-empty pages answered.
* `flaky = p` (with `rng`, a random.Random): each request, with probability p,
  gets a `503`, a `429` with `Retry-After: 0`, or (after the server applied it)
  no answer at all, a third each.
* `limited = True`: every request is answered `429` with `Retry-After: 0`
  without reaching the server (its request budget is spent).
* `hold_page = (entity set, N)`: like `hold_batch`, for the N-th non-empty page
  of an entity set (the earlier pages are then committed or being written).
* `hold_batch = N`: the answer of the N-th `$batch` (counting from the proxy's
  start) is held after the server applied it: `holding` is set, and the answer
  goes out (to whoever is still there) on `release()`. A test kills the
  client in that window.

With `tls` (the portal's `portal_process.Tls`), the proxy speaks HTTPS on both
sides: it presents the portal's own test certificate to the client and
forwards over HTTPS trusting the test CA, so a backend that needs TLS (the
`dynamics` one, against a hosted org's Dataverse root) meets the same faults
over the same transport. The proxy sees the requests in clear between the two
TLS legs, as it must to count pages and hold `$batch` answers.
"""

import http.client
import json
import random
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tests.portal_process import Tls

# The path before an entity set: the Org API's `/odata/v4/{org}/`, the Dataverse root's
# `/dataverse/{org}/api/data/v9.2/`.
SERVICE_ROOTS = ("/api/data/", "/odata/v4/")


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `target` (http[s]://host:port)."""

    def __init__(self, target: str, tls: "Tls | None" = None) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80))
        self.tls = tls
        self.down = False
        self.drop_batch_answers = 0
        self.dropped = 0
        self.batches = 0
        self.batch_forms: list[tuple[str, int]] = []  # each $batch's Content-Type and status
        self.hold_batch = 0
        self.served: Counter[str] = Counter()
        self.pages: Counter[str] = Counter()
        self.hold_page: tuple[str, int] | None = None
        self.limited = False
        self.flaky = 0.0
        self.rng = random.Random(0)
        self.faults = 0
        self.requests = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                if proxy.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._fault()
                if fault in (503, 429):
                    self._refuse(fault)
                    return
                if proxy.limited:
                    message = b'{"error": {"code": "TooManyRequests", "message": "budget spent"}}'
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                upstream = proxy._upstream()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                proxy.requests += 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()  # the server did the work; the answer is lost
                    return
                if self.command == "GET" and response.status == 200:
                    entity_set = proxy._count(self.path, data)
                    if entity_set and (entity_set, proxy.pages[entity_set]) == proxy.hold_page:
                        proxy.holding.set()
                        proxy._released.wait(120)
                if "$batch" in self.path:
                    proxy.batches += 1
                    proxy.batch_forms.append((self.headers.get("Content-Type", "").split(";")[0],
                                              response.status))
                    if proxy.batches == proxy.hold_batch:
                        proxy.holding.set()
                        proxy._released.wait(120)
                    if proxy.drop_batch_answers > 0 and response.status < 300:
                        proxy.drop_batch_answers -= 1
                        proxy.dropped += 1
                        self.close_connection = True
                        self.connection.close()  # the server did the work; the answer is lost
                        return
                try:
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection",
                                               "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client is gone (killed while its answer was held)
                    self.close_connection = True

            def _refuse(self, status: int) -> None:
                message = b'{"error": {"code": "Busy", "message": "try again"}}'
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client killed mid-request resets its connection: expected here

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                if tls is None:
                    super().finish_request(request, client_address)
                    return
                try:  # the handshake in the request's own thread
                    secure = listening.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # a client that went away mid-handshake
                try:
                    super().finish_request(secure, client_address)
                finally:
                    secure.close()  # the server closes only the plain socket it accepted

        if tls is not None:
            listening = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            listening.load_cert_chain(str(tls.certfile), str(tls.keyfile))
            self._forwarding = ssl.create_default_context(cafile=str(tls.ca_file))
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _upstream(self) -> http.client.HTTPConnection:
        """A new connection to the portal (HTTPS, trusting the test CA, when `tls`)."""
        if self.tls is None:
            return http.client.HTTPConnection(*self.target, timeout=60)
        return http.client.HTTPSConnection(*self.target, timeout=60, context=self._forwarding)

    def _fault(self) -> int | str | None:
        """The fault this request meets when the proxy is flaky: 503, 429, 'drop' or None."""
        if not self.flaky or self.rng.random() >= self.flaky:
            return None
        self.faults += 1
        kinds: list[int | str] = [503, 429, "drop"]
        return self.rng.choice(kinds)

    def _count(self, path: str, data: bytes) -> str | None:
        """Count a page's records; the entity set of a non-empty page."""
        entity_set = path.split("?")[0]
        for root in SERVICE_ROOTS:
            if root in entity_set:  # the segment after the org (Org API) or the version
                entity_set = entity_set.split(root, 1)[1].split("/", 1)[-1]
                break
        else:  # a service at the server's root (odatapy): the path's last segment
            entity_set = entity_set.rsplit("/", 1)[-1]
        if not entity_set or "(" in entity_set or entity_set.startswith("$"):
            return None
        try:
            value = json.loads(data).get("value")
        except (ValueError, AttributeError):
            return None
        if not isinstance(value, list) or not value:
            return None
        self.served[entity_set] += len(value)
        self.pages[entity_set] += 1
        return entity_set

    def release(self) -> None:
        """Let a held answer go."""
        self._released.set()

    def stop(self) -> None:
        """Stop listening (a held answer is let go first)."""
        self.release()
        self.server.shutdown()
        self.server.server_close()

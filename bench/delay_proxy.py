"""A loopback HTTP proxy for benchmarks: delays every answer, counts requests.

It stands for a real network between the client and its server: each answer
leaves `delay_s` after the server gave it, and requests in flight at once
wait side by side, as they would over a long wire. `requests` counts what
passed (the no-change run's cost is counted here, whatever the client's
sessions). Keep-alive on both sides, so the proxy's own cost stays small.
"""

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class DelayProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `target`, each answer `delay_s` late."""

    def __init__(self, target: str, delay_s: float = 0.0) -> None:
        parts = urlsplit(target)
        upstream_at = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay_s = delay_s
        self.requests = 0
        count_lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                if self.upstream is None:  # one upstream connection per client connection
                    self.upstream = http.client.HTTPConnection(*upstream_at, timeout=300)
                self.upstream.request(self.command, self.path, body=body, headers=headers)
                response = self.upstream.getresponse()
                data = response.read()
                with count_lock:
                    proxy.requests += 1
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client closing its connection is not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()

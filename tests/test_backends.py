"""The OData backend's transport against small real HTTP servers on 127.0.0.1:
Retry-After on 429/503, refused credentials, a server that is down, a non-OData answer."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portal.backends.resco import RescoBackend
from portal.errors import BackendError, CredentialsRefused
from tests.portal_process import free_port


class Script:
    """A server that answers each request with the next (status, headers, body) of a script."""

    def __init__(self, answers: list[tuple[int, dict[str, str], object]]) -> None:
        self.answers = list(answers)
        self.seen: list[float] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                script.seen.append(time.monotonic())
                status, headers, body = script.answers.pop(0) if script.answers else (
                    500, {}, {"error": {"message": "script ended"}})
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/odata/v4/srv/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def script() -> Iterator[type[Script]]:
    """Start scripted servers; each is stopped at teardown."""
    started: list[Script] = []

    class Started(Script):
        def __init__(self, answers: list[tuple[int, dict[str, str], object]]) -> None:
            super().__init__(answers)
            started.append(self)

    yield Started
    for server in started:
        server.stop()


SERVICE = {"value": [{"name": "accounts", "url": "accounts"}]}


@pytest.mark.parametrize("busy", [429, 503])
def test_backend_waits_as_retry_after_says(script, busy: int) -> None:
    server = script([(busy, {"Retry-After": "1"}, {"error": {"message": "slow down"}}),
                     (200, {}, SERVICE)])
    backend = RescoBackend(server.url, "u", "p", retries=2, allow_private=True)
    assert backend.check_credentials() == "u"
    backend.close()
    assert len(server.seen) == 2
    assert server.seen[1] - server.seen[0] >= 0.9  # it waited the second it was told to


def test_backend_refused_credentials_name_the_servers_message(script) -> None:
    server = script([(401, {}, {"error": {"code": "Unauthorized", "message": "bad password"}})])
    backend = RescoBackend(server.url, "u", "p", retries=0, allow_private=True)
    with pytest.raises(CredentialsRefused, match="bad password"):
        backend.check_credentials()
    backend.close()


def test_backend_down_is_a_readable_error() -> None:
    backend = RescoBackend(f"http://127.0.0.1:{free_port()}/odata/v4/srv/", "u", "p", retries=1,
                           allow_private=True)
    with pytest.raises(BackendError, match="cannot be reached"):
        backend.check_credentials()
    backend.close()


@pytest.mark.parametrize("status, body, message", [
    (200, {"not": "odata"}, "not an OData v4 service document"),
    (500, {"error": {"message": "it broke"}}, "it broke"),
])
def test_backend_unexpected_answers_are_readable_errors(
        script, status: int, body: object, message: str) -> None:
    server = script([(status, {}, body)])
    backend = RescoBackend(server.url, "u", "p", retries=0, allow_private=True)
    with pytest.raises(BackendError, match=message):
        backend.check_credentials()
    backend.close()


def test_backend_waits_at_most_the_cap_of_a_long_retry_after(script) -> None:
    server = script([(429, {"Retry-After": "3600"}, {"error": {"message": "an hour"}}),
                     (200, {}, SERVICE)])
    backend = RescoBackend(server.url, "u", "p", retries=1, allow_private=True,
                           max_retry_after=1)
    assert backend.check_credentials() == "u"  # waited the cap (1 s here), not an hour
    backend.close()
    assert len(server.seen) == 2


def test_backend_backs_off_on_an_unreadable_retry_after(script) -> None:
    server = script([(503, {"Retry-After": "soon"}, {"error": {"message": "busy"}}),
                     (502, {}, {"error": {"message": "bad gateway"}}),
                     (200, {}, SERVICE)])
    backend = RescoBackend(server.url, "u", "p", retries=2, allow_private=True)
    assert backend.check_credentials() == "u"
    backend.close()
    assert len(server.seen) == 3


def test_backend_busy_beyond_its_retries_names_the_servers_message(script) -> None:
    server = script([(503, {"Retry-After": "0"}, {"error": {"message": "still busy"}})] * 3)
    backend = RescoBackend(server.url, "u", "p", retries=2, allow_private=True)
    with pytest.raises(BackendError, match="answered 503: still busy"):
        backend.check_credentials()
    backend.close()
    assert len(server.seen) == 3  # the first try and two retries


def test_backend_retries_batch_posts(script) -> None:
    # $batch writes are idempotent (upserts of own GUIDs, conditional writes): safe to resend.
    server = script([(429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
                     (200, {}, {"responses": []})])
    backend = RescoBackend(server.url, "u", "p", retries=1, allow_private=True)
    assert backend.request("POST", "$batch", data=b"{}").status_code == 200
    backend.close()
    assert len(server.seen) == 2

"""A real portal process for tests: gunicorn on 127.0.0.1, a free port, stopped at teardown.

Used by the Org API tests against real OData clients, and by the sync engine
tests, which start two portals and sync between them over HTTP. With `tls`
(a throwaway CA made by trustme), gunicorn serves HTTPS: Microsoft's
Dataverse SDK refuses any other scheme. Clients then trust the CA through
REQUESTS_CA_BUNDLE=tls.ca_file.
"""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from portal.processes import die_with_parent, stop_child

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60


# Linux: gunicorn is sent SIGTERM when the test process that started it dies. A
# killed pytest (timeout, Ctrl-C twice, SIGKILL) runs no fixture teardown; without
# this its portals would keep running, orphaned.
_die_with_parent = die_with_parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A server certificate for 127.0.0.1 and the CA that signed it, as PEM files."""

    certfile: Path
    keyfile: Path
    ca_file: Path

    @classmethod
    def make(cls, folder: Path) -> "Tls":
        """A new test CA (trustme) and a certificate for 127.0.0.1 and localhost, in `folder`."""
        import trustme

        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        tls = cls(folder / "server.pem", folder / "server.key", folder / "ca.pem")
        server.cert_chain_pems[0].write_to_path(str(tls.certfile))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(tls.certfile), append=True)
        server.private_key_pem.write_to_path(str(tls.keyfile))
        ca.cert_pem.write_to_path(str(tls.ca_file))
        return tls


class PortalProcess:
    """One portal served by gunicorn from an instance folder; `url` is its base URL."""

    def __init__(self, instance_path: Path, redis_url: str, *, workers: int = 2,
                 env: dict[str, str] | None = None, tls: Tls | None = None) -> None:
        self.instance_path = Path(instance_path)
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = self.instance_path / "gunicorn.log"
        self.instance_path.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "PORTAL_INSTANCE_PATH": str(self.instance_path),
                       "REDIS_URL": redis_url, **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        certificate = ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)] \
            if tls else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers), "--graceful-timeout", "2",
             # gunicorn 27 opens a control socket at one path per user: tests run
             # many portals at once, and none needs it.
             "--no-control-socket", *certificate, "wsgi:app"],
            cwd=ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - start from the main thread
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                requests.get(self.url + "/health", timeout=5,
                             verify=str(self.tls.ca_file) if self.tls else True)
                return
            except requests.RequestException:  # not listening yet, or busy starting
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"portal did not start: {self.log_path.read_text()[-2000:]}")

    def odata_root(self, org: str) -> str:
        """The service root of an org on this portal."""
        return f"{self.url}/odata/v4/{org}/"

    def stop(self) -> None:
        """Stop gunicorn (by its PID) and wait for it; killed if it does not stop in time."""
        stop_child(self.process)
        self._log.close()

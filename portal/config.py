"""Configuration: declared settings, checked when the app starts.

Defaults here, then instance/config.py, then PORTAL_* variables, then the
test config (Datasette's SETTINGS table in datasette/app.py is the model).
"""

import difflib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portal.errors import InvalidSetting

PREFIX = "PORTAL_"


@dataclass(frozen=True)
class Setting:
    """One setting of the portal: its name, type, default and what it means."""

    name: str
    type: type  # str, int, bool or dict
    default: Any
    help: str
    optional: bool = False  # None is a value too

    def check(self, value: Any) -> str | None:
        """Why the value does not fit the setting's type; None when it does."""
        if value is None and self.optional:
            return None
        # bool is an int in Python: a setting of one type refuses the other.
        if isinstance(value, self.type) and (self.type is bool) == isinstance(value, bool):
            return None
        kinds = {str: "a string", int: "an integer", bool: "true or false",
                 dict: "a JSON object"}
        return f"must be {kinds[self.type]}{' or null' if self.optional else ''}, got {value!r}"


# The portal's settings, the one place they are declared (the README lists them).
# Each is set, in order, by these defaults, instance/config.py, PORTAL_<NAME>
# variables (JSON values: 5000, true, "text"; else the text itself), the test config.
SETTINGS = (
    Setting("DATABASE", str, "portal.db",
            "registry database file, relative to the instance folder unless absolute"),
    Setting("ORGS_DIR", str, "orgs",
            "folder of the hosted orgs' SQLite files, relative to the instance folder"),
    Setting("REDIS_URL", str, None,
            "Redis of the job queue; null: the REDIS_URL variable, else the bundled Redis "
            "on instance/redis.sock", optional=True),
    Setting("SECRET_KEY", str, None,
            "signs sessions and status links; null: generated once into instance/secret_key",
            optional=True),
    Setting("MAX_CONTENT_LENGTH", int, 32 * 1024 * 1024,
            "largest request body accepted by any endpoint, bytes"),
    Setting("API_MAX_CONTENT_LENGTH", int, 16 * 1024 * 1024,
            "largest request body of the Org API (/odata/v4/), $batch included, bytes"),
    Setting("SERVICE_MAX_CONTENT_LENGTH", int, 2 * 1024 * 1024,
            "largest request body of the sync web service (/rest/v1/), bytes"),
    Setting("ALLOW_PRIVATE_SERVERS", bool, False,
            "allow server URLs on loopback, private and link-local addresses"),
    Setting("PAGE_CACHE", bool, True,
            "Org API and Dataverse root: pages of entity sets built once and served to every "
            "caller asking for the same page of the same data (portal/web/page_cache.py)"),
    Setting("PAGE_CACHE_MB", int, 64,
            "page cache: most megabytes of pages kept per web worker process"),
    Setting("SYNC_PAGE_SIZE", int, 5000, "sync: records per downloaded page"),
    Setting("SYNC_STREAMS", int, 4,
            "sync: entities a connection's run downloads at once (at most what its server "
            "type allows)"),
    Setting("SYNC_UPLOAD_BATCH", int, 1000, "sync: transactions per upload round"),
    Setting("SYNC_HTTP_RETRIES", int, 5,
            "sync: how often a request to a server is tried again before the run fails"),
    Setting("CONNECT_RATE_LIMIT", str, "10 per minute; 60 per hour",
            "connect page, ConnectAsync, SyncAsync: requests per client address "
            "(`limits` notation), counted in the job queue's Redis"),
    Setting("AUTH_RATE_LIMIT", str, "10 per 5 minutes; 30 per hour",
            "failed sign-ins per account (org and user name, existing or not) on every "
            "sign-in path, then 429 with Retry-After (`limits` notation)"),
    Setting("AUTH_ADDRESS_RATE_LIMIT", str, "100 per 5 minutes; 300 per hour",
            "failed sign-ins per client address (API tokens count here only)"),
    Setting("RATELIMIT_ENABLED", bool, None,
            "rate limits on or off; null: on, except in tests", optional=True),
    Setting("DATAVERSE_TOKEN_LIFETIME_S", int, 3599,
            "Dataverse root: seconds an OAuth access token is valid (expires_in)"),
    Setting("DATAVERSE_SERVICE_PROTECTION", bool, False,
            "Dataverse root: per-user service protection limits (429), counted in the job "
            "queue's Redis; off by default (`make run`), on in the tests that test it"),
    Setting("DATAVERSE_LIMIT_REQUESTS", int, 6000,
            "service protection: requests per user in the window"),
    Setting("DATAVERSE_LIMIT_EXECUTION_MS", int, 1_200_000,
            "service protection: combined execution time per user in the window, ms"),
    Setting("DATAVERSE_LIMIT_CONCURRENT", int, 52,
            "service protection: concurrent requests per user"),
    Setting("DATAVERSE_LIMIT_WINDOW_S", int, 300, "service protection: sliding window, seconds"),
    Setting("DATAVERSE_DOP_HINT", int, 2,
            "Dataverse root: the degree of parallelism every Web API answer recommends "
            "(x-ms-dop-hint), how many requests a client should send at once: what the web "
            "processes serve at once (the Procfile's 2 gunicorn workers)"),
    Setting("DATAVERSE_UNTRACKED_TABLES", str, "",
            "Dataverse root: tables (comma-separated logical names) whose EntityDefinitions "
            "say ChangeTrackingEnabled false, as in an environment where change tracking is "
            "off for them: their clients read them by a modifiedon watermark"),
    Setting("OPERATORS", dict, None,
            "operators of the status page (/status): name -> password hash (werkzeug's "
            "generate_password_hash); null or {}: the status page lets nobody in",
            optional=True),
)
SETTING = {s.name: s for s in SETTINGS}
# Read from the environment before the config exists (create_app).
ENVIRONMENT_ONLY = ("PORTAL_INSTANCE_PATH",)
# Flask and Flask-WTF settings the portal sets itself.
# The session cookie (the org admin's and the operator's sign-in): HttpOnly, SameSite=Lax,
# and Secure whenever the request came over HTTPS (None; true or false forces it). Behind
# a TLS-terminating proxy, wrap the app in werkzeug's ProxyFix so that requests know it.
FIXED = {"WTF_CSRF_TIME_LIMIT": None, "JSON_SORT_KEYS": False,
         "SESSION_COOKIE_HTTPONLY": True, "SESSION_COOKIE_SAMESITE": "Lax",
         "SESSION_COOKIE_SECURE": None, "PERMANENT_SESSION_LIFETIME": 8 * 3600}


def defaults() -> dict[str, Any]:
    """Every setting at its default, and the framework settings the portal fixes."""
    return {**{s.name: s.default for s in SETTINGS}, **FIXED}


def check_environment(environ: Mapping[str, str], framework: Mapping[str, Any]) -> None:
    """Refuse a PORTAL_* variable that names no setting (a typo would be ignored silently).

    Flask's own settings (`framework`, e.g. SESSION_COOKIE_SECURE) may be set this way too.
    """
    for key in sorted(environ):
        name = key.removeprefix(PREFIX)
        if not key.startswith(PREFIX) or key in ENVIRONMENT_ONLY or name in SETTING \
                or name in framework:
            continue
        close = difflib.get_close_matches(name, list(SETTING), n=1)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        raise InvalidSetting(f"unknown setting {key}{hint} (the settings are listed in "
                             "portal/config.py and the README)", field=key)


def check_settings(config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Refuse a setting whose value does not fit its declared type, naming where it came from."""
    for setting in SETTINGS:
        problem = setting.check(config.get(setting.name))
        if problem is not None:
            source = PREFIX + setting.name if PREFIX + setting.name in environ \
                else setting.name
            raise InvalidSetting(f"setting {source} {problem} ({setting.help})", field=source)


def instance_secret(instance_path: str | Path, name: str, make: Callable[[], bytes]) -> bytes:
    """Read a secret file of the instance, generating it once (mode 0600) on first use."""
    path = Path(instance_path) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole into a file of this process, then linked to its name, which
        # fails if another process got there first: processes starting at once (the
        # web workers) agree on one secret, and none reads a file still being written.
        draft = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(make())
                f.flush()
                os.fsync(f.fileno())
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    secret = path.read_bytes().strip()
    if not secret:
        raise RuntimeError(f"{path} is empty (a start stopped while writing it?): delete it, "
                           "and a new one is made")
    return secret


def load_secret_key(instance_path: str) -> str:
    """Return the instance's secret key, generating it once into instance/secret_key."""
    return instance_secret(instance_path, "secret_key",
                           lambda: secrets.token_hex(32).encode()).decode()


def bundled_redis_socket(instance_path: str) -> str:
    """Path of the bundled redis-server's unix socket inside the instance folder."""
    return str(Path(instance_path) / "redis.sock")

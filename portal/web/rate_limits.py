"""Rate limits per client address on what creates work: the connect page and the sync service.

Counted in the job queue's Redis with the `limits` library (the engine of
flask-limiter), one limiter per app: flask-limiter keeps its storage and its
on/off switch on one global object, which the last app initialised in a
process would decide for all. Off in tests unless a test turns it on.
The client address is request.remote_addr: behind a reverse proxy, wrap the
app in werkzeug's ProxyFix so that it is the caller's, not the proxy's.
"""

import math
import time

from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests


class RateLimits:
    """The app's limits, with its Redis storage opened on first use."""

    def __init__(self, app: Flask) -> None:
        enabled = app.config.get("RATELIMIT_ENABLED")
        self.enabled = (not app.testing) if enabled is None else bool(enabled)
        self.items: list[RateLimitItem] = parse_many(app.config["CONNECT_RATE_LIMIT"])
        redis_url: str = app.config["REDIS_URL"]
        # limits names a unix socket redis+unix://; the portal's REDIS_URL says unix://.
        self.uri = "redis+" + redis_url if redis_url.startswith("unix://") else redis_url
        self._storage: Storage | None = None
        self._limiter: FixedWindowRateLimiter | None = None

    def limiter(self) -> FixedWindowRateLimiter:
        """The limiter, connecting its storage on first use."""
        if self._limiter is None:
            storage = storage_from_string(self.uri)
            assert isinstance(storage, Storage)  # the synchronous kind, as the URI names
            self._storage = storage
            self._limiter = FixedWindowRateLimiter(storage)
        return self._limiter

    def hit(self, scope: str, key: str) -> None:
        """Count one request of `key` in `scope`; TooManyRequests (429) when over a limit."""
        if not self.enabled:
            return
        limiter = self.limiter()
        for item in self.items:
            if not limiter.hit(item, "portal", scope, key):
                reset = limiter.get_window_stats(item, "portal", scope, key).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise TooManyRequests(
                    f"Too many requests from your address: at most {item}. "
                    f"Try again in {wait} seconds.", retry_after=wait)

    def close(self) -> None:
        """Close the storage's Redis connections."""
        storage = self._storage
        if storage is not None:
            pool = getattr(getattr(storage, "storage", None), "connection_pool", None)
            if pool is not None:
                pool.disconnect()
        self._storage = self._limiter = None


def init_app(app: Flask) -> None:
    """Give the app its rate limits (CONNECT_RATE_LIMIT, RATELIMIT_ENABLED)."""
    app.extensions["portal_rate_limits"] = RateLimits(app)


def hit(scope: str) -> None:
    """Count this request against the caller's address; 429 when over the limit."""
    limits: RateLimits = current_app.extensions["portal_rate_limits"]
    limits.hit(scope, request.remote_addr or "unknown")

"""Failed sign-ins throttled, per account and per client address, for every way to sign in.

Each sign-in path (HTTP Basic and API tokens on the Org API, Basic on the sync
web service, and the org admin's form and the token endpoint when they exist)
calls `check(account)` before it verifies credentials and `failed(account)`
when they are wrong. After AUTH_RATE_LIMIT failures of one account, or
AUTH_ADDRESS_RATE_LIMIT failures from one client address, in their windows,
`check` answers 429 with Retry-After (werkzeug's TooManyRequests: each
blueprint renders it in its own format, an HTML page for a form) — even for
the right password, so a guesser learns nothing more. An account is named the
same way whether it exists or not, so the answer does not tell either. API
tokens are counted per address only (account None): they cannot be guessed,
and a per-org count would let anyone lock out an org's programs. A request
without credentials is no failed sign-in and counts nothing.
Successful sign-ins count nothing: other users are unaffected until their own
address reaches its (higher) limit.

Counted in the job queue's Redis with the `limits` library, like the other
rate limits (portal.web.rate_limits, whose on/off switch RATELIMIT_ENABLED it
shares). If Redis cannot be reached, sign-ins are not throttled (and a warning
is logged): the portal stays usable while the queue is down. Redis is then not
asked again for DOWN_RETRY_S, so a portal without its queue does not pay a
refused connection (and a log line) on every request.

`check` runs before every authenticated request, so it asks Redis once: one
MGET of every window counter of the address and the account.
"""

import math
import time
from typing import cast

from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from redis import Redis, RedisError
from werkzeug.exceptions import TooManyRequests

from portal.web.rate_limits import RateLimits

SCOPE = "auth-failures"
DOWN_RETRY_S = 5.0  # after Redis was unreachable, skip it this long


class AuthThrottle:
    """The app's sign-in limits, sharing the rate limits' Redis storage."""

    def __init__(self, app: Flask, limits: RateLimits) -> None:
        self.limits = limits
        self.per_account: list[RateLimitItem] = parse_many(app.config["AUTH_RATE_LIMIT"])
        self.per_address: list[RateLimitItem] = parse_many(
            app.config["AUTH_ADDRESS_RATE_LIMIT"])
        self._down_until = 0.0  # time.monotonic() until which Redis is not asked

    def _keys(self, account: str | None) -> list[tuple[list[RateLimitItem], str]]:
        keys = [(self.per_address, "address:" + (request.remote_addr or "unknown"))]
        if account is not None:
            keys.append((self.per_account, "account:" + account.lower()))
        return keys

    def check(self, account: str | None) -> None:
        """TooManyRequests (429, Retry-After) when the account or the address failed too often."""
        if not self.limits.enabled or self._redis_down():
            return
        try:
            limiter = self.limits.limiter()
            limits = [(item, key) for items, key in self._keys(account) for item in items]
            counts = _counts(limiter, limits)
            for (item, key), count in zip(limits, counts, strict=True):
                if count >= item.amount:  # as FixedWindowRateLimiter.test, in one round trip
                    wait = _wait(limiter, item, key)
                    raise TooManyRequests(
                        f"Too many failed sign-ins: try again in {wait} seconds.",
                        retry_after=wait)
        except RedisError as exc:
            self._went_down()
            current_app.logger.warning("sign-ins not throttled, Redis unreachable: %s", exc)

    def failed(self, account: str | None) -> None:
        """Count one failed sign-in of the account and of the caller's address."""
        if not self.limits.enabled or self._redis_down():
            return
        try:
            limiter = self.limits.limiter()
            for items, key in self._keys(account):
                for item in items:
                    limiter.hit(item, SCOPE, key)
        except RedisError as exc:
            self._went_down()
            current_app.logger.warning("failed sign-in not counted, Redis unreachable: %s", exc)

    def _redis_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _went_down(self) -> None:
        self._down_until = time.monotonic() + DOWN_RETRY_S


def _counts(limiter: FixedWindowRateLimiter, limits: list[tuple[RateLimitItem, str]]
            ) -> list[int]:
    """The failures counted in each limit's current window, read with one MGET from Redis."""
    storage = limiter.storage
    if not isinstance(storage, RedisStorage):  # another storage: one read per limit
        return [storage.get(item.key_for(SCOPE, key)) for item, key in limits]
    connection = cast(Redis, storage.get_connection(readonly=True))  # limits types a protocol
    values = connection.mget(
        [storage.prefixed_key(item.key_for(SCOPE, key)) for item, key in limits])
    return [int(value or 0) for value in values]


def _wait(limiter: FixedWindowRateLimiter, item: RateLimitItem, key: str) -> int:
    reset = limiter.get_window_stats(item, SCOPE, key).reset_time
    return max(1, math.ceil(reset - time.time()))


def init_app(app: Flask) -> None:
    """Give the app its sign-in throttle (after rate_limits.init_app)."""
    app.extensions["portal_auth_throttle"] = AuthThrottle(
        app, app.extensions["portal_rate_limits"])


def account(org: str, name: str) -> str:
    """How an account is named for the throttle: its org and sign-in name, existing or not."""
    return f"{org}/{name.strip().lower()}"


def check(name: str | None) -> None:
    """Before verifying credentials of this account: 429 if it (or the address) failed too often."""
    throttle: AuthThrottle = current_app.extensions["portal_auth_throttle"]
    throttle.check(name)


def failed(name: str | None) -> None:
    """After credentials of this account were refused: count the failure."""
    throttle: AuthThrottle = current_app.extensions["portal_auth_throttle"]
    throttle.failed(name)

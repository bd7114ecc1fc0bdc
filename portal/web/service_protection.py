"""Service protection of the Dataverse root: per-user budgets as Dataverse documents them.

Microsoft Learn, "Service protection API limits" (api-limits.md): per user, in
a sliding window of 300 s, at most 6,000 requests and 1,200,000 ms of
combined execution time, and at most 52 concurrent requests. Over a limit,
the Web API answers 429 with `Retry-After` (seconds) and the error codes
0x80072322, 0x80072321 and 0x80072326; every answer carries
`x-ms-ratelimit-burst-remaining-xrm-requests` and
`x-ms-ratelimit-time-remaining-xrm-requests`.

Counted in the job queue's Redis, so every web process shares one budget per
user. The window slides in buckets of BUCKET_S seconds. Off unless
DATAVERSE_SERVICE_PROTECTION is set (`make run` leaves it off); the limits
are settings. When Redis cannot be reached the request is served (and a
warning logged): losing the protection is better than refusing every user.
"""

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from redis import Redis, RedisError

from portal.queue import get_redis
from portal.web.odata.dialect import Dialect
from portal.web.odata.messages import ErrorKind, ProtocolError

BUCKET_S = 5


@dataclass(frozen=True)
class Limits:
    """The budgets of one user (settings DATAVERSE_LIMIT_*)."""

    requests: int
    execution_ms: int
    concurrent: int
    window_s: int


@dataclass
class Budget:
    """What is left of a user's budget, as the response headers say it."""

    headers: dict[str, str] = field(default_factory=dict)


def limits_of(config: Any) -> Limits:
    """The limits an app's settings give."""
    return Limits(int(config["DATAVERSE_LIMIT_REQUESTS"]),
                  int(config["DATAVERSE_LIMIT_EXECUTION_MS"]),
                  int(config["DATAVERSE_LIMIT_CONCURRENT"]),
                  int(config["DATAVERSE_LIMIT_WINDOW_S"]))


def user_key(org: str, user: dict[str, Any]) -> str:
    """The Redis key prefix of one user's budget."""
    return f"portal:sp:{org}:{user.get('kind', 'user')}:{user['id']}"


def too_many(kind: ErrorKind, message: str, retry_after: int) -> ProtocolError:
    """Dataverse's 429 with Retry-After (whole seconds, at least 1); its code is the kind's."""
    return ProtocolError(429, "TooManyRequests", message, kind=kind,
                         headers={"Retry-After": str(max(1, retry_after))})


def _buckets(now: float, window_s: int) -> list[int]:
    """The buckets of the window ending now, oldest first."""
    current = int(now // BUCKET_S)
    return list(range(current - math.ceil(window_s / BUCKET_S) + 1, current + 1))


def _wait(buckets: list[int], counts: list[int], limit: int, now: float, window_s: int) -> int:
    """Seconds until enough of the oldest buckets leave the window to be under `limit` again."""
    total = sum(counts)
    for bucket, count in zip(buckets, counts, strict=True):
        total -= count
        if total < limit:
            return math.ceil((bucket + 1) * BUCKET_S + window_s - now)
    return window_s


def check(redis: Redis, key: str, limits: Limits, now: float) -> tuple[int, int]:
    """Refuse (429) a user over the request or execution-time budget; else what remains."""
    buckets = _buckets(now, limits.window_s)
    requests = [int(v or 0) for v in redis.mget([f"{key}:req:{b}" for b in buckets])]
    spent = [int(v or 0) for v in redis.mget([f"{key}:ms:{b}" for b in buckets])]
    if sum(requests) >= limits.requests:
        raise too_many(ErrorKind.TOO_MANY_REQUESTS,
                       f"Number of requests exceeded the limit of {limits.requests} over time "
                       f"window of {limits.window_s} seconds.",
                       _wait(buckets, requests, limits.requests, now, limits.window_s))
    if sum(spent) >= limits.execution_ms:
        raise too_many(ErrorKind.TOO_MUCH_EXECUTION_TIME,
                       f"Combined execution time of incoming requests exceeded limit of "
                       f"{limits.execution_ms:,} milliseconds over time window of "
                       f"{limits.window_s} seconds. Decrease number of concurrent requests or "
                       "reduce the duration of requests and try again later.",
                       _wait(buckets, spent, limits.execution_ms, now, limits.window_s))
    return limits.requests - sum(requests) - 1, limits.execution_ms - sum(spent)


def _count(redis: Redis, key: str, name: str, amount: int, now: float, window_s: int) -> None:
    bucket_key = f"{key}:{name}:{int(now // BUCKET_S)}"
    with redis.pipeline() as pipe:
        pipe.incrby(bucket_key, amount)
        pipe.expire(bucket_key, window_s + BUCKET_S)
        pipe.execute()


class Held:
    """One request inside a user's budget: refused (429) on entry when over it, counted on leave."""

    def __init__(self, redis: Redis, key: str, limits: Limits) -> None:
        self.redis, self.key, self.limits = redis, key, limits
        self.concurrent_key = f"{key}:concurrent"
        self.now = time.time()
        self.started = time.monotonic()

    def enter(self) -> Budget:
        """Check the window's budgets and take a concurrency slot; 429 when over a limit."""
        remaining, time_left = check(self.redis, self.key, self.limits, self.now)
        running = int(self.redis.incr(self.concurrent_key))
        self.redis.expire(self.concurrent_key, self.limits.window_s)  # a killed process frees it
        if running > self.limits.concurrent:
            self.redis.decr(self.concurrent_key)
            raise too_many(ErrorKind.TOO_MANY_CONCURRENT,
                           "Number of concurrent requests exceeded the limit of "
                           f"{self.limits.concurrent}.", 1)
        self.started = time.monotonic()
        return Budget({"x-ms-ratelimit-burst-remaining-xrm-requests": str(remaining),
                       "x-ms-ratelimit-time-remaining-xrm-requests": str(time_left)})

    def leave(self) -> None:
        """Free the slot; count the request and its execution time (at least 1 ms)."""
        self.redis.decr(self.concurrent_key)
        elapsed_ms = max(1, math.ceil((time.monotonic() - self.started) * 1000))
        _count(self.redis, self.key, "req", 1, self.now, self.limits.window_s)
        _count(self.redis, self.key, "ms", elapsed_ms, self.now, self.limits.window_s)


@contextmanager
def budget(dialect: Dialect, org: str, user: dict[str, Any]) -> Iterator[Budget]:
    """The request's budget when the dialect and the settings apply protection; else no-op."""
    config = current_app.config
    if not (dialect.service_protection and config["DATAVERSE_SERVICE_PROTECTION"]):
        yield Budget()
        return
    try:
        held = Held(get_redis(), user_key(org, user), limits_of(config))
        entered = held.enter()
    except RedisError as exc:
        current_app.logger.warning("service protection skipped, Redis unreachable: %s", exc)
        yield Budget()
        return
    try:
        yield entered
    finally:
        try:
            held.leave()
        except RedisError as exc:
            current_app.logger.warning("service protection not counted, Redis unreachable: %s",
                                       exc)

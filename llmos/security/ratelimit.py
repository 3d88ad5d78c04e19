"""Token buckets: requests and tokens per minute per API key; failed sign-ins per client
address and per key id.

A bucket holds at most `capacity` units and refills at `capacity / 60` per second, so a key with
5 requests/minute may burst 5 and then gets one more every 12 s. Prompt tokens are taken at
admission (refused if the bucket cannot cover them); completion tokens are settled at the end and
may drive the level below zero, which delays the key's next request instead of cutting a stream.
Buckets live in this process's memory: each server enforces its own limits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmos.errors import RateLimited

MAX_BUCKETS = 50_000  # beyond this, full (idle) buckets are dropped


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    level: float
    updated_s: float

    @property
    def rate_per_s(self) -> float:
        return self.capacity / 60.0

    def refill(self, now_s: float) -> None:
        elapsed = max(0.0, now_s - self.updated_s)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
        self.updated_s = now_s

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` can be taken (0 if it can be now)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    @property
    def is_full(self) -> bool:
        return self.level >= self.capacity


@dataclass(frozen=True, slots=True)
class FailureCount:
    """Failed sign-ins of the busiest subject within the last minute or so (this one included),
    and how long until it may fail again without a 429 (0: it is within budget)."""

    num_recent: int
    retry_after_s: float

    @property
    def is_limited(self) -> bool:
        return self.retry_after_s > 0


class RateLimiter:
    """Thread-safe buckets keyed by (kind, id); limits are passed per call so a changed limit
    applies at once (the bucket is rebuilt when its capacity changes)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def take_request(self, key_id: str, per_minute: int) -> None:
        """Count one request against `key_id`, or RateLimited with Retry-After."""
        with self._lock:
            bucket = self._bucket(("requests", key_id), per_minute)
            wait = bucket.wait_s(1)
            if wait > 0:
                raise _limited("requests", per_minute, bucket, wait)
            bucket.level -= 1

    def take_tokens(self, key_id: str, per_minute: int, num_tokens: int) -> None:
        """Take prompt tokens at admission, or RateLimited (never partially)."""
        if num_tokens > per_minute:
            raise RateLimited(
                f"This request needs {num_tokens} tokens but the key allows {per_minute} "
                "tokens per minute.",
                code="rate_limit_exceeded",
                hint="send a shorter prompt or ask for a higher tokens-per-minute limit",
                retry_after_s=60.0,
            )
        with self._lock:
            bucket = self._bucket(("tokens", key_id), per_minute)
            wait = bucket.wait_s(num_tokens)
            if wait > 0:
                raise _limited("tokens", per_minute, bucket, wait)
            bucket.level -= num_tokens

    def settle_tokens(self, key_id: str, per_minute: int, num_tokens: int) -> None:
        """Charge completion tokens after the fact (the level may go negative)."""
        with self._lock:
            self._bucket(("tokens", key_id), per_minute).level -= num_tokens

    def count_failure(self, subjects: Sequence[str], per_minute: int) -> FailureCount:
        """Count one failed sign-in against each subject (a client address, a key id).

        A subject with budget left is charged one unit; one already out of budget is not
        charged again, so a flood that stops is forgiven at the bucket's refill rate instead
        of digging an ever deeper hole. `retry_after_s` > 0 means some subject is out of
        budget: the caller answers 429.
        """
        num_recent, retry_after_s = 0, 0.0
        with self._lock:
            for subject in subjects:
                bucket = self._bucket(("auth-failures", subject), per_minute)
                if bucket.level >= 1:
                    bucket.level -= 1
                else:
                    retry_after_s = max(retry_after_s, bucket.wait_s(1))
                num_recent = max(num_recent, math.ceil(bucket.capacity - bucket.level))
        return FailureCount(num_recent=num_recent, retry_after_s=retry_after_s)

    def _bucket(self, key: tuple[str, str], capacity: int) -> TokenBucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.capacity != capacity:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            level = capacity if bucket is None else min(bucket.level, capacity)
            bucket = TokenBucket(capacity=float(capacity), level=float(level), updated_s=now)
            self._buckets[key] = bucket
        bucket.refill(now)
        return bucket

    def _prune(self, now_s: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now_s)
            if bucket.is_full:
                del self._buckets[key]


def _limited(kind: str, per_minute: int, bucket: TokenBucket, wait_s: float) -> RateLimited:
    reset_s = max(0.0, (bucket.capacity - bucket.level) / bucket.rate_per_s)
    return RateLimited(
        f"Rate limit reached: {per_minute} {kind} per minute for this API key.",
        code="rate_limit_exceeded",
        hint=f"retry in {math.ceil(wait_s)} s",
        retry_after_s=wait_s,
        headers={
            f"x-ratelimit-limit-{kind}": str(per_minute),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(bucket.level))),
            f"x-ratelimit-reset-{kind}": f"{math.ceil(reset_s)}s",
        },
    )

"""Failed sign-ins: counted per client address and per key id, answered late, audited in bounds.

A wrong key never locks out a valid one: the key is always checked first (in constant time) and
only a failure is counted. The n-th recent failure of the busiest subject (the client address or
the key id the bearer token names) is answered after `FIRST_DELAY_S * 2**(n-1)` seconds, capped
at `auth_failure_max_delay_s`; past `auth_failures_per_minute` it is a 429 with Retry-After. The
audit log gets one `auth.fail` row per failure up to `auth_failures_audited_per_minute` per
address per minute (and `MAX_AUDITED_FAILURES_PER_MINUTE` over all addresses); the rest are
counted, and each address whose minute had unaudited failures gets one `auth.fail.summary` row
when that minute is over (written at the next sign-in after it, or at shutdown; at most
`MAX_SUMMARIES_PER_MINUTE`, plus one for all addresses together that holds the totals). So a
flood from any number of addresses adds a bounded number of rows per minute.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmos.config import SecurityConfig
from llmos.errors import LlmosError, RateLimited, Unauthenticated
from llmos.security.ratelimit import FailureCount, RateLimiter

FIRST_DELAY_S = 0.05
WINDOW_S = 60.0
MAX_AUDITED_FAILURES_PER_MINUTE = 1000  # over all addresses: many addresses cannot flood either
MAX_SUMMARIES_PER_MINUTE = 100  # address summaries; the all-address summary keeps the totals
MAX_WINDOWS = 10_000  # addresses tracked at once; the oldest window is closed early beyond it
ALL_ADDRESSES = "*"


@dataclass(frozen=True, slots=True)
class SignInFailure:
    """A refused sign-in: the error to answer with, after `delay_s` (an asyncio sleep)."""

    error: LlmosError
    delay_s: float


@dataclass(slots=True)
class _Window:
    """One address's (or all addresses') failures within one minute."""

    started_s: float
    num_failures: int = 0
    num_audited: int = 0


def failure_delay_s(num_recent: int, max_delay_s: float) -> float:
    """The delay before answering the `num_recent`-th recent failure: doubling, capped."""
    return min(max_delay_s, FIRST_DELAY_S * 2 ** min(max(num_recent, 1) - 1, 30))


class FailedSignIns:
    """Decide how a failed sign-in is answered and whether it gets its own audit row."""

    def __init__(
        self,
        limiter: RateLimiter,
        config: SecurityConfig,
        record: Callable[..., None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._config = config
        self._record = record  # Guard.record: queues one audit row
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first
        self._summaries = _Window(started_s=clock())  # address summaries written this minute

    def fail(self, error: Unauthenticated, client: str, key_id: str | None) -> SignInFailure:
        """Count a failed sign-in from `client` (naming `key_id`, if the token was well formed)
        and say how to answer it: the same 401 late, or 429 once over budget."""
        subjects = [f"address:{client}"] + ([f"key:{key_id}"] if key_id else [])
        count = self._limiter.count_failure(subjects, self._config.auth_failures_per_minute)
        delay_s = failure_delay_s(count.num_recent, self._config.auth_failure_max_delay_s)
        answer: LlmosError = error if not count.is_limited else _too_many(count)
        if self._should_audit(client):
            self._record(
                key_id or "unknown",
                "auth.fail",
                outcome=answer.code,
                client=client,
                details={
                    "key_id": key_id,
                    "reason": error.code,
                    "status": answer.status_code,
                    "num_recent_failures": count.num_recent,
                    "delay_ms": round(delay_s * 1000),
                },
            )
        return SignInFailure(error=answer, delay_s=delay_s)

    def sweep(self) -> None:
        """Close the windows whose minute is over, writing their summary rows."""
        now = self._clock()
        with self._lock:
            ended: list[tuple[str, _Window]] = []
            while self._windows:
                client, window = next(iter(self._windows.items()))
                if now - window.started_s < WINDOW_S:
                    break
                ended.append((client, self._windows.popitem(last=False)[1]))
        self._summarize(ended)

    def flush(self) -> None:
        """Close every window now (at shutdown), so no count of unaudited failures is lost."""
        with self._lock:
            ended = list(self._windows.items())
            self._windows.clear()
        self._summarize(ended)

    def _should_audit(self, client: str) -> bool:
        self.sweep()
        now = self._clock()
        evicted: list[tuple[str, _Window]] = []
        with self._lock:
            everyone = self._window(ALL_ADDRESSES, now, evicted)
            mine = self._window(client, now, evicted)
            everyone.num_failures += 1
            mine.num_failures += 1
            per_address = self._config.auth_failures_audited_per_minute
            is_audited = (
                mine.num_audited < per_address
                and everyone.num_audited < MAX_AUDITED_FAILURES_PER_MINUTE
            )
            if is_audited:
                everyone.num_audited += 1
                mine.num_audited += 1
        self._summarize(evicted)
        return is_audited

    def _window(self, client: str, now: float, evicted: list[tuple[str, _Window]]) -> _Window:
        window = self._windows.get(client)
        if window is None:
            if len(self._windows) >= MAX_WINDOWS:
                evicted.append(self._windows.popitem(last=False))
            window = self._windows[client] = _Window(started_s=now)
        return window

    def _summarize(self, ended: list[tuple[str, _Window]]) -> None:
        for client, window in ended:
            num_unaudited = window.num_failures - window.num_audited
            if num_unaudited <= 0 or not self._may_summarize(client):
                continue
            details: dict[str, Any] = {
                "num_failures": window.num_failures,
                "num_audited": window.num_audited,
                "num_unaudited": num_unaudited,
                "window_s": WINDOW_S,
            }
            self._record(
                "unknown",
                "auth.fail.summary",
                outcome="too_many_auth_failures",
                client=None if client == ALL_ADDRESSES else client,
                details=details,
            )

    def _may_summarize(self, client: str) -> bool:
        if client == ALL_ADDRESSES:
            return True
        now = self._clock()
        with self._lock:
            if now - self._summaries.started_s >= WINDOW_S:
                self._summaries = _Window(started_s=now)
            if self._summaries.num_audited >= MAX_SUMMARIES_PER_MINUTE:
                return False
            self._summaries.num_audited += 1
            return True


def _too_many(count: FailureCount) -> RateLimited:
    return RateLimited(
        "Too many failed sign-ins from this address or for this key id; requests with a valid "
        "key are still served.",
        code="too_many_auth_failures",
        hint="check the API key you send; a wrong or revoked key keeps failing",
        retry_after_s=count.retry_after_s,
    )

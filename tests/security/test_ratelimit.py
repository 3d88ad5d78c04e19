"""Token buckets: per-key request and token limits, failed sign-ins per address and key id."""

from __future__ import annotations

import pytest

from llmos.errors import RateLimited
from llmos.security.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_sixth_request_in_a_minute_is_429_with_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    for _ in range(5):
        rl.take_request("k1", 5)
    with pytest.raises(RateLimited) as e:
        rl.take_request("k1", 5)
    headers = e.value.headers
    assert headers["Retry-After"] == "12"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "5"
    rl.take_request("k2", 5)  # other keys are unaffected
    clock.now_s += 12
    rl.take_request("k1", 5)  # one request refilled after 60/5 s


def test_tokens_taken_at_admission_and_settled_after() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    rl.take_tokens("k", 600, 500)
    with pytest.raises(RateLimited):
        rl.take_tokens("k", 600, 200)
    rl.take_tokens("k", 600, 100)
    rl.settle_tokens("k", 600, 300)  # completion tokens: the level goes negative
    clock.now_s += 30  # +300 tokens
    with pytest.raises(RateLimited) as e:
        rl.take_tokens("k", 600, 1)
    assert int(e.value.headers["Retry-After"]) >= 1
    with pytest.raises(RateLimited, match="allows 600 tokens per minute"):
        rl.take_tokens("k", 600, 601)


def test_failed_sign_ins_counted_per_address_and_per_key_id() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    counts = [rl.count_failure(["address:10.0.0.1", "key:k1"], 3) for _ in range(3)]
    assert [c.num_recent for c in counts] == [1, 2, 3]
    assert not any(c.is_limited for c in counts)
    over = rl.count_failure(["address:10.0.0.1", "key:k1"], 3)
    assert over.is_limited and over.retry_after_s == pytest.approx(20.0)
    # the key id is out of budget from any address; a fresh address with a fresh key is not
    assert rl.count_failure(["address:10.0.0.2", "key:k1"], 3).is_limited
    assert not rl.count_failure(["address:10.0.0.2", "key:k2"], 3).is_limited
    # failures past the budget are not charged again: one refill interval forgives one
    for _ in range(50):
        rl.count_failure(["address:10.0.0.1"], 3)
    clock.now_s += 20
    assert not rl.count_failure(["address:10.0.0.1"], 3).is_limited
    assert rl.count_failure(["address:10.0.0.1"], 3).is_limited


def test_changed_limit_applies_at_once() -> None:
    rl = RateLimiter(Clock())
    rl.take_request("k", 100)
    rl.take_request("k", 1)  # shrunk to capacity 1 (level kept at most 1)
    with pytest.raises(RateLimited):
        rl.take_request("k", 1)

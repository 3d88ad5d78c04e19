"""Quotas: priority ceiling, max context, concurrency and tokens per day."""

from __future__ import annotations

import threading

import pytest

from llmos.errors import ContextTooLong, PermissionDenied, QuotaExceeded, RateLimited
from llmos.kernel.process import Priority
from llmos.security.principals import Principal, Quota, Role, Users
from llmos.security.quotas import Demand, Quotas
from llmos.storage.db import Database


def _principal(users: Users, quota: Quota) -> Principal:
    info = users.add("alice", Role.USER, quota)
    return Principal(name="alice", role=Role.USER, user_id=info.id, quota=quota)


def _demand(prompt: int = 10, max_tokens: int | None = 10, **kw: object) -> Demand:
    base: dict[str, object] = {
        "num_prompt_tokens": [prompt],
        "max_tokens": [max_tokens],
        "priority": Priority.NORMAL,
        "num_live_owned": 0,
    }
    return Demand(**(base | kw))  # type: ignore[arg-type]


def test_limits(users: Users, db: Database) -> None:
    q = Quotas(db)
    p = _principal(users, Quota(max_priority=Priority.NORMAL, max_context=100, max_concurrent=2))
    q.check(p, _demand())
    with pytest.raises(PermissionDenied, match="interactive"):
        q.check(p, _demand(priority=Priority.INTERACTIVE))
    q.check(p, _demand(priority=Priority.BATCH))
    with pytest.raises(ContextTooLong):
        q.check(p, _demand(prompt=90, max_tokens=20))
    with pytest.raises(RateLimited) as e:
        q.check(p, _demand(num_live_owned=2))
    assert e.value.headers["Retry-After"] == "1"
    assert Quotas.max_tokens_within(p, 30) == 70


def test_daily_tokens(users: Users, db: Database) -> None:
    days = iter(["2026-11-24"] * 6 + ["2026-11-25"] * 10)
    q = Quotas(db, today=lambda: next(days))
    p = _principal(users, Quota(tokens_per_day=100))
    assert p.user_id is not None
    q.add_usage(p.user_id, 60)
    q.add_usage(p.user_id, 30)
    assert q.used_today(p.user_id) == 90
    with pytest.raises(QuotaExceeded) as e:
        q.check(p, _demand(prompt=20))
    assert e.value.code == "insufficient_quota" and e.value.headers["x-should-retry"] == "false"
    q.check(p, _demand(prompt=5))
    with pytest.raises(QuotaExceeded):
        q.check(p, _demand(prompt=5), num_pending_tokens=10)
    assert q.used_today(p.user_id) == 0  # a new UTC day


def test_concurrent_usage_adds_up(users: Users, db: Database) -> None:
    p = _principal(users, Quota())
    assert p.user_id is not None
    uid = p.user_id
    url = db.url.render_as_string(hide_password=False)

    def add() -> None:
        own = Database(url, migrate=False)
        for _ in range(10):
            Quotas(own).add_usage(uid, 1)
        own.dispose()

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Quotas(db).used_today(uid) == 40

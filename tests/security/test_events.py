"""Security's events on a real database: keys created and revoked are events stored with the key
change itself; quota and rate-limit refusals from the Guard are events, a burst stored once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmos.config import SecurityConfig
from llmos.errors import NotFound, QuotaExceeded, RateLimited
from llmos.kernel.process import Priority
from llmos.monitor.eventlog import EventLog, read_events
from llmos.security.audit import AuditLog
from llmos.security.guard import Guard
from llmos.security.keys import ApiKeys
from llmos.security.principals import Principal, Quota, Role, Users
from llmos.security.quotas import Demand
from llmos.security.ratelimit import RateLimiter
from llmos.storage.db import Database
from tests.security.test_signin import Clock


@pytest.fixture
def events(db: Database) -> Iterator[EventLog]:
    log = EventLog(db)
    yield log
    log.close()


@pytest.fixture
def guard(db: Database, audit: AuditLog, events: EventLog) -> Iterator[Guard]:
    # A stopped clock: no bucket refills mid-test, however slow the machine.
    g = Guard(db, audit, SecurityConfig(), limiter=RateLimiter(Clock()), events=events)
    yield g
    g.close()


def test_key_created_and_revoked_are_events(db: Database, keys: ApiKeys, users: Users) -> None:
    users.add("bob", Role.USER)
    made = keys.create("bob", "laptop")
    keys.revoke(made.info.key_id)
    keys.revoke(made.info.key_id)  # already revoked: nothing changes, no second event
    got = read_events(db).events
    assert [(e.kind, e.details["key_id"]) for e in got] == [
        ("key_created", made.info.key_id),
        ("key_revoked", made.info.key_id),
    ]
    assert got[0].details == {"key_id": made.info.key_id, "user": "bob", "name": "laptop"}
    assert made.secret not in got[0].message  # the id, never the secret


def test_a_failed_key_creation_leaves_no_event(db: Database, keys: ApiKeys) -> None:
    with pytest.raises(NotFound, match="no-such-user"):
        keys.create("no-such-user")
    assert read_events(db).events == []


def _demand(prompt: int) -> Demand:
    return Demand(
        num_prompt_tokens=[prompt], max_tokens=[1], priority=Priority.NORMAL, num_live_owned=0
    )


def test_refusals_are_events_and_a_burst_is_stored_once(
    guard: Guard, users: Users, events: EventLog
) -> None:
    info = users.add("carol", Role.USER, Quota(tokens_per_day=5))
    carol = Principal(
        name="carol", role=Role.USER, user_id=info.id, key_id="0123456789ab", quota=info.quota
    )
    for _ in range(3):
        with pytest.raises(QuotaExceeded):
            guard.admit(carol, model="m", model_names=["m"], demand=_demand(10), client=None,
                        request_id="r")  # fmt: skip
    key = ApiKeys(guard.db).create("carol", requests_per_minute=1).secret
    guard.authenticate(f"Bearer {key}", "10.0.0.1")
    with pytest.raises(RateLimited):
        guard.authenticate(f"Bearer {key}", "10.0.0.1")
    assert events.flush()
    refusals = [e for e in events.read().events if e.kind in ("quota_refused", "rate_limited")]
    assert [(e.kind, e.model) for e in refusals] == [("quota_refused", "m"), ("rate_limited", None)]
    quota = refusals[0]
    assert quota.severity == "warning" and quota.details["user"] == "carol"
    assert quota.details["code"] == "insufficient_quota" and "carol" in quota.message
    assert refusals[1].details["code"] == "rate_limit_exceeded"

"""Failed sign-ins on a real database: a valid key is served whatever the failure count, wrong
keys are answered later and later, then 429, and their audit rows stay bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmos.config import SecurityConfig
from llmos.errors import RateLimited, Unauthenticated
from llmos.security.audit import AuditLog
from llmos.security.guard import Guard
from llmos.security.keys import ApiKeys
from llmos.security.principals import Principal, Role, Users
from llmos.security.ratelimit import RateLimiter
from llmos.security.signin import FailedSignIns, SignInFailure, failure_delay_s
from llmos.storage.db import Database

WRONG = "llmos-000000000000-" + "W" * 43


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def guard(db: Database, audit: AuditLog) -> Iterator[Guard]:
    # A stopped clock: no bucket refills mid-test, however slow the machine.
    g = Guard(db, audit, SecurityConfig(auth_failures_per_minute=10), limiter=RateLimiter(Clock()))
    yield g
    g.close()


def _bearer(key: str) -> str:
    return f"Bearer {key}"


def test_valid_key_is_served_after_30_wrong_ones(guard: Guard, users: Users) -> None:
    users.add("root", Role.ADMIN)
    admin = ApiKeys(guard.db).create("root").secret
    answers = [guard.authenticate(_bearer(WRONG), "10.0.0.1") for _ in range(30)]
    assert all(isinstance(a, SignInFailure) for a in answers)
    statuses = [a.error.status_code for a in answers if isinstance(a, SignInFailure)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429] * 20
    signed_in = guard.authenticate(_bearer(admin), "10.0.0.1")
    assert isinstance(signed_in, Principal) and signed_in.name == "root"


def test_delays_double_up_to_the_cap(guard: Guard) -> None:
    delays = []
    for _ in range(12):
        failure = guard.authenticate(_bearer(WRONG), "10.0.0.2")
        assert isinstance(failure, SignInFailure)
        delays.append(failure.delay_s)
    assert delays[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert delays[6:] == [2.0] * 6  # the default cap, 429s included
    assert failure_delay_s(10**9, 2.0) == 2.0  # no overflow on huge counts


def test_one_key_id_is_slowed_from_any_address(guard: Guard) -> None:
    for i in range(10):
        failure = guard.authenticate(_bearer(WRONG), f"10.1.0.{i}")
        assert isinstance(failure, SignInFailure) and failure.error.status_code == 401
    failure = guard.authenticate(_bearer(WRONG), "10.1.0.99")
    assert isinstance(failure, SignInFailure) and isinstance(failure.error, RateLimited)
    other = "llmos-111111111111-" + "W" * 43
    failure = guard.authenticate(_bearer(other), "10.1.0.99")
    assert isinstance(failure, SignInFailure) and failure.error.status_code == 401


def test_missing_key_is_401_at_once_and_not_counted(guard: Guard) -> None:
    for header in (None, "", "Bearer", "Bearer   "):
        for _ in range(15):
            with pytest.raises(Unauthenticated, match="Missing API key"):
                guard.authenticate(header, "10.0.0.3")
    failure = guard.authenticate("Basic dXNlcjpwYXNz", "10.0.0.3")  # a wrong credential
    assert isinstance(failure, SignInFailure) and failure.error.status_code == 401
    assert failure.delay_s == 0.05  # the first counted failure of this address


def test_audit_rows_bounded_per_address_then_one_summary(db: Database, audit: AuditLog) -> None:
    clock = Clock()
    config = SecurityConfig(auth_failures_audited_per_minute=5)
    signins = FailedSignIns(RateLimiter(clock), config, audit.append, clock=clock)
    error = Unauthenticated("Invalid API key.")
    for _ in range(40):
        signins.fail(error, "10.0.0.4", "000000000000")
    for _ in range(3):
        signins.fail(error, "10.0.0.5", None)
    rows = audit.search(action="auth.fail")
    assert [r.client for r in rows] == ["10.0.0.4"] * 5 + ["10.0.0.5"] * 3
    assert [r.details["delay_ms"] for r in rows[:5]] == [50, 100, 200, 400, 800]
    assert [r.outcome for r in rows[:5]] == ["invalid_api_key"] * 5
    assert audit.search(action="auth.fail.summary") == []  # the minute is not over yet
    clock.now_s += 61
    signins.sweep()
    summaries = audit.search(action="auth.fail.summary")
    by_client = {r.client: r.details for r in summaries}
    assert by_client["10.0.0.4"]["num_failures"] == 40
    assert by_client["10.0.0.4"]["num_unaudited"] == 35
    assert by_client[None]["num_failures"] == 43  # all addresses together
    assert "10.0.0.5" not in by_client  # every failure of it has its own row
    assert audit.verify().is_ok


def test_shutdown_writes_pending_summaries(db: Database, audit: AuditLog) -> None:
    clock = Clock()
    config = SecurityConfig(auth_failures_audited_per_minute=2)
    signins = FailedSignIns(RateLimiter(clock), config, audit.append, clock=clock)
    for _ in range(7):
        signins.fail(Unauthenticated("Invalid API key."), "10.0.0.6", None)
    signins.flush()
    by_client = {r.client: r.details for r in audit.search(action="auth.fail.summary")}
    assert by_client["10.0.0.6"]["num_unaudited"] == 5
    assert by_client[None]["num_unaudited"] == 5

"""Per-user quotas: tokens per UTC day, concurrent processes, highest priority, longest context.

Usage is stored per (user, UTC day) and grows by an atomic upsert, so several servers sharing
one database add up correctly. A request is checked before any of its processes is submitted,
and charged (prompt + completion tokens) when it ends; a request already running is never cut
short by its own charge, so a user can overshoot the daily quota by at most one request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from llmos.errors import ContextTooLong, PermissionDenied, QuotaExceeded, RateLimited
from llmos.kernel.process import Priority
from llmos.security.principals import Principal
from llmos.security.tables import TokenUsageRow
from llmos.storage.db import Database

logger = logging.getLogger(__name__)


def utc_day() -> str:
    return datetime.now(UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks for: one entry per process it would start."""

    num_prompt_tokens: list[int]
    max_tokens: list[int | None]
    priority: Priority
    num_live_owned: int  # the user's processes already live on this server


class Quotas:
    """Checks a demand against a principal's quota and records token usage."""

    def __init__(self, db: Database, *, today: Callable[[], str] = utc_day) -> None:
        self.db = db
        self._today = today

    def used_today(self, user_id: int) -> int:
        with self.db.session() as s:
            used = s.scalars(
                select(TokenUsageRow.num_tokens).where(
                    TokenUsageRow.user_id == user_id, TokenUsageRow.day == self._today()
                )
            ).first()
        return int(used or 0)

    def add_usage(self, user_id: int, num_tokens: int) -> None:
        """Add tokens to today's usage (one atomic upsert)."""
        if num_tokens <= 0:
            return
        dialect = postgresql if self.db.backend == "postgresql" else sqlite
        stmt = dialect.insert(TokenUsageRow).values(
            user_id=user_id, day=self._today(), num_tokens=num_tokens
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id", "day"],
            set_={"num_tokens": TokenUsageRow.num_tokens + num_tokens},
        )
        with self.db.session() as s:
            s.execute(stmt)

    def check(self, principal: Principal, demand: Demand, *, num_pending_tokens: int = 0) -> None:
        """Raise the first limit `demand` breaks: priority (403), context (400), concurrency
        (429 rate limit, retryable), daily tokens (429 insufficient_quota, not retryable)."""
        q = principal.quota
        if q.max_priority is not None and demand.priority < q.max_priority:
            raise PermissionDenied(
                f"Priority {demand.priority.name.lower()!r} is above the highest class your "
                f"quota allows ({q.max_priority.name.lower()!r}).",
                param="priority",
            )
        if q.max_context is not None:
            for n_prompt, max_tokens in zip(
                demand.num_prompt_tokens, demand.max_tokens, strict=True
            ):
                if n_prompt + (max_tokens or 1) > q.max_context:
                    raise ContextTooLong(
                        f"Your quota allows contexts of {q.max_context} tokens; this request has "
                        f"{n_prompt} prompt tokens and asks for {max_tokens or 'at least 1'} more.",
                        param="max_tokens",
                    )
        num_new = len(demand.num_prompt_tokens)
        if q.max_concurrent is not None and demand.num_live_owned + num_new > q.max_concurrent:
            raise RateLimited(
                f"You have {demand.num_live_owned} live processes and your quota allows "
                f"{q.max_concurrent} at once; this request needs {num_new} more.",
                code="too_many_processes",
                hint="wait for a process to finish, or kill one",
            )
        if q.tokens_per_day is not None and principal.user_id is not None:
            used = self.used_today(principal.user_id) + num_pending_tokens
            asked = sum(demand.num_prompt_tokens)
            if used >= q.tokens_per_day or used + asked > q.tokens_per_day:
                raise QuotaExceeded(
                    f"You have used {used} of your {q.tokens_per_day} tokens for today (UTC); "
                    f"this request needs at least {asked} more.",
                    hint="the quota resets at 00:00 UTC; ask an admin to raise it",
                )

    @staticmethod
    def max_tokens_within(principal: Principal, num_prompt_tokens: int) -> int | None:
        """The largest max_tokens the principal's context quota leaves (None = no quota)."""
        limit = principal.quota.max_context
        return None if limit is None else max(1, limit - num_prompt_tokens)

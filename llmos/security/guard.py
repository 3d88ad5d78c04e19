"""The one object the API asks about security: who is this, may they run this, charge them.

`Guard` joins keys, roles, model grants, quotas, rate limits and the audit log. Its database
writes that need not block a response (usage, audit rows) go through one background writer
thread, in order; usage not yet written is counted from memory so quotas stay exact within the
process. Nothing here knows HTTP: callers pass the Authorization header value and the client
address as strings.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.config import SecurityConfig, Settings
from llmos.errors import LlmosError, NotFound, QuotaExceeded, RateLimited, Unauthenticated
from llmos.monitor.events import EventKind, EventSink, NoEvents
from llmos.security.acl import ModelAcl
from llmos.security.audit import AuditLog, load_audit_key
from llmos.security.keys import ApiKeys, parse_key
from llmos.security.principals import Principal
from llmos.security.quotas import Demand, Quotas
from llmos.security.ratelimit import RateLimiter
from llmos.security.redact import redact
from llmos.security.signin import FailedSignIns, SignInFailure
from llmos.storage.db import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecurityPaths:
    """Files outside the database that hold secrets or anchors."""

    admin_key: Path
    audit_key: Path
    audit_anchor: Path
    master_key: Path

    @classmethod
    def of(cls, settings: Settings) -> SecurityPaths:
        sec, root = settings.security, Path(settings.storage.data_dir)
        return cls(
            admin_key=sec.admin_key_file or root / "admin.key",
            audit_key=sec.audit_key_file or root / "audit.key",
            audit_anchor=sec.audit_anchor_file or root / "audit.anchor",
            master_key=sec.master_key_file or root / "master.key",
        )


def open_audit(db: Database, settings: Settings) -> AuditLog:
    paths = SecurityPaths.of(settings)
    paths.audit_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return AuditLog(
        db,
        load_audit_key(paths.audit_key),
        anchor_path=paths.audit_anchor,
        redact=redact if settings.security.redact else None,
    )


@dataclass(slots=True)
class Ticket:
    """An admitted request, settled once when it ends."""

    principal: Principal
    model: str
    client: str | None
    request_id: str
    num_prompt_tokens: int
    started_s: float = field(default_factory=time.monotonic)
    is_settled: bool = False


class Guard:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        config: SecurityConfig,
        *,
        limiter: RateLimiter | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.config = config
        self.events: EventSink = events or NoEvents()  # quota and rate-limit refusals
        self.keys = ApiKeys(db)
        self.acl = ModelAcl(db)
        self.quotas = Quotas(db)
        self.limiter = limiter or RateLimiter()
        self.signins = FailedSignIns(self.limiter, config, self.record)
        self._pending_lock = threading.Lock()
        self._pending_tokens: dict[int, int] = {}
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="llmos-audit", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls, settings: Settings, db: Database | None = None, *, events: EventSink | None = None
    ) -> Guard:
        db = db or Database(settings.storage)
        return cls(db, open_audit(db, settings), settings.security, events=events)

    # ---- authentication ----------------------------------------------------------------------

    def authenticate(self, authorization: str | None, client: str) -> Principal | SignInFailure:
        """The principal of an `Authorization: Bearer <key>` header value, or how to refuse it.

        Raises Unauthenticated for a missing header (nothing was guessed: not counted) and
        RateLimited for a valid key over its requests per minute. A wrong key is checked like
        any other, counted against `client` and its key id, and returned as a SignInFailure
        (401, or 429 past the failure budget) to answer after its delay; a valid key is served
        whatever the failures of its address.
        """
        self.signins.sweep()
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if not scheme or (scheme.lower() == "bearer" and not token):
            raise _missing_key()
        try:
            if scheme.lower() != "bearer":
                raise Unauthenticated("Malformed Authorization header: expected 'Bearer <key>'.")
            principal = self.keys.resolve(token)
        except Unauthenticated as exc:
            parsed = parse_key(token)
            return self.signins.fail(exc, client, parsed[0] if parsed else None)
        rpm = principal.requests_per_minute or self.config.default_requests_per_minute
        if rpm and principal.key_id:
            try:
                self.limiter.take_request(principal.key_id, rpm)
            except RateLimited as exc:
                self._refused(principal, None, exc)
                raise
        return principal

    # ---- admission and settlement ------------------------------------------------------------

    def admit(
        self,
        principal: Principal,
        *,
        model: str,
        model_names: Iterable[str],
        demand: Demand,
        client: str | None,
        request_id: str,
    ) -> Ticket:
        """Check model grant, quotas and token rate; the refusal is audited and re-raised."""
        try:
            if not self.acl.allows(principal, model_names):
                raise NotFound(
                    f"The model {model!r} does not exist or is not available to you.",
                    code="model_not_found",
                    param="model",
                )
            user_id = principal.user_id
            pending = self._pending_tokens.get(user_id, 0) if user_id is not None else 0
            self.quotas.check(principal, demand, num_pending_tokens=pending)
            num_prompt = sum(demand.num_prompt_tokens)
            tpm = principal.tokens_per_minute or self.config.default_tokens_per_minute
            if tpm and principal.key_id:
                self.limiter.take_tokens(principal.key_id, tpm, num_prompt)
        except LlmosError as exc:
            self.record(
                principal.name,
                "inference",
                target=model,
                outcome=exc.code,
                client=client,
                request_id=request_id,
                details={"key_id": principal.key_id, "status": exc.status_code},
            )
            self._refused(principal, model, exc)
            raise
        return Ticket(principal, model, client, request_id, num_prompt)

    def _refused(self, principal: Principal, model: str | None, exc: LlmosError) -> None:
        """A quota or rate-limit refusal as an event: the first of a burst per key and kind
        (the repeats within a minute are counted into the next one)."""
        if isinstance(exc, QuotaExceeded):
            kind = EventKind.QUOTA_REFUSED
        elif isinstance(exc, RateLimited):
            kind = EventKind.RATE_LIMITED
        else:
            return
        self.events.record(
            kind,
            model=model,
            message=f"{principal.name} (key {principal.key_id or '-'}) refused: {exc.message}",
            throttle_key=principal.key_id or principal.name,
            user=principal.name,
            key_id=principal.key_id,
            code=exc.code,
        )

    def settle(
        self,
        ticket: Ticket,
        *,
        num_prompt_tokens: int,
        num_completion_tokens: int,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Charge the tokens a request used and audit it (once; later calls do nothing)."""
        if ticket.is_settled:
            return
        ticket.is_settled = True
        p = ticket.principal
        tpm = p.tokens_per_minute or self.config.default_tokens_per_minute
        if tpm and p.key_id and num_completion_tokens:
            self.limiter.settle_tokens(p.key_id, tpm, num_completion_tokens)
        total = num_prompt_tokens + num_completion_tokens
        if p.user_id is not None and total:
            self._charge(p.user_id, total)
        self.record(
            p.name,
            "inference",
            target=ticket.model,
            outcome=outcome,
            client=ticket.client,
            request_id=ticket.request_id,
            details={
                "key_id": p.key_id,
                "prompt_tokens": num_prompt_tokens,
                "completion_tokens": num_completion_tokens,
                "duration_ms": round((time.monotonic() - ticket.started_s) * 1000),
                **(details or {}),
            },
        )

    def _charge(self, user_id: int, num_tokens: int) -> None:
        with self._pending_lock:
            self._pending_tokens[user_id] = self._pending_tokens.get(user_id, 0) + num_tokens

        def write() -> None:
            try:
                self.quotas.add_usage(user_id, num_tokens)
            finally:
                with self._pending_lock:
                    left = self._pending_tokens.get(user_id, 0) - num_tokens
                    if left > 0:
                        self._pending_tokens[user_id] = left
                    else:
                        self._pending_tokens.pop(user_id, None)

        self._jobs.put(write)

    # ---- audit -------------------------------------------------------------------------------

    def record(self, actor: str, action: str, **fields: Any) -> None:
        """Queue one audit row (written in order by the background writer)."""
        self._jobs.put(lambda: self._append(actor, action, fields))

    def _append(self, actor: str, action: str, fields: dict[str, Any]) -> None:
        self.audit.append(actor, action, **fields)

    def flush(self) -> None:
        """Wait until every queued usage and audit write is in the database."""
        self._jobs.join()

    def close(self) -> None:
        self.signins.flush()
        self._jobs.put(None)
        self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception:
                # The service keeps running; a lost audit row is logged loudly.
                logger.exception("audit/usage write failed")
            finally:
                self._jobs.task_done()


def _missing_key() -> Unauthenticated:
    return Unauthenticated(
        "Missing API key: send the header 'Authorization: Bearer <key>'.",
        hint="create a key with `llmos keys create`; on the server machine the admin key is "
        "the file admin.key in the data dir",
    )

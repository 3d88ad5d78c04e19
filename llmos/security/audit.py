"""The audit log: an append-only, hash-chained, MAC-sealed table of who did what.

Row `seq` (1, 2, 3, ... with no gaps) carries `prev_hash` (the hash of row seq-1, zeros for row
1), `hash = SHA-256(canonical JSON of the row without hash and mac)` and `mac = HMAC-SHA-256(audit
key, same bytes)`. The audit key lives outside the database, so editing, deleting or reordering
rows is detected by `verify`, even by someone who recomputes the hashes. Appends are serialized
(SQLite's write lock, a PostgreSQL advisory lock) so the chain never forks. Deleting the newest
rows is caught against an anchor (`seq hash` lines appended to a file outside the database).
Prompts and outputs are not recorded unless the caller puts them into `details`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from llmos.security.secretfile import load_or_create
from llmos.security.tables import AuditRow
from llmos.storage.db import Database

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_PG_AUDIT_LOCK_ID = 0x11_05_A0_D1
_HASHED_FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "target",
    "outcome",
    "client",
    "request_id",
    "details",
    "prev_hash",
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str | None
    outcome: str
    client: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str
    mac: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of `AuditLog.verify`: ok, or the first bad row and what is wrong with it."""

    is_ok: bool
    num_rows: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def load_audit_key(path: Path) -> bytes:
    """The audit MAC key from `path` (hex), created (0600) on first use."""
    return bytes.fromhex(load_or_create(path, lambda: secrets.token_hex(32)))


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hashed(row: AuditRow) -> bytes:
    return canonical({name: getattr(row, name) for name in _HASHED_FIELDS})


class AuditLog:
    """Append to, read and verify the audit chain of one database."""

    def __init__(
        self,
        db: Database,
        key: bytes,
        *,
        anchor_path: Path | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        if len(key) < 16:
            raise ValueError("the audit key must be at least 16 bytes")
        self.db = db
        self._key = key
        self.anchor_path = anchor_path
        self._redact = redact

    def append(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        outcome: str = "ok",
        client: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Add one row at the end of the chain (one transaction, serialized with other writers)."""
        details_text = canonical(self._redacted(details or {})).decode()
        with self.db.session() as s:
            if self.db.backend == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK_ID})
            last = s.execute(
                select(AuditRow.seq, AuditRow.hash).order_by(AuditRow.seq.desc()).limit(1)
            ).first()
            row = AuditRow(
                seq=(last[0] + 1) if last else 1,
                ts=datetime.now(UTC).isoformat(timespec="microseconds"),
                actor=actor[:64],
                action=action[:64],
                target=target[:255] if target is not None else None,
                outcome=outcome[:32],
                client=client[:64] if client is not None else None,
                request_id=request_id[:64] if request_id is not None else None,
                details=details_text,
                prev_hash=last[1] if last else GENESIS_HASH,
            )
            content = _hashed(row)
            row.hash = hashlib.sha256(content).hexdigest()
            row.mac = hmac.new(self._key, content, hashlib.sha256).hexdigest()
            s.add(row)
            s.flush()
            entry = _entry(row)
        self._write_anchor(entry)
        return entry

    def tail(self, num_rows: int = 20) -> builtins.list[AuditEntry]:
        """The newest rows, oldest first."""
        with self.db.session() as s:
            rows = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc()).limit(num_rows)).all()
            return [_entry(r) for r in reversed(rows)]

    def search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEntry]:
        """Rows matching every given filter (`action` may end in `*` for a prefix), oldest first;
        `since`/`until` are ISO-8601 UTC times compared with the row's timestamp."""
        q = select(AuditRow)
        if actor is not None:
            q = q.where(AuditRow.actor == actor)
        if action is not None:
            if action.endswith("*"):
                q = q.where(AuditRow.action.startswith(action[:-1], autoescape=True))
            else:
                q = q.where(AuditRow.action == action)
        if outcome is not None:
            q = q.where(AuditRow.outcome == outcome)
        if target is not None:
            q = q.where(AuditRow.target == target)
        if since is not None:
            q = q.where(AuditRow.ts >= since)
        if until is not None:
            q = q.where(AuditRow.ts < until)
        with self.db.session() as s:
            rows = s.scalars(q.order_by(AuditRow.seq.desc()).limit(limit)).all()
            return [_entry(r) for r in reversed(rows)]

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Walk the chain from row 1; report the first row that was changed, deleted or moved.

        `anchor` (seq, hash) defaults to the newest line of the anchor file, if there is one.
        """
        anchor = anchor or self.read_anchor()
        expected_seq, prev_hash, num_rows = 1, GENESIS_HASH, 0
        with contextlib.closing(self._rows()) as rows:
            for row in rows:
                problem = self._check_row(row, expected_seq, prev_hash)
                if problem is not None:
                    bad_seq = min(row.seq, expected_seq)
                    return VerifyReport(
                        False, num_rows, expected_seq - 1, prev_hash, bad_seq, problem
                    )
                expected_seq, prev_hash, num_rows = row.seq + 1, row.hash, num_rows + 1
        head_seq = expected_seq - 1
        if anchor is not None:
            anchor_seq, anchor_hash = anchor
            if head_seq < anchor_seq:
                return VerifyReport(
                    False,
                    num_rows,
                    head_seq,
                    prev_hash,
                    head_seq + 1,
                    f"row {head_seq + 1} is missing: the anchor records row {anchor_seq}, the "
                    f"log ends at row {head_seq} (rows were deleted from the end)",
                )
            at_anchor = self._hash_at(anchor_seq)
            if at_anchor != anchor_hash:
                return VerifyReport(
                    False,
                    num_rows,
                    head_seq,
                    prev_hash,
                    anchor_seq,
                    f"row {anchor_seq} does not match the anchor's hash (the log was rewritten)",
                )
        return VerifyReport(True, num_rows, head_seq, prev_hash)

    def _check_row(self, row: AuditRow, expected_seq: int, prev_hash: str) -> str | None:
        if row.seq != expected_seq:
            if row.seq > expected_seq:
                missing = (
                    f"row {expected_seq}"
                    if row.seq == expected_seq + 1
                    else f"rows {expected_seq}-{row.seq - 1}"
                )
                return f"{missing} missing (deleted): the log jumps to row {row.seq}"
            return f"row {row.seq} appears twice or out of order"
        content = _hashed(row)
        if hashlib.sha256(content).hexdigest() != row.hash:
            return f"row {row.seq} was changed: its content does not match its hash"
        if not hmac.compare_digest(
            hmac.new(self._key, content, hashlib.sha256).hexdigest(), row.mac
        ):
            return (
                f"row {row.seq} was rewritten: its MAC does not match (hash recomputed without "
                "the audit key, or the wrong audit key is configured)"
            )
        if row.prev_hash != prev_hash:
            return (
                f"row {row.seq} does not follow row {row.seq - 1}: its prev_hash differs "
                "(rows were reordered, or an earlier row was replaced)"
            )
        return None

    def _rows(self) -> Generator[AuditRow, None, None]:
        with self.db.session() as s:
            result = s.scalars(
                select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=1000)
            )
            yield from result

    def _hash_at(self, seq: int) -> str | None:
        with self.db.session() as s:
            return s.scalars(select(AuditRow.hash).where(AuditRow.seq == seq)).first()

    def read_anchor(self) -> tuple[int, str] | None:
        """The newest (seq, hash) in the anchor file, if any."""
        if self.anchor_path is None or not self.anchor_path.exists():
            return None
        best: tuple[int, str] | None = None
        for line in self.anchor_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and (best is None or int(parts[0]) > best[0]):
                best = (int(parts[0]), parts[1])
        return best

    def _write_anchor(self, entry: AuditEntry) -> None:
        if self.anchor_path is None:
            return
        # O_APPEND writes of one short line are atomic; appenders in other processes may land
        # out of order, which is why readers take the highest seq, not the last line.
        fd = os.open(self.anchor_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{entry.seq} {entry.hash}\n".encode())
        finally:
            os.close(fd)

    def _redacted(self, details: dict[str, Any]) -> dict[str, Any]:
        if self._redact is None:
            return details
        redact = self._redact

        def clean(value: Any) -> Any:
            if isinstance(value, str):
                return redact(value)
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {k: clean(v) for k, v in details.items()}


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        client=row.client,
        request_id=row.request_id,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
        mac=row.mac,
    )

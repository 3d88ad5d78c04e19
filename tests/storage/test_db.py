from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import text

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

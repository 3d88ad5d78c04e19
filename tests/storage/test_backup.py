from __future__ import annotations

import os
import shutil
import tarfile

import pytest

from llmos.errors import Conflict, NotFound, StorageCorrupted
from llmos.storage.backup import create_backup, restore_backup, verify_backup
from llmos.storage.datasets import Datasets
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.storage.helpers import flip_byte, write_chat_jsonl, write_gguf, write_hf_folder


def _fill(storage, tmp_path):
    reg = Registry(storage)
    reg.import_model(write_gguf(tmp_path / "a.gguf", seed=1), "a")
    reg.import_model(write_hf_folder(tmp_path / "hf"), "hf:v1")
    reg.tag("a", "a:copy")
    Datasets(storage).import_file(write_chat_jsonl(tmp_path / "d.jsonl"), "chat")


def _wipe(storage_config):
    shutil.rmtree(storage_config.data_dir)
    if storage_config.database_url:  # PostgreSQL: empty the tables too
        from sqlalchemy import text

        from llmos.storage.db import Database

        db = Database(storage_config)
        with db.session() as s:
            s.execute(text("DELETE FROM model_files"))
            s.execute(text("DELETE FROM models"))
            s.execute(text("DELETE FROM datasets"))
        db.dispose()


def _everything_verifies(storage_config) -> tuple[list[str], list[str]]:
    storage = Storage(storage_config)
    try:
        reg, ds = Registry(storage), Datasets(storage)
        assert all(r.is_ok for r in reg.verify())
        for m in reg.list():
            assert reg.resolve(m.ref).exists()
        assert all(ok for _, ok in ds.verify())
        assert ds.head("chat", 1)[0]["messages"][0]["content"] == "q0"
        return [m.ref for m in reg.list()], [d.name for d in ds.list()]
    finally:
        storage.close()


def test_round_trip_with_blobs(storage, storage_config, tmp_path):
    _fill(storage, tmp_path)
    before = ([m.ref for m in Registry(storage).list()], ["chat"])
    archive = create_backup(storage_config, tmp_path / "b.tar", with_blobs=True)
    info = verify_backup(archive)
    assert (info.num_models, info.num_datasets, info.with_blobs) == (3, 1, True)
    assert info.schema_revision == storage.db.head_revision()
    storage.close()
    _wipe(storage_config)
    restore_backup(archive, storage_config)
    assert _everything_verifies(storage_config) == before


def test_restore_refuses_a_non_empty_data_dir_without_force(storage, storage_config, tmp_path):
    _fill(storage, tmp_path)
    archive = create_backup(storage_config, tmp_path / "b.tar", with_blobs=True)
    Registry(storage).remove("a:copy")
    with pytest.raises(Conflict, match="--force"):
        restore_backup(archive, storage_config)
    storage.close()
    restore_backup(archive, storage_config, force=True)
    assert "a:copy" in _everything_verifies(storage_config)[0]


def test_backup_without_blobs_restores_over_the_same_blobs(storage, storage_config, tmp_path):
    _fill(storage, tmp_path)
    archive = create_backup(storage_config, None)
    assert archive.parent == storage.layout.backups
    storage.close()
    restore_backup(archive, storage_config, force=True)
    assert archive.is_file()  # the backups folder survives the swap
    assert len(_everything_verifies(storage_config)[0]) == 3
    _wipe(storage_config)
    with pytest.raises((NotFound, StorageCorrupted)):
        restore_backup(archive, storage_config)


def test_a_corrupt_archive_is_refused_and_nothing_changes(storage, storage_config, tmp_path):
    _fill(storage, tmp_path)
    archive = create_backup(storage_config, tmp_path / "b.tar", with_blobs=True)
    with tarfile.open(archive) as tar:
        blob = next(m for m in tar.getmembers() if m.name.startswith("blobs/"))
        offset = blob.offset_data + 10
    flip_byte(archive, offset=offset)
    with pytest.raises(StorageCorrupted, match="checksum"):
        verify_backup(archive)
    storage.close()
    with pytest.raises(StorageCorrupted):
        restore_backup(archive, storage_config, force=True)
    assert len(_everything_verifies(storage_config)[0]) == 3
    assert not [p for p in os.listdir(tmp_path) if ".restore-" in p]

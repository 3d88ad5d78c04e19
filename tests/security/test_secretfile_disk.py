"""A secret file (admin key, audit key, master key) written on a full disk: a clear
InsufficientStorage, no half-written file or temp file left, and it works once space is freed."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.errors import InsufficientStorage
from llmos.security.secretfile import read_secret_file, write_secret_file
from tests.tmpfs import fill, mounted_tmpfs


def test_a_secret_file_on_a_full_disk(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", 1 << 20) as disk:
        filler = fill(disk)
        key = disk / "keys" / "admin.key"
        with pytest.raises(InsufficientStorage) as info:
            write_secret_file(key, "x" * 4096)
        assert info.value.status_code == 507
        assert "admin.key" in info.value.message and str(disk) not in info.value.message
        assert not key.exists()
        assert not [p for p in disk.rglob(".tmp-*")]
        filler.unlink()
        write_secret_file(key, "secret")
        assert read_secret_file(key) == "secret"

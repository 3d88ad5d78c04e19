"""An opened data dir: database, blob store and lock together, plus garbage collection.

Opening cleans up after crashes: if no other llmos process is writing (the storage lock is free),
leftover temp files and half-built cache folders are removed. `gc()` deletes blobs no manifest
references and cache folders no model uses; it runs under the exclusive lock, so the fresh blob
of an import still in progress in another process (not yet referenced) is never collected.
`Storage(config, read_only=True)` (for `llmos doctor`) creates, cleans and migrates nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from llmos.config import StorageConfig
from llmos.storage.blobs import BlobStore
from llmos.storage.db import Database
from llmos.storage.layout import TEMP_PREFIX, DataDir, dir_size_bytes
from llmos.storage.schema import DatasetRow, ModelFileRow
from llmos.storage.space import disk_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcReport:
    removed_blobs: int
    freed_bytes: int
    removed_temps: int
    removed_cache_dirs: int


class Storage:
    """The data dir's database, blobs and lock (the registry and datasets are built on it)."""

    def __init__(
        self, config: StorageConfig, *, db: Database | None = None, read_only: bool = False
    ) -> None:
        self.config = config
        self.layout = DataDir(Path(config.data_dir))
        with disk_errors("opening the data dir", self.layout.root):
            if not read_only:
                self.layout.ensure()
            self.db = db or Database(config, read_only=read_only)
            self.blobs = BlobStore(self.layout.blobs)
            self.lock = self.layout.lock()
            if not read_only:
                self.cleanup()

    @classmethod
    def open(cls, config: StorageConfig | None = None) -> Storage:
        return cls(config or StorageConfig.model_validate({}))

    def close(self) -> None:
        self.db.dispose()

    def cleanup(self) -> int:
        """Remove crash leftovers if nobody is writing; returns how many were removed."""
        with self.lock.try_exclusive() as is_alone:
            if not is_alone:
                return 0
            return self.blobs.remove_temps() + self._remove_cache_temps()

    def referenced_digests(self) -> set[str]:
        """Every digest some model or dataset manifest names."""
        with self.db.session() as s:
            models = set(s.scalars(select(ModelFileRow.digest)))
            datasets = set(s.scalars(select(DatasetRow.digest)))
        return models | datasets

    def gc(self, *, timeout_s: float | None = None) -> GcReport:
        """Delete unreferenced blobs, temp files and unused cache folders."""
        wait = self.config.lock_timeout_s if timeout_s is None else timeout_s
        with self.lock.exclusive(timeout_s=wait):
            temps = self.blobs.remove_temps() + self._remove_cache_temps()
            referenced = self.referenced_digests()
            removed = freed = 0
            for digest in sorted(self.blobs.digests() - referenced):
                freed += self.blobs.remove(digest)
                removed += 1
            cache_dirs = self._remove_unused_cache(referenced)
        if removed:
            logger.info("gc removed %d blob(s), %d bytes", removed, freed)
        return GcReport(removed, freed, temps, cache_dirs)

    def writing(self, operation: str) -> contextlib.AbstractContextManager[None]:
        """A block that writes to the data dir: a full disk or an I/O error in it raises
        `InsufficientStorage` naming `operation` (see `llmos.storage.space`)."""
        return disk_errors(operation, self.layout.root)

    def disk_usage_bytes(self) -> int:
        """Bytes in blobs and cache (the database is not counted)."""
        return dir_size_bytes(self.layout.blobs) + dir_size_bytes(self.layout.cache)

    def _remove_cache_temps(self) -> int:
        count = 0
        for folder in (self.layout.hf_cache, self.layout.gguf_cache):
            for entry in folder.iterdir():
                if entry.name.startswith(TEMP_PREFIX):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    count += 1
        return count

    def _remove_unused_cache(self, referenced: set[str]) -> int:
        # Cache entries are links to blobs; one is stale once any blob it links to is gone.
        count = 0
        for folder in self.layout.hf_cache.iterdir():
            links = list(folder.iterdir()) if folder.is_dir() else []
            targets = {link.resolve().name.removeprefix("sha256-") for link in links}
            if not links or not targets <= referenced:
                shutil.rmtree(folder, ignore_errors=True)
                count += 1
        for link in self.layout.gguf_cache.iterdir():
            if link.name.removesuffix(".gguf") not in referenced:
                link.unlink(missing_ok=True)
                count += 1
        return count

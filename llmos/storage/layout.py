"""The data dir's layout and its one lock file.

Everything llmos stores lives under one private (0700) directory; names of models and datasets
never become paths, only sha256 digests do (`blobs/sha256-<hex>`). Writers hold the storage lock
shared; garbage collection and start-up cleanup hold it exclusively, so they never delete the
temp file or fresh blob of an import still running in another process. A killed process drops
its lock with its file descriptors, so a crash never leaves the lock held.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import Conflict

logger = logging.getLogger(__name__)

DB_FILENAME = "llmos.db"
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class DataDir:
    """Paths inside the data dir (see docs/storage.md for the layout)."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILENAME

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def cache(self) -> Path:
        """Rebuildable views of stored models (HF folders made of links to blobs)."""
        return self.root / "cache"

    @property
    def hf_cache(self) -> Path:
        return self.cache / "hf"

    @property
    def gguf_cache(self) -> Path:
        return self.cache / "gguf"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    def ensure(self) -> None:
        """Create the data dir (0700) and its subfolders if missing."""
        created = not self.root.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            os.chmod(self.root, 0o700)  # mkdir's mode is masked by the umask
        for sub in (self.blobs, self.cache, self.hf_cache, self.gguf_cache, self.locks):
            sub.mkdir(mode=0o700, exist_ok=True)

    def lock(self) -> StorageLock:
        return StorageLock(self.locks / "storage.lock")


class StorageLock:
    """An advisory `flock` on one file: shared for writers, exclusive for gc and cleanup."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._held(fcntl.LOCK_SH, timeout_s=None):
            yield

    @contextlib.contextmanager
    def exclusive(self, timeout_s: float | None = 30.0) -> Iterator[None]:
        """Hold the lock alone; raises Conflict if writers still hold it after `timeout_s`."""
        with self._held(fcntl.LOCK_EX, timeout_s=timeout_s):
            yield

    def try_exclusive(self) -> contextlib.AbstractContextManager[bool]:
        """Context yielding True if the exclusive lock was free right now (then it is held)."""
        return self._try(fcntl.LOCK_EX)

    @contextlib.contextmanager
    def _try(self, mode: int) -> Iterator[bool]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing drops the lock

    @contextlib.contextmanager
    def _held(self, mode: int, timeout_s: float | None) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if timeout_s is None:
                fcntl.flock(fd, mode)
            else:
                self._poll(fd, mode, timeout_s)
            yield
        finally:
            os.close(fd)

    def _poll(self, fd: int, mode: int, timeout_s: float) -> None:
        # Polling rather than a blocking flock: a process that holds the lock shared itself
        # (an import calling gc) must get an error, not hang forever.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Conflict(
                        "the data dir is busy: another llmos process is importing or writing",
                        hint="wait for it to finish, then retry",
                    ) from None
                time.sleep(0.05)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (rename is atomic, not durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size_bytes(path: Path) -> int:
    """Bytes of regular files under `path` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total

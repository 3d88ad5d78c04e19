"""Free space on the data dir's disk, and write failures turned into one clear error.

A full disk (ENOSPC, EDQUOT, EFBIG), a failing write or fsync (EIO), and the database's own
"database or disk is full" / "disk I/O error" (SQLite) or `disk_full` (PostgreSQL) become
`InsufficientStorage` (HTTP 507) naming the operation and the bytes left free. The callers keep
their cleanup (temp files removed, the transaction rolled back), so nothing half-written becomes
visible. A failed fsync is never retried: the kernel may already have dropped the dirty pages
(PostgreSQL's "fsyncgate"), so the write it covered counts as failed.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from sqlalchemy.exc import DBAPIError

from llmos.config import StorageConfig
from llmos.errors import InsufficientStorage

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
IO_ERRNOS = frozenset({errno.EIO})
_SQLITE_IOERR = 10  # primary result codes; extended codes keep them in the low byte
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
HINT = "free disk space and retry; `llmos models gc` deletes unused blobs"
IO_HINT = "the disk may be failing; see the kernel log (dmesg), then retry"


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its
    nearest existing parent); None when that cannot be read."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def is_disk_low(config: StorageConfig) -> bool:
    """True when the data dir's file system has less than `storage.min_free_bytes` free."""
    free = free_bytes(Path(config.data_dir))
    return free is not None and free < config.min_free_bytes


def is_disk_error(exc: BaseException) -> bool:
    """True for a disk-full or I/O failure of a file or database write."""
    return _kind(exc) is not None


def _kind(exc: BaseException) -> Literal["full", "io"] | None:
    """The failure class of `exc`: full, io, or None (not a storage failure)."""
    if isinstance(exc, OSError):
        return "full" if exc.errno in FULL_ERRNOS else "io" if exc.errno in IO_ERRNOS else None
    if isinstance(exc, DBAPIError):
        return _kind(exc.orig) if exc.orig is not None else None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            primary = code & 0xFF
            return "full" if primary == _SQLITE_FULL else "io" if primary == _SQLITE_IOERR else None
        text = str(exc)
        return "full" if "disk is full" in text else "io" if "disk I/O error" in text else None
    if getattr(exc, "sqlstate", None) == _PG_DISK_FULL:  # psycopg's DiskFull
        return "full"
    return None


def insufficient_storage(
    exc: BaseException, operation: str, path: Path | None
) -> InsufficientStorage:
    """The error for `exc`: what failed, why, the bytes free where it wrote, and what to do.
    The path itself is never named (error bodies must not reveal the data dir)."""
    free = free_bytes(path) if path is not None else None
    left = f"{free:,} bytes free" if free is not None else "free space unknown"
    reason = getattr(exc, "strerror", None) or str(getattr(exc, "orig", None) or exc)
    if _kind(exc) == "io":
        message = f"{operation} failed: the disk reported an I/O error ({reason}; {left})"
        return InsufficientStorage(message, hint=IO_HINT)
    return InsufficientStorage(
        f"{operation} failed: the disk is full ({reason}; {left})", hint=HINT
    )


@contextlib.contextmanager
def disk_errors(operation: str, path: Path | None) -> Iterator[None]:
    """Raise `InsufficientStorage` for a disk-full or I/O failure inside the block; anything
    else passes through unchanged. `path` is where the block writes (for the free bytes)."""
    try:
        yield
    except (OSError, sqlite3.Error, DBAPIError) as exc:
        if not is_disk_error(exc):
            raise
        # Not logged here: the CLI prints it as its one line, the API logs every 5xx it answers.
        raise insufficient_storage(exc, operation, path) from exc

"""Content-addressed blobs: `blobs/sha256-<hex>`, immutable (0444), written atomically.

A blob appears under its final name only after its bytes are fsynced, its digest checked, and it
is renamed in from a temp file in the same directory (followed by an fsync of the directory), so
a crash leaves either the whole blob or a `.tmp-*` file that start-up cleanup removes; a failed
write or fsync removes the temp file and raises the OSError (the operation around it, an import,
turns a full disk into `InsufficientStorage`). Digests from users are validated against
`^[0-9a-f]{64}$` before they touch the file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from llmos.errors import InvalidRequest
from llmos.storage.layout import TEMP_PREFIX, fsync_dir

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_RE = re.compile(r"^(?:sha256[:-])?([0-9a-fA-F]{64})$")

# on_progress(bytes_done, bytes_total) for long copies and verifications.
ProgressFn = Callable[[int, int], None]


class DigestMismatch(Exception):
    """Bytes written or read do not hash to the digest they were expected to have."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"expected sha256 {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


def parse_digest(text: str) -> str:
    """`sha256:<hex>`, `sha256-<hex>` or `<hex>` -> the lowercase hex; anything else is refused."""
    m = _DIGEST_RE.match(text) if len(text) <= 80 else None
    if not m:
        raise InvalidRequest(
            f"invalid digest {text[:80]!r}", hint="a digest is sha256:<64 hex digits>"
        )
    return m.group(1).lower()


def hash_file(path: Path, on_progress: ProgressFn | None = None) -> str:
    """sha256 hex of a file, streamed."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(done, total)
    return h.hexdigest()


class BlobWriter:
    """Streams bytes into a temp file while hashing; `commit()` publishes them as a blob."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self.temp_path = store.new_temp_path()
        self._file: BinaryIO = open(  # noqa: SIM115 - closed in commit/discard
            os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
        )
        self._hash = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size_bytes += len(data)

    def commit(self, expected: str | None = None) -> str:
        """fsync, check the digest, rename into place; returns the hex digest."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        if expected is not None and digest != expected:
            raise DigestMismatch(expected, digest)
        self._store._publish(self.temp_path, digest)
        return digest

    def discard(self) -> None:
        # After a failed write, close() flushes the same bytes and fails again; the file closes
        # anyway, and the temp file must still go.
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


class BlobStore:
    """The blobs folder of one data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        if not _HEX_RE.match(digest):
            raise InvalidRequest(f"invalid digest {digest[:80]!r}")
        return self.root / f"sha256-{digest}"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def new_temp_path(self) -> Path:
        return self.root / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """A `BlobWriter` whose temp file is removed unless it was committed."""
        w = BlobWriter(self)
        try:
            yield w
        finally:
            w.discard()

    def put_file(
        self, src: Path, *, expected: str | None = None, on_progress: ProgressFn | None = None
    ) -> tuple[str, int]:
        """Copy a file in as a blob; returns (digest, size_bytes)."""
        total = src.stat().st_size
        with self.writer() as w, src.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                w.write(chunk)
                if on_progress:
                    on_progress(w.size_bytes, total)
            return w.commit(expected), w.size_bytes

    def put_bytes(self, data: bytes) -> str:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def adopt(
        self, temp_path: Path, *, expected: str | None = None, on_progress: ProgressFn | None = None
    ) -> tuple[str, int]:
        """Publish a temp file already written in this folder (by `new_temp_path`)."""
        if temp_path.parent != self.root or not temp_path.name.startswith(TEMP_PREFIX):
            raise ValueError(f"{temp_path} is not a temp file of this blob store")
        try:
            digest = hash_file(temp_path, on_progress)
            if expected is not None and digest != expected:
                raise DigestMismatch(expected, digest)
            with temp_path.open("rb") as f:
                os.fsync(f.fileno())
            size = temp_path.stat().st_size
            self._publish(temp_path, digest)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)

    def verify(self, digest: str, on_progress: ProgressFn | None = None) -> bool:
        """True iff the blob exists and its bytes hash to its name."""
        path = self.path(digest)
        try:
            return hash_file(path, on_progress) == digest
        except FileNotFoundError:
            return False

    def digests(self) -> set[str]:
        """Digests of every blob on disk."""
        out = set()
        for entry in os.scandir(self.root):
            name = entry.name
            if name.startswith("sha256-") and _HEX_RE.match(name[7:]):
                out.add(name[7:])
        return out

    def remove(self, digest: str) -> int:
        """Delete a blob; returns the bytes freed (0 if it was absent)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def remove_temps(self) -> int:
        """Delete every temp file (call only while holding the storage lock exclusively)."""
        count = 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    count += 1
        if count:
            fsync_dir(self.root)
            logger.info("removed %d stale temp file(s) from %s", count, self.root)
        return count

    def _publish(self, temp_path: Path, digest: str) -> None:
        target = self.path(digest)
        if target.is_file():
            if self.verify(digest):
                return  # deduplicated: the same bytes are already stored
            # The stored copy is corrupt; re-importing the same content is how users repair it.
            logger.warning("replacing corrupt blob sha256-%s with a verified copy", digest)
            os.chmod(target, 0o644)
        os.chmod(temp_path, 0o444)
        os.replace(temp_path, target)
        fsync_dir(self.root)

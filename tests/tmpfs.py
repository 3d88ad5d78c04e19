"""A real small disk for disk-full tests: a tmpfs mounted on a temp folder, and filler files.

Mounting needs root (or CAP_SYS_ADMIN); where it is impossible the test skips through
`tests/required.py` (and fails under CI=true, where the machine can mount). Fault injection on a
live process uses strace (`-e inject=fsync:error=EIO`), gated the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.required import require

CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """`path` as a fresh tmpfs of `size_bytes` (mode 0700) for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    require(
        result.returncode == 0,
        f"cannot mount a tmpfs ({result.stderr.strip() or 'mount failed'}): the disk-full tests "
        "need root or CAP_SYS_ADMIN",
    )
    try:
        yield path
    finally:
        # Lazy: a process that still has a file open there cannot keep the mount alive.
        subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, *, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a file under `path` until at most `leave_bytes` stay free (0: the disk is full)."""
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (todo := free_bytes(path) - leave_bytes) > 0:
            try:
                os.write(fd, b"\0" * min(todo, CHUNK_BYTES))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    assert free_bytes(path) <= leave_bytes
    return filler


def temp_files(root: Path) -> list[str]:
    """Every `.tmp-*` file or folder under `root` (a half-written blob, archive or cache)."""
    return sorted(p.name for p in root.rglob(".tmp-*"))


def require_strace() -> str:
    path = shutil.which("strace")
    require(path is not None, "strace is not installed (apt-get install strace)")
    assert path is not None
    return path

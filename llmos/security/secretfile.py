"""Secret files (admin key, audit key, master key): created 0600 and atomically, read strictly.

A secret file is written to a temp file opened with mode 0600 (never widened by the umask), fsynced
and renamed into place, so a reader sees the whole secret or none. Reading refuses a file that
group or others can read: a secret that leaked through permissions must not be trusted silently.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from llmos.errors import LlmosError
from llmos.storage.space import disk_errors


class SecretFileError(LlmosError):
    """A secret file is unreadable, malformed or too widely readable."""

    status_code = 500
    code = "secret_file_error"


def write_secret_file(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write `text` to `path` with mode 0600, atomically; a full disk or a failing write is
    InsufficientStorage (nothing half-written stays)."""
    with disk_errors(f"writing the secret file {path.name}", path.parent):
        _write_secret_file(path, text, overwrite=overwrite)


def _write_secret_file(path: Path, text: str, *, overwrite: bool) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # fails if `path` appeared meanwhile: first writer wins
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret_file(path: Path) -> str:
    """The stripped text of a 0600 (or stricter) file owned by this user."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise SecretFileError(f"cannot read the secret file {path.name}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"the secret file {path.name} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"chmod 600 {path}",
        )
    if not text:
        raise SecretFileError(f"the secret file {path.name} is empty")
    return text


def load_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, creating it with `make()` if the file does not exist yet."""
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_secret_file(path, make(), overwrite=False)
    return read_secret_file(path)

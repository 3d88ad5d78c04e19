"""What every doctor check shares: the result row, the inspection it reads from, byte formatting.

An `Inspection` opens what the checks read lazily and read-only: the data dir's storage without
creating, cleaning or migrating anything (`Storage(read_only=True)`), and the server's probes
with plain GETs, each fetched once and shared by the checks that need it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from llmos.config import Settings
from llmos.storage.layout import DataDir
from llmos.storage.store import Storage

Status = Literal["ok", "warn", "fail"]
SERVER_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the diagnosis: what was checked, how it stands, and the command that fixes it."""

    check: str
    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_failure(self) -> bool:
        return self.status == "fail"


def ok(check: str, message: str, **details: Any) -> CheckResult:
    return CheckResult(check, "ok", message, None, details)


def warn(check: str, message: str, fix: str | None = None, **details: Any) -> CheckResult:
    return CheckResult(check, "warn", message, fix, details)


def fail(check: str, message: str, fix: str | None, **details: Any) -> CheckResult:
    return CheckResult(check, "fail", message, fix, details)


@dataclass(slots=True)
class Response:
    """A server answer the checks read: status code and parsed JSON (None if not JSON)."""

    status_code: int
    body: Any


class Inspection:
    """The settings, the data dir and the server one diagnosis looks at, opened on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        is_full: bool = False,
        url: str | None = None,
        is_url_explicit: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.settings = settings
        self.is_full = is_full
        self.url = url.rstrip("/") if url else None
        self.is_url_explicit = is_url_explicit
        self.api_key = api_key
        self.layout = DataDir(Path(settings.storage.data_dir))
        self._storage: Storage | None = None
        self._storage_error: str | None = None
        self._responses: dict[str, Response | None] = {}
        self._http: httpx.Client | None = None

    # ---- the data dir ------------------------------------------------------------------------

    @property
    def has_database(self) -> bool:
        """False for a fresh install: nothing stored yet (a database URL always counts)."""
        return bool(self.settings.storage.database_url) or self.layout.db_path.is_file()

    def storage(self) -> Storage | None:
        """The data dir opened read-only; None when there is no database yet or it cannot be
        opened (`storage_error` says why)."""
        if self._storage is None and self._storage_error is None and self.has_database:
            storage = None
            try:
                storage = Storage(self.settings.storage, read_only=True)
                storage.db.revision()  # connects and reads: a bad file or server fails here
                self._storage = storage
            except Exception as exc:  # any driver error: the database check reports it
                self._storage_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                if storage is not None:
                    storage.close()
        return self._storage

    @property
    def storage_error(self) -> str | None:
        return self._storage_error

    # ---- the server --------------------------------------------------------------------------

    def get(self, path: str) -> Response | None:
        """GET `path` on the server, once per inspection; None when nothing answers."""
        if self.url is None:
            return None
        if path not in self._responses:
            self._responses[path] = self._fetch(path)
        return self._responses[path]

    def _fetch(self, path: str) -> Response | None:
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = httpx.Client(
                base_url=self.url or "", headers=headers, timeout=SERVER_TIMEOUT_S
            )
        try:
            r = self._http.get(path)
        except httpx.HTTPError:
            return None
        body: Any = None
        with contextlib.suppress(ValueError):
            body = r.json()
        return Response(r.status_code, body)

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
        if self._http is not None:
            self._http.close()


def not_checked(check: str, ins: Inspection) -> CheckResult:
    """The result of a check that needs the database when there is none, or it is unreadable."""
    if not ins.has_database:
        return ok(check, "nothing stored yet")
    return warn(check, "not checked: the database cannot be read (see the database check)")


def restore_fix(ins: Inspection) -> str:
    """The command that restores the newest backup in the data dir (a placeholder if none)."""
    folder = ins.layout.backups
    archives = sorted(folder.glob("llmos-backup-*.tar")) if folder.is_dir() else []
    return f"llmos backup restore --force {archives[-1] if archives else 'ARCHIVE.tar'}"


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `df -H` prints them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")

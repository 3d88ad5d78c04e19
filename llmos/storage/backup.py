"""Backups: one tar archive holding a consistent snapshot, verifiable and restorable atomically.

An archive holds `BACKUP.json`, the database snapshot (`db/llmos.sqlite` from SQLite's online
backup API, or `db/llmos.sql` from `pg_dump` at an exported snapshot), the manifests read from
that same snapshot (`manifests/...`), optionally the blobs, and last `SHA256SUMS` over every
other member. The storage lock is held shared while creating, so gc cannot delete a blob the
snapshot names. Restore verifies every checksum and blob, builds the new data dir beside the old
one, and swaps it in by rename; the old dir is kept until the swap is done. A full disk or a
failing write while creating or restoring raises `InsufficientStorage` (507); the temp archive
and the staging folders are removed, so no partial archive or half-restored data dir is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from llmos.config import StorageConfig
from llmos.errors import Conflict, InvalidRequest, NotFound, StorageCorrupted
from llmos.storage.blobs import CHUNK_BYTES, ProgressFn, hash_file
from llmos.storage.db import Database, database_url
from llmos.storage.layout import TEMP_PREFIX, DataDir, fsync_dir
from llmos.storage.manifest import ModelManifest
from llmos.storage.schema import DatasetRow, ModelRow
from llmos.storage.space import disk_errors

logger = logging.getLogger(__name__)

FORMAT = "llmos-backup"
FORMAT_VERSION = 1
SUMS = "SHA256SUMS"
SQLITE_MEMBER = "db/llmos.sqlite"
PG_MEMBER = "db/llmos.sql"


@dataclass(slots=True)
class BackupInfo:
    """What `verify_backup` found in an archive."""

    path: Path
    backend: str
    schema_revision: str | None
    with_blobs: bool
    num_models: int
    num_datasets: int
    size_bytes: int
    digests: set[str] = field(default_factory=set)  # every blob the manifests reference
    blobs_in_archive: set[str] = field(default_factory=set)


# -- create ----------------------------------------------------------------------------------


def create_backup(
    config: StorageConfig,
    dest: Path | None = None,
    *,
    with_blobs: bool = False,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Write a backup archive of the data dir; returns its path."""
    from llmos.storage.store import Storage

    storage = Storage(config)
    try:
        target = _target_path(storage.layout, dest)
        staging = target.parent / f"{TEMP_PREFIX}{target.name}.d"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with storage.lock.shared(), disk_errors("writing a backup", target.parent):
                staging.mkdir(mode=0o700)
                db_member, manifests = _snapshot(storage.db, staging)
                _write_archive(
                    storage, target, db_member, staging, manifests, with_blobs, on_progress
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        storage.close()
    logger.info("backup written to %s", target)
    return target


def _target_path(layout: DataDir, dest: Path | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"llmos-backup-{stamp}.tar"
    if dest is None:
        layout.backups.mkdir(mode=0o700, exist_ok=True)
        return layout.backups / name
    dest = dest.expanduser()
    target = dest / name if dest.is_dir() else dest
    if target.exists():
        raise Conflict(f"{target} already exists", hint="choose another path")
    if not target.parent.is_dir():
        raise NotFound(f"folder {target.parent} does not exist")
    return target


def _snapshot(db: Database, staging: Path) -> tuple[tuple[str, Path], dict[str, Any]]:
    """Dump the database and read the manifests from the same point in time."""
    if db.backend == "sqlite":
        src_path = db.sqlite_path
        if src_path is None:
            raise InvalidRequest("cannot back up an in-memory database")
        copy = staging / "llmos.sqlite"
        with (
            contextlib.closing(sqlite3.connect(src_path)) as src,
            contextlib.closing(sqlite3.connect(copy)) as dst,
        ):
            src.backup(dst)  # SQLite's online backup: a consistent copy, WAL included
        snap = Database(f"sqlite:///{copy}", migrate=False)
        try:
            with snap.session() as s:
                manifests = _read_manifests(s)
        finally:
            snap.dispose()
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        return (SQLITE_MEMBER, copy), manifests
    if db.backend == "postgresql":
        return _pg_snapshot(db, staging)
    raise InvalidRequest(f"backups support SQLite and PostgreSQL, not {db.backend}")


def _pg_snapshot(db: Database, staging: Path) -> tuple[tuple[str, Path], dict[str, Any]]:
    out = staging / "llmos.sql"
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot_id = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            url, env = _libpq(db)
            args = ["pg_dump", "--format=plain", "--clean", "--if-exists", "--no-owner"]
            args += ["--no-privileges", f"--snapshot={snapshot_id}", f"--file={out}", url]
            _run(args, env, "pg_dump")
            manifests = _read_manifests(Session(bind=conn))
    return (PG_MEMBER, out), manifests


def _libpq(db: Database) -> tuple[str, dict[str, str]]:
    """A libpq URL (no SQLAlchemy driver suffix, no password) and env carrying the password."""
    url = make_url(str(db.url.render_as_string(hide_password=False))).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(password=None).render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise InvalidRequest(
            f"{what} is not installed", hint="install the PostgreSQL client tools"
        ) from None
    if proc.returncode != 0:
        raise StorageCorrupted(f"{what} failed: {proc.stderr.strip()[-500:]}")


def _read_manifests(s: Session) -> dict[str, Any]:
    from llmos.storage.datasets import _manifest as dataset_manifest
    from llmos.storage.registry import _manifest as model_manifest

    out: dict[str, Any] = {}
    for row in s.scalars(select(ModelRow)):
        out[f"manifests/models/{row.name}/{row.tag}.json"] = model_manifest(row)
    for drow in s.scalars(select(DatasetRow)):
        out[f"manifests/datasets/{drow.name}.json"] = dataset_manifest(drow)
    return out


def _write_archive(
    storage: Any,
    target: Path,
    db_member: tuple[str, Path],
    staging: Path,
    manifests: dict[str, Any],
    with_blobs: bool,
    on_progress: ProgressFn | None,
) -> None:
    digests = _digests(manifests)
    revision = storage.db.revision()
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "backend": storage.db.backend,
        "schema_revision": revision,
        "with_blobs": with_blobs,
        "num_models": sum(1 for k in manifests if k.startswith("manifests/models/")),
        "num_datasets": sum(1 for k in manifests if k.startswith("manifests/datasets/")),
    }
    temp = target.parent / f"{TEMP_PREFIX}{target.name}"
    sums: dict[str, str] = {}
    try:
        with (
            open(temp, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, "BACKUP.json", json.dumps(header, indent=2).encode(), sums)
            _add_file(tar, db_member[0], db_member[1], sums, None)
            for name, manifest in sorted(manifests.items()):
                _add_bytes(tar, name, manifest.model_dump_json(indent=2).encode(), sums)
            if with_blobs:
                _add_blobs(tar, storage.blobs, sorted(digests), sums, on_progress)
            listing = "".join(f"{h}  {n}\n" for n, h in sums.items())
            _add_bytes(tar, SUMS, listing.encode(), None)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def _add_blobs(
    tar: tarfile.TarFile,
    blobs: Any,
    digests: list[str],
    sums: dict[str, str],
    on_progress: ProgressFn | None,
) -> None:
    total = sum(blobs.path(d).stat().st_size for d in digests if blobs.has(d))
    done = 0
    for digest in digests:
        path = blobs.path(digest)
        if not path.is_file():
            raise StorageCorrupted(f"blob sha256-{digest} is missing; run `llmos models verify`")
        base = done

        def progress(n: int, base: int = base) -> None:
            if on_progress:
                on_progress(base + n, total)

        name = f"blobs/sha256-{digest}"
        _add_file(tar, name, path, sums, progress)
        if sums[name] != digest:
            raise StorageCorrupted(
                f"blob sha256-{digest} is corrupt; not backing it up",
                hint="run `llmos models verify` and re-import the model that uses it",
            )
        done += path.stat().st_size


class _HashingReader(io.RawIOBase):
    """Wraps a file so that whatever tarfile reads from it is hashed on the way."""

    def __init__(self, f: IO[bytes], on_read: Any = None) -> None:
        self.f, self.h, self.n, self.on_read = f, hashlib.sha256(), 0, on_read

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        if self.on_read:
            self.on_read(self.n)
        return data


def _add_file(
    tar: tarfile.TarFile, name: str, path: Path, sums: dict[str, str], on_read: Any
) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o600
    with path.open("rb") as f:
        reader = _HashingReader(f, on_read)
        tar.addfile(info, reader)
    sums[name] = reader.h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, sums: dict[str, str] | None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))
    if sums is not None:
        sums[name] = hashlib.sha256(data).hexdigest()


def _digests(manifests: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for m in manifests.values():
        if isinstance(m, ModelManifest):
            out.update(f.digest for f in m.files)
        else:
            out.add(m.digest)
    return out


# -- verify ----------------------------------------------------------------------------------


def verify_backup(path: Path, *, on_progress: ProgressFn | None = None) -> BackupInfo:
    """Check every member against SHA256SUMS and every blob against its name."""
    if not path.is_file():
        raise NotFound(f"backup {path} does not exist")
    total = path.stat().st_size
    try:
        with tarfile.open(path, mode="r:") as tar:
            return _verify_members(path, tar, total, on_progress)
    except tarfile.TarError as e:
        raise StorageCorrupted(f"backup {path} is not a readable archive: {e}") from None


def _verify_members(
    path: Path, tar: tarfile.TarFile, total: int, on_progress: ProgressFn | None
) -> BackupInfo:
    members = {m.name: m for m in tar.getmembers()}
    for name, m in members.items():
        if not m.isfile() or not _safe_member(name):
            raise StorageCorrupted(f"backup {path} holds an unexpected entry {name!r}")
    if SUMS not in members or "BACKUP.json" not in members:
        raise StorageCorrupted(f"backup {path} has no {SUMS} or BACKUP.json (not an llmos backup?)")
    expected = _parse_sums(_read(tar, members[SUMS], 16 << 20).decode())
    if set(expected) != set(members) - {SUMS}:
        raise StorageCorrupted(f"backup {path}: {SUMS} does not list exactly the archive's files")
    done = 0
    for name, h in expected.items():
        actual = _hash_member(
            tar, members[name], lambda n, b=done: on_progress and on_progress(b + n, total)
        )
        done += members[name].size
        if actual != h:
            raise StorageCorrupted(f"backup {path}: {name} fails its checksum")
    header = json.loads(_read(tar, members["BACKUP.json"], 1 << 20))
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise StorageCorrupted(f"backup {path} has an unknown format {header.get('format')!r}")
    manifests = [
        json.loads(_read(tar, m, 64 << 20))
        for n, m in members.items()
        if n.startswith("manifests/")
    ]
    digests = {f["digest"] for m in manifests for f in m.get("files", [])}
    digests |= {m["digest"] for m in manifests if "digest" in m}
    in_archive = {n.removeprefix("blobs/sha256-") for n in members if n.startswith("blobs/")}
    for d in in_archive:
        if expected[f"blobs/sha256-{d}"] != d:
            raise StorageCorrupted(f"backup {path}: blob sha256-{d} does not match its name")
    if header["with_blobs"] and not digests <= in_archive:
        raise StorageCorrupted(f"backup {path} is missing blobs its manifests reference")
    return BackupInfo(
        path=path,
        backend=header["backend"],
        schema_revision=header.get("schema_revision"),
        with_blobs=bool(header["with_blobs"]),
        num_models=int(header["num_models"]),
        num_datasets=int(header["num_datasets"]),
        size_bytes=total,
        digests=digests,
        blobs_in_archive=in_archive,
    )


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return (
        not name.startswith("/")
        and ".." not in parts
        and parts[0] in ("BACKUP.json", SUMS, "db", "manifests", "blobs")
        and all(parts)
    )


def _parse_sums(listing: str) -> dict[str, str]:
    out = {}
    for line in listing.splitlines():
        h, sep, name = line.partition("  ")
        if not sep or len(h) != 64:
            raise StorageCorrupted(f"malformed {SUMS} line {line[:100]!r}")
        out[name] = h
    return out


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo, limit: int) -> bytes:
    if m.size > limit:
        raise StorageCorrupted(f"backup member {m.name} is implausibly large ({m.size} bytes)")
    f = tar.extractfile(m)
    assert f is not None
    return f.read()


def _hash_member(tar: tarfile.TarFile, m: tarfile.TarInfo, on_read: Any) -> str:
    h = hashlib.sha256()
    f = tar.extractfile(m)
    assert f is not None
    n = 0
    while chunk := f.read(CHUNK_BYTES):
        h.update(chunk)
        n += len(chunk)
        on_read(n)
    return h.hexdigest()


# -- restore ---------------------------------------------------------------------------------


def restore_backup(
    path: Path, config: StorageConfig, *, force: bool = False, on_progress: ProgressFn | None = None
) -> BackupInfo:
    """Verify `path`, then replace the data dir (empty, or any with `force`) by its contents."""
    info = verify_backup(path, on_progress=on_progress)
    layout = DataDir(Path(config.data_dir).expanduser())
    url = make_url(database_url(config))
    if url.get_backend_name() != info.backend:
        raise InvalidRequest(
            f"backup {path} is of a {info.backend} database but the configured one is "
            f"{url.get_backend_name()}"
        )
    if info.backend == "sqlite" and url.database != str(layout.db_path):
        raise InvalidRequest("restore supports SQLite only at its default place in the data dir")
    if not force and not _is_empty(layout, config):
        raise Conflict(
            f"data dir {layout.root} is not empty", hint="pass --force to replace its contents"
        )
    staging = layout.root.parent / f".{layout.root.name}.restore-{secrets.token_hex(4)}"
    try:
        with _exclusive(layout), disk_errors("restoring a backup", layout.root.parent):
            _stage(path, info, layout, staging)
            if info.backend == "postgresql":
                _pg_restore(path, config)
            _swap(layout.root, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Opening applies any newer migrations to a backup from an older llmos.
    Database(config).dispose()
    logger.info("restored %s into %s", path, layout.root)
    return info


@contextlib.contextmanager
def _exclusive(layout: DataDir) -> Iterator[None]:
    if not layout.locks.is_dir():
        yield
        return
    with layout.lock().exclusive(timeout_s=5.0):
        yield


def _is_empty(layout: DataDir, config: StorageConfig) -> bool:
    if layout.blobs.is_dir() and any(layout.blobs.iterdir()):
        return False
    if config.database_url or layout.db_path.exists():
        db = Database(config, migrate=False)
        try:
            with db.session() as s:
                has_rows = (
                    s.execute(select(ModelRow.id).limit(1)).first()
                    or s.execute(select(DatasetRow.id).limit(1)).first()
                )
            return not has_rows
        except Exception:  # no tables yet
            return True
        finally:
            db.dispose()
    return True


def _stage(path: Path, info: BackupInfo, layout: DataDir, staging: Path) -> None:
    """Build the new data dir in `staging`: blobs (re-verified), database, kept user files."""
    new = DataDir(staging)
    new.ensure()
    with tarfile.open(path, mode="r:") as tar:
        for m in tar.getmembers():
            if m.name.startswith("blobs/"):
                _extract_blob(tar, m, new.blobs)
            elif m.name == SQLITE_MEMBER:
                _extract_to(tar, m, new.db_path)
    for digest in info.digests - info.blobs_in_archive:
        old = layout.blobs / f"sha256-{digest}"
        if not old.is_file() or hash_file(old) != digest:
            raise NotFound(
                f"blob sha256-{digest} is neither in the backup nor in {layout.blobs}",
                hint="restore a backup made with --with-blobs",
            )
        os.link(old, new.blobs / old.name)
    if info.backend == "sqlite":
        db = Database(f"sqlite:///{new.db_path}", migrate=False)
        try:
            if (result := db.integrity_check()) != "ok":
                raise StorageCorrupted(f"the backup's database fails integrity_check: {result}")
        finally:
            db.dispose()
    fsync_dir(new.blobs)


def _extract_blob(tar: tarfile.TarFile, m: tarfile.TarInfo, blobs_dir: Path) -> None:
    target = blobs_dir / m.name.removeprefix("blobs/")
    digest = _extract_to(tar, m, target)
    if f"sha256-{digest}" != target.name:
        raise StorageCorrupted(f"{m.name} changed while restoring")
    os.chmod(target, 0o444)


def _extract_to(tar: tarfile.TarFile, m: tarfile.TarInfo, target: Path) -> str:
    src = tar.extractfile(m)
    assert src is not None
    h = hashlib.sha256()
    with open(target, "wb") as out:
        while chunk := src.read(CHUNK_BYTES):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def _pg_restore(path: Path, config: StorageConfig) -> None:
    db = Database(config, migrate=False)
    try:
        with tarfile.open(path, mode="r:") as tar:
            sql = _read(tar, tar.getmember(PG_MEMBER), 1 << 34)
        url, env = _libpq(db)
        with _temp_file(sql) as dump:
            args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
            _run([*args, "-f", str(dump), "-d", url], env, "psql")
    finally:
        db.dispose()


@contextlib.contextmanager
def _temp_file(data: bytes) -> Iterator[Path]:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".sql")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        os.unlink(name)


KEPT = ("llmos.toml", "backups")  # the user's settings and archives survive a restore


def _swap(root: Path, staging: Path) -> None:
    """Put `staging` where `root` is: two renames; the old dir survives until the second."""
    old = root.parent / f".{root.name}.old-{secrets.token_hex(4)}"
    for keep in KEPT:
        if (root / keep).exists():
            os.rename(root / keep, staging / keep)
    if root.exists():
        os.rename(root, old)
    os.rename(staging, root)
    fsync_dir(root.parent)
    shutil.rmtree(old, ignore_errors=True)

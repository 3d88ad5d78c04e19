"""Datasets: named JSONL files of chat (`messages`) or completion (`prompt`/`completion`) records.

A file is validated line by line while it is copied into a blob, in one pass; the first bad
record fails the import with its line number and nothing is stored. A dataset exists iff its row
exists, committed after its blob. Token counts are approximate unless a tokenizer is given:
ceil(characters / 4) per text field, the common rule of thumb for English BPE vocabularies.
Given a `BlobCipher`, the blob holds the records sealed (encrypted at rest); its digest is then
that of the ciphertext, and reading a sealed dataset without the cipher is refused. A full disk
or a failing write raises `InsufficientStorage` (507) and stores nothing.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from llmos.errors import Conflict, InvalidRequest, NotFound, StorageCorrupted
from llmos.storage.blobs import CHUNK_BYTES, ProgressFn, hash_file
from llmos.storage.cipher import SEALED_MAGIC, BlobCipher
from llmos.storage.layout import TEMP_PREFIX, fsync_dir
from llmos.storage.manifest import DatasetManifest
from llmos.storage.names import validate_name
from llmos.storage.schema import DatasetRow, as_utc
from llmos.storage.space import disk_errors
from llmos.storage.store import Storage

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 << 20
ROLES = frozenset({"system", "user", "assistant", "tool"})
APPROX_METHOD = "approx: ceil(chars/4) per text field"
RECORD_HINT = (
    'each line must be a JSON object: {"messages": [{"role": ..., "content": ...}, ...]} '
    'or {"prompt": ..., "completion": ...}'
)

CountTokens = Callable[[str], int]


@dataclass(slots=True)
class _Tally:
    format: str | None = None
    num_records: int = 0
    num_tokens: int = 0


class Datasets:
    """Import, list, show, remove, verify and export datasets."""

    def __init__(self, storage: Storage, *, cipher: BlobCipher | None = None) -> None:
        self.storage = storage
        self.cipher = cipher

    def import_file(
        self,
        path: Path,
        name: str,
        *,
        replace: bool = False,
        count_tokens: CountTokens | None = None,
        token_count_method: str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> DatasetManifest:
        """Validate and store a JSONL file under `name`."""
        name = validate_name(name, what="dataset name")
        if not path.is_file():
            raise NotFound(f"{path} is not a file")
        if not replace and self._find(name) is not None:
            raise Conflict(f"dataset {name} already exists", hint="pass --replace or pick a name")
        counter = count_tokens or _approx_tokens
        total = path.stat().st_size
        tally = _Tally()
        with (
            self.storage.lock.shared(),
            self.storage.writing(f"importing dataset {name}"),
            self.storage.blobs.writer() as w,
            path.open("rb") as f,
        ):
            sealer = self.cipher.sealing(w, purpose="dataset") if self.cipher else None
            sink = sealer or w
            for line_no, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise _bad(path, line_no, f"line longer than {MAX_LINE_BYTES >> 20} MiB")
                _check_line(path, line_no, line, tally, counter)
                sink.write(line)
                if on_progress:
                    on_progress(w.size_bytes, total)
            if tally.num_records == 0:
                raise InvalidRequest(f"{path.name} holds no records", hint=RECORD_HINT)
            if sealer is not None:
                sealer.close()
            digest = w.commit()
            method = token_count_method or ("tokenizer" if count_tokens else APPROX_METHOD)
            source = str(path.resolve())
            return self._insert(name, tally, digest, w.size_bytes, source, replace, method)

    def _insert(
        self,
        name: str,
        tally: _Tally,
        digest: str,
        size: int,
        source: str,
        replace: bool,
        method: str,
    ) -> DatasetManifest:
        try:
            with self.storage.db.session() as s:
                old = s.scalars(select(DatasetRow).where(DatasetRow.name == name)).first()
                if old is not None:
                    if not replace:
                        raise Conflict(f"dataset {name} already exists", hint="pass --replace")
                    s.delete(old)
                    s.flush()
                row = DatasetRow(
                    name=name,
                    format=tally.format or "chat",
                    num_records=tally.num_records,
                    num_tokens=tally.num_tokens,
                    token_count_method=method,
                    digest=digest,
                    size_bytes=size,
                    source=source,
                )
                s.add(row)
                s.flush()
                return _manifest(row)
        except IntegrityError as e:
            raise Conflict(f"dataset {name} was created concurrently; retry") from e

    def list(self) -> builtins.list[DatasetManifest]:
        with self.storage.db.session() as s:
            return [_manifest(r) for r in s.scalars(select(DatasetRow).order_by(DatasetRow.name))]

    def show(self, name: str) -> DatasetManifest:
        row = self._find(validate_name(name, what="dataset name"))
        if row is None:
            raise NotFound(f"dataset {name} not found", hint="see `llmos data list`")
        return row

    def head(self, name: str, num_records: int = 5) -> builtins.list[dict[str, Any]]:
        """The first records (the blob is verified first)."""
        m = self.show(name)
        self._check(m)
        out: builtins.list[dict[str, Any]] = []
        with self._open_plain(m) as f:
            for line in f:
                if len(out) >= num_records:
                    break
                if line.strip():
                    out.append(json.loads(line))
        return out

    def remove(self, name: str) -> DatasetManifest:
        m = self.show(name)
        with self.storage.db.session() as s:
            row = s.scalars(select(DatasetRow).where(DatasetRow.name == m.name)).first()
            if row is not None:
                s.delete(row)
        return m

    def verify(self, name: str | None = None) -> builtins.list[tuple[str, bool]]:
        manifests = [self.show(name)] if name else self.list()
        return [(m.name, self.storage.blobs.verify(m.digest)) for m in manifests]

    def export(self, name: str, dest: Path, *, on_progress: ProgressFn | None = None) -> Path:
        """Write the dataset's JSONL (verified while copying) to `dest` atomically."""
        m = self.show(name)
        with disk_errors(f"exporting dataset {m.name}", dest):
            return self._export(m, dest, on_progress)

    def _export(self, m: DatasetManifest, dest: Path, on_progress: ProgressFn | None) -> Path:
        import hashlib

        target = dest / f"{m.name}.jsonl" if dest.is_dir() else dest
        if target.exists():
            raise Conflict(f"{target} already exists", hint="choose another path")
        temp = target.parent / f"{TEMP_PREFIX}{target.name}"
        h = hashlib.sha256()
        # A sealed blob is checked whole first (its chunks are also authenticated as they are
        # decrypted); a plaintext blob is hashed while it is copied.
        is_sealed = self._is_sealed(m)
        if is_sealed:
            self._check(m)
        try:
            with self._open_plain(m) as fin, open(temp, "wb") as fout:
                done = 0
                while chunk := fin.read(CHUNK_BYTES):
                    h.update(chunk)
                    fout.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, m.size_bytes)
                fout.flush()
                os.fsync(fout.fileno())
            if not is_sealed and h.hexdigest() != m.digest:
                raise _corrupted(m)
            os.replace(temp, target)
            fsync_dir(target.parent)
        except FileNotFoundError:
            raise _corrupted(m) from None
        finally:
            temp.unlink(missing_ok=True)
        return target

    def _find(self, name: str) -> DatasetManifest | None:
        with self.storage.db.session() as s:
            row = s.scalars(select(DatasetRow).where(DatasetRow.name == name)).first()
            return _manifest(row) if row is not None else None

    def _is_sealed(self, m: DatasetManifest) -> bool:
        try:
            with self.storage.blobs.path(m.digest).open("rb") as f:
                return f.read(len(SEALED_MAGIC)) == SEALED_MAGIC
        except FileNotFoundError:
            raise _corrupted(m) from None

    def _open_plain(self, m: DatasetManifest) -> BinaryIO:
        """The dataset's JSONL bytes, decrypted if the blob is sealed."""
        if not self._is_sealed(m):
            return self.storage.blobs.path(m.digest).open("rb")
        if self.cipher is None:
            raise StorageCorrupted(
                f"dataset {m.name} is encrypted and no cipher was given to read it",
                code="dataset_encrypted",
                hint="read it through the llmos CLI, which loads the master key",
            )
        return self.cipher.opening(self.storage.blobs.path(m.digest).open("rb"))

    def _check(self, m: DatasetManifest) -> None:
        path = self.storage.blobs.path(m.digest)
        if not path.is_file() or hash_file(path) != m.digest:
            raise _corrupted(m)


def _check_line(path: Path, line_no: int, line: bytes, tally: _Tally, count: CountTokens) -> None:
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, line_no, f"not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise _bad(path, line_no, f"a JSON {type(record).__name__}, not an object")
    fmt = "chat" if "messages" in record else "completion" if "prompt" in record else None
    if fmt is None:
        raise _bad(path, line_no, "has neither 'messages' nor 'prompt'")
    if tally.format is None:
        tally.format = fmt
    elif fmt != tally.format:
        raise _bad(path, line_no, f"is a {fmt} record in a {tally.format} dataset")
    texts = _chat_texts(record) if fmt == "chat" else _completion_texts(record)
    if isinstance(texts, str):
        raise _bad(path, line_no, texts)
    tally.num_records += 1
    tally.num_tokens += sum(count(t) for t in texts)


def _chat_texts(record: dict[str, Any]) -> builtins.list[str] | str:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    texts = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] is not an object"
        if msg.get("role") not in ROLES:
            return f"messages[{i}].role {msg.get('role')!r} is not one of {sorted(ROLES)}"
        if not isinstance(msg.get("content"), str):
            return f"messages[{i}].content must be a string"
        texts.append(msg["content"])
    return texts


def _completion_texts(record: dict[str, Any]) -> builtins.list[str] | str:
    for key in ("prompt", "completion"):
        if not isinstance(record.get(key), str):
            return f"'{key}' must be a string"
    return [record["prompt"], record["completion"]]


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _bad(path: Path, line_no: int, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path.name} line {line_no}: record {problem}", hint=RECORD_HINT)


def _corrupted(m: DatasetManifest) -> StorageCorrupted:
    return StorageCorrupted(
        f"dataset {m.name} is corrupted: blob sha256-{m.digest[:12]}... is missing or altered",
        hint=f"re-import it: llmos data import {m.source} --name {m.name} --replace",
    )


def _manifest(row: DatasetRow) -> DatasetManifest:
    return DatasetManifest(
        name=row.name,
        format=row.format,
        num_records=row.num_records,
        num_tokens=row.num_tokens,
        token_count_method=row.token_count_method,
        digest=row.digest,
        size_bytes=row.size_bytes,
        source=row.source,
        created_at=as_utc(row.created_at),
    )

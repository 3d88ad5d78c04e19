"""Encryption at rest: AES-256-GCM envelope encryption of user data under a master key.

Each object gets its own random 256-bit data key (DEK); the DEK is stored in the database only
wrapped (AES-256-GCM) by the master key (KEK), which lives in `LLMOS_MASTER_KEY` or a 0600 key
file, never in the database. Rotating the master key re-wraps DEKs, leaving data untouched.
A sealed object is a header (magic, version, object id, chunk size) then chunks of
`nonce || ciphertext || tag`, each with a fresh random 96-bit nonce and AAD binding it to its
object, chunk index and last-chunk flag, so chunks cannot be swapped, reordered or truncated.
Every failure (wrong key, altered byte) is a clear error; plaintext is never guessed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from llmos.errors import LlmosError, StorageCorrupted
from llmos.security.secretfile import load_or_create, read_secret_file, write_secret_file
from llmos.security.tables import DataKeyRow
from llmos.storage.cipher import SEALED_MAGIC, Sink
from llmos.storage.db import Database

logger = logging.getLogger(__name__)

MAGIC = SEALED_MAGIC
VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_CHUNK_BYTES = 1 << 20
_HEADER = struct.Struct(">8sB16sI")  # magic, version, object id, chunk size
HEADER_BYTES = _HEADER.size


class WrongMasterKey(LlmosError):
    """Data was encrypted under a master key other than the one configured."""

    status_code = 500
    code = "wrong_master_key"


class DecryptionFailed(StorageCorrupted):
    """Ciphertext, its header or its wrapped key failed authentication (altered or truncated)."""

    code = "decryption_failed"


class InvalidMasterKey(LlmosError):
    status_code = 500
    code = "invalid_master_key"


def kek_id_of(key: bytes) -> str:
    """A public fingerprint of a master key (names it in errors and in the data_keys table)."""
    return hashlib.sha256(b"llmos-kek-id:" + key).hexdigest()[:16]


def generate_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_master_key(text: str) -> bytes:
    """32 bytes from 64 hex digits or base64 (standard or URL-safe)."""
    text = text.strip()
    try:
        key = (
            bytes.fromhex(text)
            if len(text) == 64
            else base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_"))
        )
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise InvalidMasterKey(
            "the master key is not 32 bytes of hex or base64",
            hint="generate one with: python -c 'import secrets,base64;"
            "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())'",
        )
    return key


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current master key plus keys still accepted for unwrapping (mid-rotation)."""

    current: bytes
    others: tuple[bytes, ...] = ()

    @property
    def current_id(self) -> str:
        return kek_id_of(self.current)

    def by_id(self, kek_id: str) -> bytes | None:
        for key in (self.current, *self.others):
            if kek_id_of(key) == kek_id:
                return key
        return None


def load_keyring(env_value: str | None, key_file: Path, *, create: bool = True) -> Keyring:
    """`env_value` (LLMOS_MASTER_KEY) if given, else `key_file` (created 0600 if `create`);
    a staged `<key_file>.new` from an interrupted or env-based rotation is accepted too."""
    if env_value:
        current = parse_master_key(env_value)
    elif create:
        current = parse_master_key(load_or_create(key_file, generate_master_key))
    else:
        current = parse_master_key(read_secret_file(key_file))
    staged = staged_key_path(key_file)
    others = (parse_master_key(read_secret_file(staged)),) if staged.exists() else ()
    return Keyring(current, others)


def staged_key_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".new")


def _dek_aad(object_id: bytes, purpose: str, kek_id: str) -> bytes:
    return b"llmos-dek|" + object_id + b"|" + purpose.encode() + b"|" + kek_id.encode()


def _chunk_aad(object_id: bytes, idx: int, is_last: bool) -> bytes:
    return b"llmos-chunk|" + struct.pack(">B16sQ?", VERSION, object_id, idx, is_last)


class EnvelopeCipher:
    """Seals and opens objects; implements `llmos.storage.cipher.BlobCipher`."""

    def __init__(
        self, db: Database, keyring: Keyring, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.chunk_bytes = chunk_bytes

    # ---- data keys ---------------------------------------------------------------------------

    def _new_data_key(self, purpose: str) -> tuple[bytes, bytes]:
        object_id = secrets.token_bytes(16)
        dek = AESGCM.generate_key(bit_length=256)
        kek_id = self.keyring.current_id
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = nonce + AESGCM(self.keyring.current).encrypt(
            nonce, dek, _dek_aad(object_id, purpose, kek_id)
        )
        with self.db.session() as s:
            s.add(
                DataKeyRow(
                    object_id=object_id.hex(), purpose=purpose, kek_id=kek_id, wrapped_dek=wrapped
                )
            )
        return object_id, dek

    def _data_key(self, object_id: bytes) -> bytes:
        with self.db.session() as s:
            row = s.get(DataKeyRow, object_id.hex())
            if row is None:
                raise DecryptionFailed(
                    f"no data key for encrypted object {object_id.hex()}: it was deleted or the "
                    "header was altered",
                )
            return self._unwrap(row)

    def _unwrap(self, row: DataKeyRow) -> bytes:
        kek = self.keyring.by_id(row.kek_id)
        if kek is None:
            raise WrongMasterKey(
                f"object {row.object_id} was encrypted under master key {row.kek_id}, but the "
                f"configured master key is {self.keyring.current_id}",
                hint="set LLMOS_MASTER_KEY (or the master key file) to the key used when the data "
                "was stored",
            )
        wrapped = bytes(row.wrapped_dek)
        try:
            return bytes(
                AESGCM(kek).decrypt(
                    wrapped[:NONCE_BYTES],
                    wrapped[NONCE_BYTES:],
                    _dek_aad(bytes.fromhex(row.object_id), row.purpose, row.kek_id),
                )
            )
        except InvalidTag:
            raise DecryptionFailed(
                f"the wrapped data key of object {row.object_id} failed authentication "
                "(altered in the database)"
            ) from None

    def rewrap(self, new_key: bytes) -> int:
        """Re-wrap every data key under `new_key` in one transaction; returns how many."""
        new_id = kek_id_of(new_key)
        count = 0
        with self.db.session() as s:
            for row in s.scalars(select(DataKeyRow)):
                if row.kek_id == new_id:
                    continue
                dek = self._unwrap(row)
                nonce = secrets.token_bytes(NONCE_BYTES)
                object_id = bytes.fromhex(row.object_id)
                row.wrapped_dek = nonce + AESGCM(new_key).encrypt(
                    nonce, dek, _dek_aad(object_id, row.purpose, new_id)
                )
                row.kek_id = new_id
                count += 1
        self.keyring = Keyring(new_key, (self.keyring.current, *self.keyring.others))
        return count

    def forget(self, object_id: str) -> bool:
        """Delete an object's data key: its ciphertext becomes unreadable for good."""
        with self.db.session() as s:
            row = s.get(DataKeyRow, object_id)
            if row is None:
                return False
            s.delete(row)
            return True

    # ---- sealing and opening -----------------------------------------------------------------

    def sealing(self, sink: Sink, *, purpose: str) -> SealingWriter:
        object_id, dek = self._new_data_key(purpose)
        return SealingWriter(sink, object_id, dek, self.chunk_bytes)

    def is_sealed(self, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def opening(self, raw: BinaryIO) -> BinaryIO:
        return io.BufferedReader(_OpeningReader(self._chunks(raw), raw))

    def seal_bytes(self, data: bytes, *, purpose: str = "object") -> bytes:
        out = io.BytesIO()
        with_writer = self.sealing(out, purpose=purpose)
        with_writer.write(data)
        with_writer.close()
        return out.getvalue()

    def open_bytes(self, sealed: bytes) -> bytes:
        return self.opening(io.BytesIO(sealed)).read()

    def _chunks(self, raw: BinaryIO) -> Iterator[bytes]:
        header = raw.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
            raise DecryptionFailed("not an llmos encrypted object (bad or truncated header)")
        _, version, object_id, chunk_bytes = _HEADER.unpack(header)
        if version != VERSION or not 1 <= chunk_bytes <= 1 << 30:
            raise DecryptionFailed(f"unsupported encrypted object (version {version})")
        aes = AESGCM(self._data_key(object_id))
        sealed_bytes = NONCE_BYTES + chunk_bytes + TAG_BYTES
        block = raw.read(sealed_bytes)
        idx = 0
        while True:
            following = raw.read(sealed_bytes) if len(block) == sealed_bytes else b""
            is_last = not following
            if len(block) < NONCE_BYTES + TAG_BYTES:
                raise DecryptionFailed(
                    f"encrypted object {object_id.hex()} is truncated at chunk {idx}"
                )
            try:
                yield aes.decrypt(
                    block[:NONCE_BYTES], block[NONCE_BYTES:], _chunk_aad(object_id, idx, is_last)
                )
            except InvalidTag:
                raise DecryptionFailed(
                    f"chunk {idx} of encrypted object {object_id.hex()} failed authentication: "
                    "the ciphertext was altered, reordered or truncated"
                ) from None
            if is_last:
                return
            block, idx = following, idx + 1


class SealingWriter:
    """Buffers plaintext into fixed-size chunks and writes each sealed chunk to the sink."""

    def __init__(self, sink: Sink, object_id: bytes, dek: bytes, chunk_bytes: int) -> None:
        self._sink = sink
        self._object_id = object_id
        self._aes = AESGCM(dek)
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._idx = 0
        self._closed = False
        sink.write(_HEADER.pack(MAGIC, VERSION, object_id, chunk_bytes))

    @property
    def object_id(self) -> str:
        return self._object_id.hex()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a closed SealingWriter")
        self._buffer += data
        # Keep at least one byte back: only close() knows which chunk is the last.
        while len(self._buffer) > self._chunk_bytes:
            self._seal(bytes(self._buffer[: self._chunk_bytes]), is_last=False)
            del self._buffer[: self._chunk_bytes]

    def close(self) -> None:
        if not self._closed:
            self._seal(bytes(self._buffer), is_last=True)
            self._buffer.clear()
            self._closed = True

    def _seal(self, chunk: bytes, *, is_last: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        aad = _chunk_aad(self._object_id, self._idx, is_last)
        self._sink.write(nonce + self._aes.encrypt(nonce, chunk, aad))
        self._idx += 1


class _OpeningReader(io.RawIOBase):
    """A raw reader over decrypted chunks (each authenticated before any byte is returned)."""

    def __init__(self, chunks: Iterator[bytes], raw: BinaryIO) -> None:
        self._chunks = chunks
        self._raw = raw
        self._pending = b""

    def close(self) -> None:
        self._raw.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@dataclass(frozen=True, slots=True)
class Rotation:
    old_kek_id: str
    new_kek_id: str
    num_rewrapped: int
    new_key_path: Path


def rotate_master_key(cipher: EnvelopeCipher, key_file: Path, *, uses_env: bool) -> Rotation:
    """Re-wrap every data key under a new master key.

    The new key is written first to `<key_file>.new` (0600, fsynced), so a crash at any point
    leaves every data key readable with the old or the new key. With a file-based key the new key
    then replaces the old file; with `LLMOS_MASTER_KEY` it stays in `.new` for the operator to move
    into the environment (the old key can no longer unwrap anything afterwards).
    """
    old_id = cipher.keyring.current_id
    staged = staged_key_path(key_file)
    new_text = generate_master_key()
    write_secret_file(staged, new_text)
    new_key = parse_master_key(new_text)
    num = cipher.rewrap(new_key)
    if uses_env:
        return Rotation(old_id, kek_id_of(new_key), num, staged)
    os.replace(staged, key_file)
    logger.info("master key rotated from %s to %s (%d data keys)", old_id, kek_id_of(new_key), num)
    return Rotation(old_id, kek_id_of(new_key), num, key_file)

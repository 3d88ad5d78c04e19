"""Encryption at rest: round trip, wrong master key, rotation, tampering -> clear errors."""

from __future__ import annotations

import io
import json
import os
import stat

import pytest
from sqlalchemy import select

from llmos.errors import StorageCorrupted
from llmos.security.crypto import (
    HEADER_BYTES,
    DecryptionFailed,
    EnvelopeCipher,
    InvalidMasterKey,
    Keyring,
    WrongMasterKey,
    generate_master_key,
    load_keyring,
    parse_master_key,
    rotate_master_key,
)
from llmos.security.tables import DataKeyRow
from llmos.storage.datasets import Datasets
from llmos.storage.db import Database

KEY_A = bytes(32)
KEY_B = bytes([1]) * 32


@pytest.fixture
def cipher(db: Database) -> EnvelopeCipher:
    return EnvelopeCipher(db, Keyring(KEY_A), chunk_bytes=64)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 1000])
def test_round_trip(cipher: EnvelopeCipher, size: int) -> None:
    data = os.urandom(size)
    sealed = cipher.seal_bytes(data)
    assert data == cipher.open_bytes(sealed)
    assert len(sealed) > size and (size < 16 or data not in sealed)


def test_wrong_master_key_is_a_clear_error(cipher: EnvelopeCipher, db: Database) -> None:
    sealed = cipher.seal_bytes(b"secret")
    other = EnvelopeCipher(db, Keyring(KEY_B))
    with pytest.raises(WrongMasterKey) as e:
        other.open_bytes(sealed)
    assert Keyring(KEY_A).current_id in e.value.message and "LLMOS_MASTER_KEY" in str(e.value)


SEALED_CHUNK = 12 + 64 + 16  # nonce + 64-byte chunk + tag


@pytest.mark.parametrize("where", ["header", "nonce", "body", "tag", "truncate", "drop-chunk"])
def test_tampered_ciphertext_is_a_clear_error(cipher: EnvelopeCipher, where: str) -> None:
    sealed = bytearray(cipher.seal_bytes(b"x" * 200))  # 4 chunks of 64 bytes
    assert len(sealed) == HEADER_BYTES + 3 * SEALED_CHUNK + 12 + 8 + 16
    if where == "header":
        sealed[10] ^= 1  # inside the object id
    elif where == "nonce":
        sealed[HEADER_BYTES] ^= 1
    elif where == "body":
        sealed[HEADER_BYTES + 20] ^= 1
    elif where == "tag":
        sealed[-1] ^= 1
    elif where == "truncate":
        del sealed[-5:]
    else:
        del sealed[HEADER_BYTES + 3 * SEALED_CHUNK :]  # the whole final chunk, nothing else
    with pytest.raises(DecryptionFailed) as e:
        cipher.open_bytes(bytes(sealed))
    assert isinstance(e.value, StorageCorrupted)


@pytest.mark.parametrize("size", [1, 64, 65, 128, 200, 256])
def test_truncation_at_every_chunk_boundary_fails(cipher: EnvelopeCipher, size: int) -> None:
    """Dropping whole trailing chunks leaves every remaining chunk intact and authentic on its
    own; only the last-chunk flag in the AAD can tell the object was cut short."""
    sealed = cipher.seal_bytes(os.urandom(size))
    num_chunks = max(1, -(-size // 64))
    assert (len(sealed) - HEADER_BYTES) > (num_chunks - 1) * SEALED_CHUNK
    for kept in range(num_chunks):
        cut = sealed[: HEADER_BYTES + kept * SEALED_CHUNK]
        with pytest.raises(DecryptionFailed, match=f"chunk {max(kept - 1, 0)}"):
            cipher.open_bytes(cut)
        with pytest.raises(DecryptionFailed):
            b"".join(cipher.opening(io.BytesIO(cut)))


def test_reordered_chunks_fail(cipher: EnvelopeCipher) -> None:
    sealed = cipher.seal_bytes(b"a" * 64 + b"b" * 64 + b"c")
    chunk = SEALED_CHUNK
    body = sealed[HEADER_BYTES:]
    swapped = sealed[:HEADER_BYTES] + body[chunk : 2 * chunk] + body[:chunk] + body[2 * chunk :]
    with pytest.raises(DecryptionFailed, match="chunk 0"):
        cipher.open_bytes(swapped)


def test_tampered_wrapped_key(cipher: EnvelopeCipher, db: Database) -> None:
    sealed = cipher.seal_bytes(b"data")
    with db.session() as s:
        row = s.scalars(select(DataKeyRow)).one()
        wrapped = bytearray(row.wrapped_dek)
        wrapped[-1] ^= 1
        row.wrapped_dek = bytes(wrapped)
    with pytest.raises(DecryptionFailed, match="wrapped data key"):
        cipher.open_bytes(sealed)


def test_rotation_rewraps_without_touching_data(tmp_path, db: Database) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "master.key"
    cipher = EnvelopeCipher(db, load_keyring(None, key_file))
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    sealed = [cipher.seal_bytes(f"record {i}".encode()) for i in range(3)]
    old = load_keyring(None, key_file)
    rotation = rotate_master_key(cipher, key_file, uses_env=False)
    assert rotation.num_rewrapped == 3 and rotation.old_kek_id != rotation.new_kek_id
    fresh = EnvelopeCipher(db, load_keyring(None, key_file))
    assert [fresh.open_bytes(b) for b in sealed] == [f"record {i}".encode() for i in range(3)]
    with pytest.raises(WrongMasterKey):
        EnvelopeCipher(db, old).open_bytes(sealed[0])
    assert not (tmp_path / "master.key.new").exists()


def test_env_rotation_stages_the_new_key(tmp_path, db: Database) -> None:  # type: ignore[no-untyped-def]
    env_key = generate_master_key()
    key_file = tmp_path / "master.key"
    cipher = EnvelopeCipher(db, load_keyring(env_key, key_file))
    sealed = cipher.seal_bytes(b"hello")
    rotation = rotate_master_key(cipher, key_file, uses_env=True)
    assert rotation.new_key_path == tmp_path / "master.key.new"
    # Before the operator moves the key: old env + staged file still read everything.
    assert EnvelopeCipher(db, load_keyring(env_key, key_file)).open_bytes(sealed) == b"hello"
    new_env = rotation.new_key_path.read_text().strip()
    rotation.new_key_path.unlink()
    assert EnvelopeCipher(db, load_keyring(new_env, key_file)).open_bytes(sealed) == b"hello"
    with pytest.raises(WrongMasterKey):
        EnvelopeCipher(db, load_keyring(env_key, key_file)).open_bytes(sealed)


def test_master_key_parsing() -> None:
    assert parse_master_key("00" * 32) == bytes(32)
    assert len(parse_master_key(generate_master_key())) == 32
    for bad in ("", "abc", "zz" * 32, "00" * 16):
        with pytest.raises(InvalidMasterKey):
            parse_master_key(bad)


def _write_jsonl(path, marker: str) -> None:  # type: ignore[no-untyped-def]
    lines = [
        {"messages": [{"role": "user", "content": f"{marker} question {i}"}]} for i in range(50)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_encrypted_dataset_round_trip(storage, db: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = "PLANTED-DATASET-MARKER-7f3a"
    src = tmp_path / "d.jsonl"
    _write_jsonl(src, marker)
    cipher = EnvelopeCipher(storage.db, Keyring(KEY_A), chunk_bytes=256)
    ds = Datasets(storage, cipher=cipher)
    m = ds.import_file(src, "secret-chat")
    blob = storage.blobs.path(m.digest).read_bytes()
    assert marker.encode() not in blob and blob.startswith(b"LLMOSENC")
    assert ds.head("secret-chat", 2)[1]["messages"][0]["content"] == f"{marker} question 1"
    out = ds.export("secret-chat", tmp_path / "out.jsonl")
    assert out.read_bytes() == src.read_bytes()
    assert ds.verify("secret-chat") == [("secret-chat", True)]
    with pytest.raises(StorageCorrupted, match="encrypted"):
        Datasets(storage).head("secret-chat")
    with pytest.raises(WrongMasterKey):
        Datasets(storage, cipher=EnvelopeCipher(storage.db, Keyring(KEY_B))).head("secret-chat")


def test_streaming_open_reads_lines(cipher: EnvelopeCipher) -> None:
    data = b"".join(b"line %d\n" % i for i in range(100))
    reader = cipher.opening(io.BytesIO(cipher.seal_bytes(data)))
    assert list(reader) == data.splitlines(keepends=True)

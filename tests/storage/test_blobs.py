from __future__ import annotations

import hashlib
import os

import pytest

from llmos.errors import InvalidRequest
from llmos.storage.blobs import BlobStore, DigestMismatch, parse_digest
from llmos.storage.layout import DataDir


@pytest.fixture
def blobs(tmp_path):
    layout = DataDir(tmp_path / "home")
    layout.ensure()
    return BlobStore(layout.blobs)


def test_put_is_content_addressed_read_only_and_deduplicated(blobs, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"hello" * 1000)
    digest, size = blobs.put_file(src)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest() and size == 5000
    assert oct(blobs.path(digest).stat().st_mode & 0o777) == "0o444"
    ino = blobs.path(digest).stat().st_ino
    assert blobs.put_file(src)[0] == digest
    assert blobs.path(digest).stat().st_ino == ino  # no second copy
    assert sorted(os.listdir(blobs.root)) == [f"sha256-{digest}"]


def test_a_wrong_expected_digest_leaves_nothing(blobs, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(DigestMismatch):
        blobs.put_file(src, expected="0" * 64)
    assert os.listdir(blobs.root) == []


def test_reimport_repairs_a_corrupt_blob(blobs, tmp_path):
    from tests.storage.helpers import flip_byte

    src = tmp_path / "f"
    src.write_bytes(b"abc" * 100)
    digest, _ = blobs.put_file(src)
    flip_byte(blobs.path(digest))
    assert not blobs.verify(digest)
    blobs.put_file(src)
    assert blobs.verify(digest)


def test_stale_temps_are_removed(blobs):
    temp = blobs.new_temp_path()
    temp.write_bytes(b"partial")
    assert blobs.remove_temps() == 1
    assert not temp.exists()


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "sha256:xyz", "0" * 63, "sha256-" + "g" * 64, "a" * 10_000]
)
def test_bad_digests_are_refused(bad):
    with pytest.raises(InvalidRequest):
        parse_digest(bad)


def test_digest_forms_are_accepted():
    h = "ab" * 32
    assert (
        parse_digest(f"sha256:{h}") == parse_digest(f"sha256-{h}") == parse_digest(h.upper()) == h
    )

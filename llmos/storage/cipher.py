"""The seam through which storage encrypts user data without knowing how.

`Datasets` (and later any store of user content) takes an optional `BlobCipher`; the security
layer supplies one (AES-256-GCM envelope encryption, `llmos.security.crypto`). Storage keeps
content-addressing: a sealed blob is named by the sha256 of its ciphertext, so `verify` and `gc`
work unchanged, and a blob that does not start with the cipher's magic is plaintext (older data).
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

# Every sealed blob starts with these bytes, so storage can tell one apart without the cipher.
SEALED_MAGIC = b"LLMOSENC"


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class SealingWriter(Protocol):
    """Plaintext in, ciphertext out to the wrapped sink; `close()` writes the final chunk."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class BlobCipher(Protocol):
    def sealing(self, sink: Sink, *, purpose: str) -> SealingWriter:
        """A writer that encrypts into `sink` under a fresh per-object data key."""
        ...

    def is_sealed(self, head: bytes) -> bool:
        """True if a blob starting with `head` (at least 16 bytes) was written by `sealing`."""
        ...

    def opening(self, raw: BinaryIO) -> BinaryIO:
        """A readable file of the plaintext of the sealed blob `raw` (authenticated as read)."""
        ...

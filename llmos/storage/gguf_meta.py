"""Reads a GGUF file's metadata (not its weights), checking every length before trusting it.

A hostile header can claim 2^60 tensors or a 2^60-byte string; every count and length here is
checked against the bytes left in the file and against fixed caps before anything is allocated,
so a bad file is refused in milliseconds with bounded memory. Tensor data must lie inside the
file, aligned, with sizes matching their ggml types (type tables come from the `gguf` package).
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from llmos.errors import InvalidModelFile

GGUF_MAGIC = b"GGUF"
MAX_STRING_BYTES = 16 << 20
MAX_KEY_BYTES = 1 << 16
MAX_COUNT = 1 << 20
MAX_DIMS = 8
MAX_ARRAY_KEEP = 64  # arrays longer than this keep only their length
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(slots=True)
class GgufInfo:
    """What the registry stores about a GGUF model."""

    version: int
    architecture: str
    parameters: int
    quantization: str | None
    num_tensors: int
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None


class _Reader:
    """Bounded little-endian reads from a file of known size."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.pos, self.path = f, size, 0, path

    def fail(self, what: str) -> InvalidModelFile:
        return InvalidModelFile(
            f"{self.path.name} is not a valid GGUF file: {what} (at byte {self.pos})",
            hint="re-export the model as GGUF v3 or import its safetensors folder",
        )

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"needs {n} bytes but only {self.size - self.pos} remain (truncated?)")
        data = self.f.read(n)
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"needs {n} bytes but only {self.size - self.pos} remain (truncated?)")
        self.f.seek(n, 1)
        self.pos += n

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        n: int = self.scalar("<Q")
        if n > MAX_COUNT or n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} count {n} is larger than the file can hold")
        return n

    def string(self, limit: int = MAX_STRING_BYTES) -> str:
        n: int = self.scalar("<Q")
        if n > limit:
            raise self.fail(f"string of {n} bytes exceeds the {limit}-byte limit")
        return self.read(n).decode("utf-8", errors="replace")


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse and check the header of `path`; InvalidModelFile on anything malformed."""
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, size, path)
        if size < 24 or r.read(4) != GGUF_MAGIC:
            raise r.fail("bad magic (expected 'GGUF')")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise r.fail(f"unsupported version {version} (supported: 2, 3)")
        num_tensors = r.count("tensor", 24)
        num_kv = r.count("metadata key", 13)
        kv = {r.string(MAX_KEY_BYTES): _value(r, r.scalar("<I"), depth=0) for _ in range(num_kv)}
        tensors = [_tensor_info(r) for _ in range(num_tensors)]
        alignment = kv.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-r.pos // alignment) * alignment
        return _summarize(r, kv, tensors, version, data_start, alignment)


def _value(r: _Reader, vtype: int, depth: int) -> Any:
    if vtype in _SCALARS:
        return r.scalar(_SCALARS[vtype])
    if vtype == _STRING:
        return r.string()
    if vtype == _ARRAY and depth < 2:
        etype = r.scalar("<I")
        if etype in _SCALARS:
            item = struct.calcsize(_SCALARS[etype])
            n = r.count("array item", item)
            if n > MAX_ARRAY_KEEP:
                r.skip(n * item)
                return _ArrayLen(n)
            return [r.scalar(_SCALARS[etype]) for _ in range(n)]
        if etype in (_STRING, _ARRAY):
            n = r.count("array item", 8)
            items = [_value(r, etype, depth + 1) for _ in range(n)]
            return items if n <= MAX_ARRAY_KEEP else _ArrayLen(n)
    raise r.fail(f"unknown metadata value type {vtype}")


class _ArrayLen(int):
    """Stands in for a long array (token lists): only its length is kept."""


def _tensor_info(r: _Reader) -> tuple[str, int, int, int]:
    """(name, ggml type, n_elements, offset)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = r.string(MAX_KEY_BYTES)
    n_dims = r.scalar("<I")
    if not 0 < n_dims <= MAX_DIMS:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
    n_elements = 1
    for _ in range(n_dims):
        dim = r.scalar("<Q")
        n_elements *= dim
        if n_elements > 1 << 48:
            raise r.fail(f"tensor {name!r} claims more than 2^48 elements")
    ggml_type = r.scalar("<I")
    offset = r.scalar("<Q")
    try:
        block, _ = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise r.fail(f"tensor {name!r} has unknown ggml type {ggml_type}") from None
    if n_elements % block:
        raise r.fail(f"tensor {name!r}: {n_elements} elements is not a multiple of {block}")
    return name, ggml_type, n_elements, offset


def _summarize(
    r: _Reader,
    kv: dict[str, Any],
    tensors: list[tuple[str, int, int, int]],
    version: int,
    data_start: int,
    alignment: int,
) -> GgufInfo:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    bytes_by_type: collections.Counter[str] = collections.Counter()
    for name, ggml_type, n_elements, offset in tensors:
        qtype = GGMLQuantizationType(ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = n_elements // block * type_size
        if offset % alignment or data_start + offset + nbytes > r.size:
            raise r.fail(
                f"tensor {name!r} data [{offset}, {offset + nbytes}) lies outside the file "
                "or is misaligned (truncated?)"
            )
        bytes_by_type[qtype.name] += nbytes
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise r.fail("general.architecture is missing")
    return GgufInfo(
        version=version,
        architecture=arch,
        parameters=sum(t[2] for t in tensors),
        quantization=_quantization(kv, bytes_by_type),
        num_tensors=len(tensors),
        config={
            k: v
            for k, v in kv.items()
            if (k.startswith(f"{arch}.") or k.startswith("general.")) and _plain(v)
        },
        tokenizer=_tokenizer(kv),
        chat_template=kv.get("tokenizer.chat_template")
        if isinstance(kv.get("tokenizer.chat_template"), str)
        else None,
    )


def _plain(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and not isinstance(v, _ArrayLen)


def _quantization(kv: dict[str, Any], bytes_by_type: collections.Counter[str]) -> str | None:
    from gguf.constants import LlamaFileType

    file_type = kv.get("general.file_type")
    if isinstance(file_type, int):
        try:
            name = LlamaFileType(file_type).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return bytes_by_type.most_common(1)[0][0] if bytes_by_type else None


def _tokenizer(kv: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in kv.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        short = key.removeprefix("tokenizer.ggml.")
        if isinstance(value, _ArrayLen | list):
            out[f"num_{short}"] = int(value) if isinstance(value, _ArrayLen) else len(value)
        elif _plain(value):
            out[short] = value
    return out

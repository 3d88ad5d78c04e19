"""safetensors: the one checker of a safetensors file's header (the tensor directory).

The header length is bounded (<= 100 MiB and inside the file) before it is read; every entry must
have a known dtype, a valid shape, and data offsets inside the data section matching that shape,
and no two tensors may overlap. Reading the tensor bytes is left to the `safetensors` package,
after this check has passed.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.errors import InvalidModelFile, ModelLoadError

MAX_HEADER_BYTES = 100 << 20
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FAIL_HINT = "the file may be truncated or corrupt: re-copy it or re-save it with safetensors"


@dataclass(frozen=True, slots=True)
class SafetensorsTensor:
    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # byte offsets inside the data section
    end: int

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A checked header: every tensor entry, sorted by name."""

    tensors: dict[str, SafetensorsTensor]

    @property
    def parameters(self) -> int:
        return sum(t.num_elements for t in self.tensors.values())

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.dtype] = out.get(t.dtype, 0) + t.end - t.begin
        return out


def read_header(path: Path) -> SafetensorsHeader:
    """Read and check the header of `path`; InvalidModelFile if anything is wrong."""

    def bad(what: str) -> InvalidModelFile:
        return InvalidModelFile(
            f"{path.name} is not a valid safetensors file: {what}", hint=FAIL_HINT
        )

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise bad(f"{size} bytes is shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise bad(f"the header claims {n} bytes but the file has {size - 8} after it")
            text = f.read(n)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    return SafetensorsHeader(_check_entries(header, size - 8 - n, bad))


def _check_entries(
    header: dict[str, Any], data_bytes: int, bad: Any
) -> dict[str, SafetensorsTensor]:
    tensors: dict[str, SafetensorsTensor] = {}
    for name, t in sorted(header.items()):
        if name == "__metadata__":
            continue
        if not isinstance(t, dict):
            raise bad(f"tensor {name!r} entry is not an object")
        dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        ):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if not 0 <= begin <= end <= data_bytes:
            raise bad(
                f"tensor {name!r} claims bytes [{begin}, {end}) but the data section holds "
                f"{data_bytes} bytes"
            )
        if end - begin != expected:
            raise bad(f"tensor {name!r}: {end - begin} bytes do not match {dtype} shape {shape}")
        tensors[name] = SafetensorsTensor(name, dtype, tuple(shape), begin, end)
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values())
    for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise bad(f"tensors {n0!r} and {n1!r} overlap")
    return tensors

"""GGUF: the one parser of a GGUF file's header, metadata and tensor directory, and the facts
chosen from them.

A hostile header can claim 2^60 tensors or a 2^60-byte string; every count and length is checked
against the bytes left in the file and against fixed caps before anything is allocated, so a bad
file is refused in milliseconds with bounded memory. Tensors must lie inside the file, aligned,
with whole blocks per row of their ggml type (type tables from the `gguf` package). Metadata comes
back in full (token lists included); decoding tensor data into weights is `llmos.models.gguf`'s.
"""

from __future__ import annotations

import collections
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.errors import InvalidModelFile, ModelLoadError
from llmos.storage.formats.facts import (
    DEFAULT_CONTEXT_LENGTH,
    ModelFacts,
    positive_int_or,
    template_or_none,
)

if TYPE_CHECKING:
    from gguf.constants import GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_STRING_BYTES = 16 << 20
MAX_KEY_BYTES = 1 << 16
MAX_KV_COUNT = 1 << 16  # real files have ~50
MAX_COUNT = 1 << 20  # tensors, and items of one array (Gemma 3 has 2^18 tokens)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 2  # arrays of arrays at most
MAX_ELEMENTS = 1 << 48
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# GGUF value type -> struct code; 8 = string, 9 = array.
_SCALARS: dict[int, str] = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_STRUCTS = {vtype: struct.Struct("<" + code) for vtype, code in _SCALARS.items()}
_STRING, _ARRAY = 8, 9
FAIL_HINT = "the file may be truncated or corrupt: re-copy it, or re-export the model as GGUF v3"


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One entry of the tensor directory, checked to lie inside the file."""

    name: str
    shape: tuple[int, ...]  # torch order (outermost first), i.e. GGUF dims reversed
    ggml_type: GGMLQuantizationType
    data_offset: int  # absolute byte offset in the file
    num_bytes: int

    @property
    def num_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(slots=True)
class GgufHeader:
    """A checked GGUF header: version, every metadata value, and the tensor directory."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GgufTensor]

    @property
    def architecture(self) -> str:
        return architecture(self.metadata)


def read_header(path: Path) -> GgufHeader:
    """Parse and check the header of `path`; InvalidModelFile on anything malformed."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise _Cursor(b"", path).fail(f"{size} bytes is too short for a GGUF header")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return _parse(_Cursor(buf, path))
    finally:
        buf.close()


def _parse(cur: _Cursor) -> GgufHeader:
    magic = bytes(cur.buf[:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"bad magic {magic!r} (expected b'GGUF')")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        raise cur.fail(f"unsupported version {version} (supported: 2, 3, little-endian)")
    num_tensors = cur.count("tensor", 24)
    num_kv = cur.count("metadata key", 13, limit=MAX_KV_COUNT)
    metadata: dict[str, Any] = {}
    for _ in range(num_kv):
        key = cur.string(MAX_KEY_BYTES)
        metadata[key] = cur.value(cur.u32(), depth=0)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise cur.fail("general.architecture is missing")
    entries = [_tensor_entry(cur) for _ in range(num_tensors)]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = _place(cur, entries, data_start, alignment)
    return GgufHeader(cur.path, version, metadata, tensors)


class _Cursor:
    """Bounded little-endian reads from a mapped file."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.size, self.pos, self.path = buf, len(buf), 0, path

    def fail(self, what: str) -> InvalidModelFile:
        return InvalidModelFile(
            f"{self.path.name} is not a valid GGUF file: {what} (at byte {self.pos})",
            hint=FAIL_HINT,
        )

    def need(self, num_bytes: int) -> None:
        if num_bytes < 0 or num_bytes > self.size - self.pos:
            raise self.fail(f"needs {num_bytes} bytes but only {self.size - self.pos} remain")

    def unpack(self, fmt: struct.Struct) -> Any:
        self.need(fmt.size)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def u32(self) -> int:
        return int(self.unpack(_U32))

    def u64(self) -> int:
        return int(self.unpack(_U64))

    def count(self, what: str, min_item_bytes: int, limit: int = MAX_COUNT) -> int:
        n = self.u64()
        if n > limit or n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} count {n} is more than the file can hold")
        return n

    def string(self, limit: int = MAX_STRING_BYTES) -> str:
        n = self.u64()
        if n > limit:
            raise self.fail(f"a string of {n} bytes exceeds the {limit}-byte limit")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def strings(self, n: int) -> list[str]:
        """`n` strings; the loop of `string` inlined (Gemma 3 has 262k tokens)."""
        buf, size, pos, out = self.buf, self.size, self.pos, []
        unpack = _U64.unpack_from
        for _ in range(n):
            if size - pos < 8:
                self.pos = pos
                self.need(8)
            (length,) = unpack(buf, pos)
            pos += 8
            if length > MAX_STRING_BYTES or length > size - pos:
                self.pos = pos
                raise self.fail(f"a string of {length} bytes runs past the end or the limit")
            out.append(buf[pos : pos + length].decode("utf-8", errors="replace"))
            pos += length
        self.pos = pos
        return out

    def value(self, vtype: int, depth: int) -> Any:
        if vtype in _STRUCTS:
            return self.unpack(_STRUCTS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            return self.array(depth)
        raise self.fail(f"unknown metadata value type {vtype}")

    def array(self, depth: int) -> list[Any]:
        etype = self.u32()
        if etype in _STRUCTS:
            item = _STRUCTS[etype].size
            n = self.count("array item", item)
            values = struct.unpack_from(f"<{n}{_SCALARS[etype]}", self.buf, self.pos)
            self.pos += n * item
            return list(values)
        if etype == _STRING:
            return self.strings(self.count("array item", 8))
        if etype == _ARRAY:
            n = self.count("array item", 12)
            return [self.value(_ARRAY, depth + 1) for _ in range(n)]
        raise self.fail(f"unknown array element type {etype}")


def _tensor_entry(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    """(name, GGUF dims, ggml type id, offset from the data start)."""
    name = cur.string(MAX_KEY_BYTES)
    num_dims = cur.u32()
    if not 1 <= num_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {num_dims} dimensions (1 to {MAX_DIMS} allowed)")
    dims = tuple(cur.u64() for _ in range(num_dims))
    num_elements = 1
    for d in dims:
        num_elements *= d
        if d == 0 or num_elements > MAX_ELEMENTS:
            raise cur.fail(f"tensor {name!r} has dims {dims}")
    return name, dims, cur.u32(), cur.u64()


def _place(
    cur: _Cursor,
    entries: list[tuple[str, tuple[int, ...], int, int]],
    data_start: int,
    alignment: int,
) -> dict[str, GgufTensor]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    tensors: dict[str, GgufTensor] = {}
    for name, dims, type_id, offset in entries:
        try:
            ggml_type = GGMLQuantizationType(type_id)
            block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has unknown ggml type {type_id}") from None
        if dims[0] % block_size:
            raise cur.fail(
                f"tensor {name!r}: rows of {dims[0]} are not whole {ggml_type.name} blocks"
            )
        num_elements = 1
        for d in dims:
            num_elements *= d
        num_bytes = num_elements // block_size * type_size
        start = data_start + offset
        if offset % alignment or start + num_bytes > cur.size:
            raise cur.fail(
                f"tensor {name!r} data [{start}, {start + num_bytes}) lies beyond the end of the "
                f"file ({cur.size} bytes) or is misaligned"
            )
        if name in tensors:
            raise cur.fail(f"duplicate tensor {name!r}")
        shape = tuple(reversed(dims))
        tensors[name] = GgufTensor(name, shape, ggml_type, start, num_bytes)
    return tensors


# --- facts -----------------------------------------------------------------------------------


def model_facts(metadata: dict[str, Any]) -> ModelFacts:
    """The architecture, context length and chat template of a GGUF (its metadata, or the
    `general.*` and `<arch>.*` keys a manifest keeps)."""
    return ModelFacts(architecture(metadata), context_length(metadata), chat_template(metadata))


def architecture(metadata: dict[str, Any]) -> str:
    arch = metadata.get("general.architecture")
    return arch if isinstance(arch, str) and arch else "unknown"


def context_length(metadata: dict[str, Any]) -> int:
    value = metadata.get(f"{architecture(metadata)}.context_length")
    return positive_int_or(value, DEFAULT_CONTEXT_LENGTH)


def chat_template(metadata: dict[str, Any]) -> str | None:
    return template_or_none(metadata.get("tokenizer.chat_template"))


# --- what the registry stores ----------------------------------------------------------------


@dataclass(slots=True)
class GgufInfo:
    """What the registry stores about a GGUF model."""

    version: int
    facts: ModelFacts
    parameters: int
    quantization: str | None
    num_tensors: int
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)


def describe(header: GgufHeader) -> GgufInfo:
    """The manifest's view of a checked header."""
    from gguf.constants import GGML_QUANT_SIZES

    bytes_by_type: collections.Counter[str] = collections.Counter()
    for t in header.tensors.values():
        block_size, type_size = GGML_QUANT_SIZES[t.ggml_type]
        bytes_by_type[t.ggml_type.name] += t.num_elements // block_size * type_size
    meta = header.metadata
    arch = header.architecture
    return GgufInfo(
        version=header.version,
        facts=model_facts(meta),
        parameters=sum(t.num_elements for t in header.tensors.values()),
        quantization=_quantization(meta, bytes_by_type),
        num_tensors=len(header.tensors),
        config={
            k: v for k, v in meta.items() if k.startswith((f"{arch}.", "general.")) and _plain(v)
        },
        tokenizer=_tokenizer(meta),
    )


def _plain(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def _quantization(meta: dict[str, Any], bytes_by_type: collections.Counter[str]) -> str | None:
    from gguf.constants import LlamaFileType

    file_type = meta.get("general.file_type")
    if isinstance(file_type, int):
        try:
            name = LlamaFileType(file_type).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return bytes_by_type.most_common(1)[0][0] if bytes_by_type else None


def _tokenizer(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        short = key.removeprefix("tokenizer.ggml.")
        if isinstance(value, list):
            out[f"num_{short}"] = len(value)
        elif _plain(value):
            out[short] = value
    return out


# GGUF metadata key -> profile field (llama.cpp's `general.sampling.*`, written by its
# convert script from a model's generation_config.json).
_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}


def sampling_defaults(metadata: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults the metadata sets, under the profile's field names."""
    return {field: metadata[key] for key, field in _SAMPLING_KEYS.items() if key in metadata}


# --- writing a profile back --------------------------------------------------------------------

_INT32, _FLOAT32 = 5, 6


def profile_metadata(profile: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """The GGUF keys a profile can be written as: key -> (value type, value). llama.cpp reads
    the same `general.sampling.*` keys and `tokenizer.chat_template`; a system prompt, stop
    strings, max tokens and a context length have no GGUF key and are not written."""
    out: dict[str, tuple[int, Any]] = {}
    for key, name in _SAMPLING_KEYS.items():
        if profile.get(name) is not None:
            out[key] = (
                (_INT32, int(profile[name])) if name == "top_k" else (_FLOAT32, profile[name])
            )
    if profile.get("chat_template"):
        out["tokenizer.chat_template"] = (_STRING, profile["chat_template"])
    return out


def header_with(path: Path, updates: dict[str, tuple[int, Any]]) -> tuple[bytes, int]:
    """A new header for `path` with `updates` replacing or adding metadata keys, and the offset
    where the file's tensor data starts. The tensor directory is kept byte for byte (its offsets
    are relative to the data), so the new file is this header plus the old file from that offset.
    """
    with path.open("rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        cur = _Cursor(buf, path)
        header = _parse(cur)  # checks the whole header first
        cur.pos = 8
        num_tensors, num_kv = cur.u64(), cur.u64()
        kept: list[bytes] = []
        for _ in range(num_kv):
            start = cur.pos
            key = cur.string(MAX_KEY_BYTES)
            cur.value(cur.u32(), depth=0)
            if key not in updates:
                kept.append(bytes(buf[start : cur.pos]))
        directory_start = cur.pos
        for _ in range(num_tensors):
            _tensor_entry(cur)
        directory = bytes(buf[directory_start : cur.pos])
        alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        data_start = -(-cur.pos // alignment) * alignment
    finally:
        buf.close()
    out = bytearray(GGUF_MAGIC)
    out += _U32.pack(header.version) + _U64.pack(num_tensors) + _U64.pack(len(kept) + len(updates))
    for item in kept:
        out += item
    for key, (vtype, value) in updates.items():
        out += _encode_string(key) + _U32.pack(vtype)
        out += _encode_string(value) if vtype == _STRING else _STRUCTS[vtype].pack(value)
    out += directory
    out += bytes(-len(out) % alignment)
    return bytes(out), data_start


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U64.pack(len(raw)) + raw

"""Reads a Hugging Face model folder's metadata: config, tokenizer, template, safetensors headers.

Only safetensors weights are accepted; pickle checkpoints (`.bin`, `.pt`, ...) are refused and
never opened. Each safetensors header is bounded (length <= 100 MiB and inside the file) and
checked: known dtypes, offsets in bounds, non-overlapping and covering the data exactly, sizes
matching shapes. JSON files are size-capped before parsing.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.errors import InvalidModelFile

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")
MAX_HEADER_BYTES = 100 << 20
MAX_JSON_BYTES = 64 << 20
MAX_FILES = 1024
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
PICKLE_HINT = "llmos loads only safetensors and GGUF; convert the checkpoint to safetensors or GGUF"


@dataclass(slots=True)
class HfInfo:
    """What the registry stores about an HF folder."""

    architecture: str
    parameters: int
    quantization: str | None
    files: dict[str, str]  # file name -> role
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None


def refuse_pickle(path: Path) -> None:
    """Raise if `path` names a pickle checkpoint (without opening it)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InvalidModelFile(
            f"{path.name} is a pickle checkpoint, which can run code when loaded; refused",
            hint=PICKLE_HINT,
        )


def read_safetensors_header(path: Path) -> tuple[int, dict[str, int]]:
    """Check a safetensors file; returns (parameters, bytes per dtype)."""
    size = path.stat().st_size

    def bad(what: str) -> InvalidModelFile:
        return InvalidModelFile(f"{path.name} is not a valid safetensors file: {what}")

    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise bad(f"header claims {n} bytes but the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    return _check_tensors(header, size - 8 - n, bad)


def _check_tensors(header: dict[str, Any], data_bytes: int, bad: Any) -> tuple[int, dict[str, int]]:
    spans: list[tuple[int, int, str]] = []
    params = 0
    by_dtype: dict[str, int] = {}
    for name, t in header.items():
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
        n_elements = math.prod(shape)
        if not 0 <= begin <= end <= data_bytes:
            raise bad(f"tensor {name!r} data_offsets {offsets} lie outside the data section")
        if (end - begin) != n_elements * DTYPE_BYTES[dtype]:
            raise bad(f"tensor {name!r}: {end - begin} bytes do not match {dtype} shape {shape}")
        spans.append((begin, end, name))
        params += n_elements
        by_dtype[dtype] = by_dtype.get(dtype, 0) + end - begin
    spans.sort()
    for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise bad(f"tensors {n0!r} and {n1!r} overlap")
    return params, by_dtype


def read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidModelFile(f"{path.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelFile(f"{path.name} is not valid JSON: {e}") from None


def read_hf_folder(folder: Path) -> HfInfo:
    """Inspect an HF model folder; InvalidModelFile if it cannot be imported."""
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    if len(entries) > MAX_FILES:
        raise InvalidModelFile(f"{folder} holds more than {MAX_FILES} files")
    weights = [p for p in entries if p.suffix == ".safetensors"]
    pickles = [p for p in entries if p.suffix.lower() in PICKLE_SUFFIXES]
    if not weights:
        what = (
            f"only pickle checkpoints ({', '.join(p.name for p in pickles)})"
            if pickles
            else "no weights"
        )
        raise InvalidModelFile(f"{folder} has {what}; refused", hint=PICKLE_HINT)
    if pickles:
        logger.warning("ignoring pickle files next to safetensors: %s", [p.name for p in pickles])
    if not (folder / "config.json").is_file():
        raise InvalidModelFile(
            f"{folder} has no config.json", hint="an HF folder needs config.json"
        )
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise InvalidModelFile("config.json is not a JSON object")
    params, by_dtype = 0, dict[str, int]()
    for p in weights:
        n, dtypes = read_safetensors_header(p)
        params += n
        for k, v in dtypes.items():
            by_dtype[k] = by_dtype.get(k, 0) + v
    files = {p.name: _role(p.name) for p in entries if p.suffix in ALLOWED_SUFFIXES}
    for p in entries:
        if p.suffix in (".json",) and p.name != "config.json":
            read_json(p)  # refuse malformed JSON now rather than at load time
    return HfInfo(
        architecture=_architecture(config),
        parameters=params,
        quantization=_hf_quantization(config, by_dtype),
        files=files,
        config=config,
        tokenizer=_hf_tokenizer(folder, files),
        chat_template=_hf_chat_template(folder),
    )


def _role(name: str) -> str:
    if name.endswith(".safetensors"):
        return "weights"
    if name in ("config.json", "generation_config.json", "model.safetensors.index.json"):
        return "config"
    if name.endswith(".jinja"):
        return "template"
    if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
        return "tokenizer"
    return "other"


def _architecture(config: dict[str, Any]) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0][:128]
    model_type = config.get("model_type")
    return model_type[:128] if isinstance(model_type, str) and model_type else "unknown"


def _hf_quantization(config: dict[str, Any], by_dtype: dict[str, int]) -> str | None:
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and isinstance(qc.get("quant_method"), str):
        return str(qc["quant_method"])[:64]
    return max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else None


def _hf_tokenizer(folder: Path, files: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"files": sorted(n for n, r in files.items() if r == "tokenizer")}
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        data = read_json(tc)
        if isinstance(data, dict):
            for key in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length"):
                value = data.get(key)
                if isinstance(value, str | int | float):
                    out[key] = value
    return out


def _hf_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.stat().st_size <= MAX_JSON_BYTES:
        return jinja.read_text(errors="replace")
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        data = read_json(tc)
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            for item in template:
                if isinstance(item, dict) and item.get("name") == "default":
                    return str(item.get("template"))
    return None

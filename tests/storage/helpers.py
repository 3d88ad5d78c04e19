"""Builders of small model files and datasets for storage tests (no real model needed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def write_gguf(
    path: Path,
    *,
    num_tensors: int = 4,
    elements: int = 4096,
    seed: int = 0,
    extra: dict[str, float | int] | None = None,
) -> Path:
    """A valid llama-architecture GGUF with random F32 tensors (num_tensors * elements * 4 bytes);
    `extra` metadata: float values as FLOAT32, ints as INT32 (as llama.cpp writes sampling keys)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(num_tensors)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    for key, value in (extra or {}).items():
        if isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_int32(key, value)
    for i in range(num_tensors):
        w.add_tensor(f"blk.{i}.weight", rng.standard_normal(elements, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A safetensors file with zeroed tensors {name: (dtype, shape)}."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


def write_hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8})
    )
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "chat_template": "{{ messages }}"})
    )
    write_safetensors(folder / "model.safetensors", {"a": ("F32", [4, 8]), "b": ("BF16", [8])})
    return folder


def write_chat_jsonl(path: Path, num_records: int = 3) -> Path:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        )
        for i in range(num_records)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def flip_byte(path: Path, offset: int = -1) -> None:
    """Flip one byte of a stored (read-only) blob, as a disk error would."""
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(offset, 2 if offset < 0 else 0)
        pos = f.tell()
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))

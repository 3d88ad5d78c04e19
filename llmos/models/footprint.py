"""How much host memory a model takes: estimated from its file before loading, measured after.

The estimate is the load peak, read from the tensor directory alone (no weight is read):
`LOAD_PEAK_FACTOR` x every weight as float32 (the loader decodes each tensor to float32, and the
decoded copy, the codec's scratch and the packed form exist together), plus the KV pool and swap
area the engine preallocates. Measured peaks of RSS growth while loading, with a 256 MiB KV pool:
SmolLM2 (513 MiB as float32) 1203 MiB, Gemma 3 270M (1024 MiB as float32) 2475 MiB, i.e. 1.8x
and 2.2x the float32 weights after the pool; the factor keeps a margin above both. The
measurement walks a loaded model's objects and adds every distinct tensor storage it holds (what
stays resident: SmolLM2 with that pool holds 358 MiB, Gemma 797 MiB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmos.storage.formats import gguf as gguf_format
from llmos.storage.formats import hf_folder

FLOAT32_BYTES = 4
LOAD_PEAK_FACTOR = 2.5


def estimate_load_bytes(path: str | Path, kv_cache_bytes: int, swap_bytes: int) -> int:
    """The most memory loading the model at `path` takes (see the module docstring)."""
    num_weights = estimate_weight_bytes(path) // FLOAT32_BYTES
    return load_bytes_for(num_weights, kv_cache_bytes, swap_bytes)


def load_bytes_for(num_weights: int, kv_cache_bytes: int, swap_bytes: int) -> int:
    """The load peak of a model with `num_weights` weight elements (a manifest's `parameters`)."""
    return int(LOAD_PEAK_FACTOR * num_weights * FLOAT32_BYTES) + kv_cache_bytes + swap_bytes


def estimate_weight_bytes(path: str | Path) -> int:
    """Bytes of every weight of the model at `path` (a .gguf file or an HF folder) as float32."""
    path = Path(path)
    if path.is_dir():
        return hf_folder.read_folder(path).parameters * FLOAT32_BYTES
    tensors = gguf_format.read_header(path).tensors.values()
    return sum(t.num_elements for t in tensors) * FLOAT32_BYTES


def tensor_bytes(root: Any) -> int:
    """Bytes of the distinct tensor storages reachable from `root` through attributes, slots,
    lists, tuples and dicts (shared storages count once)."""
    seen_objects: set[int] = set()
    seen_storages: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects or obj is None or isinstance(obj, str | bytes | int | float):
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen_storages:
                seen_storages.add(storage.data_ptr())
                total += storage.nbytes()
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            for slot in getattr(type(obj), "__slots__", ()):
                stack.append(getattr(obj, slot, None))
    return total

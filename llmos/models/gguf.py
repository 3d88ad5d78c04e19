"""GGUF files: tensor dequantization and GGUF -> ModelConfig / HF names, over the one header parser.

Invariants: the header, metadata and tensor directory are parsed and bounds-checked only by
``llmos.storage.formats.gguf`` (the reader the registry uses too), and the architecture, context
length and chat template come from its ``model_facts``; every returned weight carries its Hugging
Face transformers name and torch shape ``[out_features, in_features]``, with llama-arch Q/K rows
un-permuted and Gemma norms in HF convention (``x * (1 + w)``).

The header is not parsed with ``gguf.GGUFReader``, which builds one numpy view per array element
(12 s for Gemma 3's 262k-token vocabulary) and trusts header sizes; the ``gguf`` package still
supplies the type tables and ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from llmos.errors import ModelLoadError
from llmos.models.config import ModelConfig, family_of
from llmos.ops.linear import QuantizedMatrix
from llmos.storage.formats import gguf as gguf_format
from llmos.storage.formats.facts import ModelFacts
from llmos.storage.formats.gguf import GgufTensor

# Tensor types we can turn into float tensors (the codecs come from gguf.quants).
SUPPORTED_TYPES = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q2_K,
        GGMLQuantizationType.Q3_K,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K,
        GGMLQuantizationType.Q6_K,
    }
)


@dataclass
class GGUFFile:
    """A checked GGUF header plus a read-only map of the file for the tensor data."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GgufTensor]
    _data: np.ndarray = field(repr=False)

    @property
    def architecture(self) -> str:
        return gguf_format.architecture(self.metadata)

    @property
    def facts(self) -> ModelFacts:
        """Architecture, context length and chat template, as the registry's manifest has them."""
        return gguf_format.model_facts(self.metadata)

    def raw(self, info: GgufTensor) -> np.ndarray:
        """The tensor's bytes as uint8 rows ``[rows, row_bytes]`` (a view of the mapped file)."""
        block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
        cols = info.shape[-1] if info.shape else 1
        row_bytes = cols // block_size * type_size
        flat = self._data[info.data_offset : info.data_offset + info.num_bytes]
        return flat.reshape(-1, row_bytes)

    def dequantize(self, info: GgufTensor) -> np.ndarray:
        """The tensor as float32 numpy in torch shape."""
        if info.ggml_type not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{self.path.name}: tensor {info.name!r} has GGML type {info.ggml_type.name}, "
                "which llmos cannot dequantize",
                hint="supported: " + ", ".join(sorted(t.name for t in SUPPORTED_TYPES)),
            )
        rows = self.raw(info)
        if info.ggml_type == GGMLQuantizationType.F32:
            out = rows.view(np.float32)
        elif info.ggml_type == GGMLQuantizationType.F16:
            out = rows.view(np.float16).astype(np.float32)
        else:
            out = gguf_dequantize(rows, info.ggml_type)
        out = np.asarray(out, dtype=np.float32).reshape(info.shape)
        return out if out.flags.writeable else out.copy()  # F32 views the read-only map


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and check a GGUF header (v2/v3, little-endian) and map the file for tensor reads."""
    path = Path(path)
    header = gguf_format.read_header(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    return GGUFFile(path, header.version, header.metadata, header.tensors, data)


# --- GGUF -> ModelConfig ---------------------------------------------------------------------

GEMMA3_SLIDING_WINDOW_PATTERN = 6  # every 6th layer is global (transformers' Gemma3TextConfig)


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    """ModelConfig from GGUF metadata; raises ModelLoadError for an unsupported architecture."""
    facts = gf.facts
    arch = facts.architecture
    family = family_of(arch, f"{gf.path.name} (GGUF)")
    meta = gf.metadata

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
        if get(key) is None:
            raise ModelLoadError(f"{gf.path.name}: GGUF metadata lacks {arch}.{key}")
    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    head_dim = int(
        get("attention.key_length") or get("rope.dimension_count") or hidden // num_heads
    )
    num_layers = int(get("block_count"))
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = get("vocab_size") or (len(tokens) if tokens else None)
    if vocab_size is None:
        vocab_size = gf.tensors["token_embd.weight"].shape[0]
    if "rope_freqs.weight" in gf.tensors:
        raise ModelLoadError(
            f"{gf.path.name}: this GGUF stores Llama-3.1-style rope frequency factors "
            "(rope_freqs.weight), which llmos does not read yet",
            hint="load the model's Hugging Face folder instead",
        )
    cfg = ModelConfig(
        architecture=family,
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(get("attention.head_count_kv") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(get),
        max_position_embeddings=facts.context_length,
        tie_word_embeddings="output.weight" not in gf.tensors,
        attention_bias="blk.0.attn_q.bias" in gf.tensors,
        bos_token_id=_opt_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_ids=[int(meta["tokenizer.ggml.eos_token_id"])]
        if "tokenizer.ggml.eos_token_id" in meta
        else [],
        pad_token_id=_opt_int(meta.get("tokenizer.ggml.padding_token_id")),
    )
    if family == "gemma3":
        cfg.hidden_act = "gelu_pytorch_tanh"
        cfg.rope_local_theta = 10000.0
        window = get("attention.sliding_window")
        cfg.sliding_window = int(window) if window is not None else None
        cfg.layer_types = [
            "full" if (i + 1) % GEMMA3_SLIDING_WINDOW_PATTERN == 0 else "sliding"
            for i in range(num_layers)
        ]
        cfg.query_pre_attn_scalar = float(head_dim)
        cfg.final_logit_softcapping = _opt_float(get("final_logit_softcapping"))
        cfg.attn_logit_softcapping = _opt_float(get("attn_logit_softcapping"))
    return cfg


def _rope_scaling(get: Callable[..., Any]) -> dict[str, Any] | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind in (None, "none") or not factor:
        return None
    scaling: dict[str, Any] = {"rope_type": str(kind), "factor": float(factor)}
    original = get("rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --- GGUF tensor names -> HF names -----------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
# Gemma 3 has four norms per block; llama.cpp's ffn_norm is its pre-feedforward norm.
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def hf_name(gguf_name: str, arch: str) -> str | None:
    """The transformers name of a GGUF tensor, or None if llmos has no use for it."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m is None:
        return None
    table = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    part = table.get(m.group(2))
    return None if part is None else f"model.layers.{m.group(1)}.{part}.{m.group(3)}"


def unpermute_rotary(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved -> HF ``rotate_half`` layout).

    The converter regroups each head's rows from ``[2, d/2]`` to ``[d/2, 2]``; we swap back.
    w: [num_heads * head_dim, ...] -> same shape.
    """
    rows = w.shape[0]
    return (
        w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
    )


# Types whose dequantization is (d * q) + m per 32-element block (d, m float16, m = 0 for the
# _0 types). They are decoded here, in torch, into a QuantizedMatrix whose `dequantize()` is the
# float32 tensor gguf's own codec computes (tests/models/test_gguf.py checks the bits), and can
# stay compressed in memory (llmos.ops.linear). Value: (has m, has 5th bits, zero).
_GROUP_TYPES = {
    GGMLQuantizationType.Q4_0: (False, False, 8),
    GGMLQuantizationType.Q4_1: (True, False, 0),
    GGMLQuantizationType.Q5_0: (False, True, 16),
    GGMLQuantizationType.Q5_1: (True, True, 0),
}


_DECODED_TYPES = frozenset({*_GROUP_TYPES, GGMLQuantizationType.Q8_0})


def _decode_group(gf: GGUFFile, info: GgufTensor) -> QuantizedMatrix | None:
    """A 2-D Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensor as integer codes and float32 group scales."""
    if info.ggml_type not in _DECODED_TYPES or len(info.shape) != 2 or info.shape[1] % 32:
        return None
    n = info.shape[0]
    blocks = torch.from_numpy(gf.raw(info).copy()).view(n, info.shape[1] // 32, -1)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    if info.ggml_type == GGMLQuantizationType.Q8_0:
        codes = blocks[..., 2:].contiguous().view(torch.int8)
        return QuantizedMatrix(codes.reshape(n, -1), d, torch.zeros_like(d))
    has_min, has_high, zero = _GROUP_TYPES[info.ggml_type]
    at = 4 if has_min else 2
    m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float() if has_min else None
    if has_high:
        high = blocks[..., at : at + 4].contiguous().view(torch.int32)  # bit i -> element i
        at += 4
    qs = blocks[..., at:].to(torch.int16)  # element j: low nibble, element j + 16: high nibble
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
    if has_high:
        bits = (high >> torch.arange(32, dtype=torch.int32)) & 1
        codes = codes | (bits.to(torch.int16) << 4)
    codes = (codes - zero).to(torch.int8).reshape(n, -1)
    return QuantizedMatrix(codes, d, torch.zeros_like(d) if m is None else m)


def iter_hf_weights(
    gf: GGUFFile,
    cfg: ModelConfig,
    dtype: torch.dtype = torch.float32,
    quantized: dict[str, QuantizedMatrix] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every weight, dequantized to ``dtype``, one at a time.

    With a `quantized` dict (float32 only), block-quantized matrices are also put there in their
    stored form, which dequantizes to exactly the yielded tensor."""
    arch = gf.architecture
    for info in gf.tensors.values():
        name = hf_name(info.name, arch)
        if name is None:
            raise ModelLoadError(
                f"{gf.path.name}: unexpected tensor {info.name!r} for architecture {arch!r}",
                hint="this GGUF variant is not supported by llmos",
            )
        qm = _decode_group(gf, info)
        w = qm.dequantize() if qm is not None else torch.from_numpy(gf.dequantize(info))
        if quantized is None or dtype != torch.float32:
            qm = None
        heads = None
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = cfg.num_heads
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = cfg.num_kv_heads
        if heads is not None:
            w = unpermute_rotary(w, heads)
            if qm is not None:
                qm = QuantizedMatrix(*(unpermute_rotary(t, heads) for t in (qm.q, qm.a, qm.c)))
        if qm is not None and quantized is not None:
            quantized[name] = qm
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w); HF keeps w
        yield name, w.to(dtype).contiguous()


def load_gguf_weights(
    gf: GGUFFile,
    cfg: ModelConfig,
    dtype: torch.dtype = torch.float32,
    quantized: dict[str, QuantizedMatrix] | None = None,
) -> dict[str, torch.Tensor]:
    """All weights of a GGUF file under HF names (see module docstring for the conventions);
    `quantized`, if given, receives the block-quantized ones in stored form (iter_hf_weights)."""
    weights = dict(iter_hf_weights(gf, cfg, dtype, quantized))
    _check_weights(gf, cfg, weights)
    return weights


def _check_weights(gf: GGUFFile, cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    expected = {
        "model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size),
        "model.layers.0.self_attn.q_proj.weight": (cfg.num_heads * cfg.head_dim, cfg.hidden_size),
        "model.layers.0.self_attn.k_proj.weight": (
            cfg.num_kv_heads * cfg.head_dim,
            cfg.hidden_size,
        ),
        "model.layers.0.mlp.gate_proj.weight": (cfg.intermediate_size, cfg.hidden_size),
        "model.norm.weight": (cfg.hidden_size,),
    }
    for name, shape in expected.items():
        got = tuple(weights[name].shape) if name in weights else None
        if got != shape:
            raise ModelLoadError(
                f"{gf.path.name}: tensor {name} has shape {got}, expected {shape} from the metadata"
            )
    last = f"model.layers.{cfg.num_layers - 1}.mlp.down_proj.weight"
    if last not in weights:
        raise ModelLoadError(f"{gf.path.name}: missing {last} ({cfg.num_layers} layers declared)")

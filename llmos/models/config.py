"""ModelConfig: the architecture facts a model family needs, read from GGUF metadata or config.json.

One plain dataclass for every family; fields a family does not use keep their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmos.errors import ModelLoadError

# The family (ModelConfig.architecture, the key of models.registry) that runs each architecture a
# file declares (GGUF general.architecture, HF model_type; see llmos.storage.formats).
FAMILIES: dict[str, str] = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "smollm": "llama", "smollm2": "llama",
    "gemma3": "gemma3", "gemma3_text": "gemma3",
}  # fmt: skip


def family_of(architecture: str, source: str) -> str:
    """The family running `architecture`; ModelLoadError naming `source` if there is none."""
    family = FAMILIES.get(architecture)
    if family is None:
        raise ModelLoadError(
            f"{source}: architecture {architecture!r} is not supported",
            hint="supported: " + ", ".join(sorted(FAMILIES)),
        )
    return family


@dataclass(slots=True)
class ModelConfig:
    architecture: str  # the family: "llama" or "gemma3" (FAMILIES maps what files declare)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF-style rope_scaling dict, e.g. {"rope_type": "llama3", "factor": 8.0,
    # "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    # or {"rope_type": "linear", "factor": 8.0}; None = plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2-style)
    hidden_act: str = "silu"  # "silu" (SwiGLU) or "gelu_pytorch_tanh" (Gemma)
    # gemma3 only
    rope_local_theta: float = 10000.0  # RoPE base of sliding-window layers
    sliding_window: int | None = None  # window size of local layers
    layer_types: list[str] = field(default_factory=list)  # per layer: "full" | "sliding"
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 when set
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    # tokens
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None

    @property
    def attn_scale(self) -> float:
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return float(base) ** -0.5

    def is_sliding(self, layer_idx: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer_idx] == "sliding"

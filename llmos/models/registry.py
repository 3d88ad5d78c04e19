"""Model families by architecture name: adding one is one file plus one line here."""

from __future__ import annotations

from typing import Protocol

import torch

from llmos.errors import ModelLoadError
from llmos.models.config import ModelConfig
from llmos.ops.cpu import AttentionMetadata, KVCache
from llmos.ops.linear import Linear, QuantizedMatrix


class CausalLM(Protocol):
    config: ModelConfig

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor: ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def gemm_weights(self) -> list[Linear]: ...


def _families() -> dict[str, type]:
    from llmos.models.gemma3 import Gemma3ForCausalLM
    from llmos.models.llama import LlamaForCausalLM

    return {"llama": LlamaForCausalLM, "gemma3": Gemma3ForCausalLM}


def build_model(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    quantized: dict[str, QuantizedMatrix] | None = None,
) -> CausalLM:
    """The model for `config.architecture`. Matrices found in `quantized` (the loader's stored
    GGUF form, bit-exact to `weights`) stay quantized in memory."""
    families = _families()
    cls = families.get(config.architecture)
    if cls is None:
        known = ", ".join(sorted(families))
        raise ModelLoadError(
            f"Unsupported architecture {config.architecture!r}; llmos runs: {known}."
        )
    model: CausalLM = cls(config, weights, device, quantized)
    return model

"""A tiny random llama-family model for kernel tests (weights drawn in a fixed order)."""

from __future__ import annotations

import torch

from llmos.models.config import ModelConfig
from llmos.models.registry import CausalLM, build_model

HEAD_DIM = 16


def tiny_llama(
    vocab_size: int,
    *,
    seed: int = 0,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
) -> CausalLM:
    torch.manual_seed(seed)
    V, D, F = vocab_size, hidden, intermediate
    q, kv = heads * HEAD_DIM, kv_heads * HEAD_DIM
    w = {"model.embed_tokens.weight": torch.randn(V, D) * 0.05, "model.norm.weight": torch.ones(D)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(D)
        w[p + "post_attention_layernorm.weight"] = torch.ones(D)
        for name, shape in [("q", (q, D)), ("k", (kv, D)), ("v", (kv, D)), ("o", (D, q))]:
            w[p + f"self_attn.{name}_proj.weight"] = torch.randn(shape) * 0.1
        w[p + "mlp.gate_proj.weight"] = torch.randn(F, D) * 0.1
        w[p + "mlp.up_proj.weight"] = torch.randn(F, D) * 0.1
        w[p + "mlp.down_proj.weight"] = torch.randn(D, F) * 0.1
    cfg = ModelConfig(
        architecture="llama",
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        eos_token_ids=[2],
    )
    return build_model(cfg, w)

"""Gemma 3 (text): what sets it apart from llama is all here.

Scaled embeddings (x sqrt(hidden)), RMSNorm as x * (1 + w), q/k norms, four norms per layer
(pre/post attention, pre/post MLP), GELU-tanh gated MLP, sliding-window layers interleaved with
global ones, each with its own RoPE base, optional logit soft-capping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmos.models.config import ModelConfig
from llmos.models.layers import RotaryTable, TokenIO, fused_linear, gated_mlp, rms_norm, take
from llmos.ops.cpu import AttentionMetadata, KVCache, paged_attention
from llmos.ops.linear import Linear, QuantizedMatrix


@dataclass(slots=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: Linear
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: Linear
    post_attn_norm: torch.Tensor
    pre_ffn_norm: torch.Tensor
    post_ffn_norm: torch.Tensor
    gate_up: Linear
    down: Linear
    is_sliding: bool


class Gemma3ForCausalLM:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        device: torch.device | str = "cpu",
        quantized: dict[str, QuantizedMatrix] | None = None,
    ) -> None:
        self.config = c = config
        quantized = quantized or {}
        self.tokens = TokenIO(weights, quantized, c.tie_word_embeddings, device)
        self.embed_scale = torch.tensor(c.hidden_size**0.5, dtype=torch.float32)
        self.norm = take(weights, "model.norm.weight").to(device)
        self.layers: list[_Layer] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."

            def w(name: str, p: str = p) -> torch.Tensor:
                return take(weights, p + name).to(device)

            def lin(*names: str, p: str = p) -> Linear:
                return fused_linear(weights, quantized, [p + n for n in names], device)

            self.layers.append(
                _Layer(
                    input_norm=w("input_layernorm.weight"),
                    qkv=lin(
                        "self_attn.q_proj.weight",
                        "self_attn.k_proj.weight",
                        "self_attn.v_proj.weight",
                    ),
                    q_norm=w("self_attn.q_norm.weight"),
                    k_norm=w("self_attn.k_norm.weight"),
                    o=lin("self_attn.o_proj.weight"),
                    post_attn_norm=w("post_attention_layernorm.weight"),
                    pre_ffn_norm=w("pre_feedforward_layernorm.weight"),
                    post_ffn_norm=w("post_feedforward_layernorm.weight"),
                    gate_up=lin("mlp.gate_proj.weight", "mlp.up_proj.weight"),
                    down=lin("mlp.down_proj.weight"),
                    is_sliding=c.is_sliding(i),
                )
            )
        max_pos = c.max_position_embeddings
        self.rope_global = RotaryTable(c.head_dim, c.rope_theta, c.rope_scaling, max_pos, device)
        self.rope_local = RotaryTable(c.head_dim, c.rope_local_theta, None, max_pos, device)
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> hidden states [T, hidden] (final norm applied)."""
        c = self.config
        eps = c.rms_norm_eps
        h = self.tokens.embed(input_ids) * self.embed_scale
        T = h.shape[0]
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.input_norm, eps, offset=1.0)
            q, k, v = layer.qkv(x).split([self.q_size, self.kv_size, self.kv_size], -1)
            q = rms_norm(q.view(T, c.num_heads, c.head_dim), layer.q_norm, eps, offset=1.0)
            k = rms_norm(k.view(T, c.num_kv_heads, c.head_dim), layer.k_norm, eps, offset=1.0)
            rope = self.rope_local if layer.is_sliding else self.rope_global
            q, k = rope.apply(q, positions), rope.apply(k, positions)
            v = v.reshape(T, c.num_kv_heads, c.head_dim)
            window = c.sliding_window if layer.is_sliding else None
            attn = paged_attention(
                q,
                k,
                v,
                kv.k[i],
                kv.v[i],
                meta,
                scale=c.attn_scale,
                sliding_window=window,
                softcap=c.attn_logit_softcapping,
            )
            h = h + rms_norm(layer.o(attn), layer.post_attn_norm, eps, offset=1.0)
            x = rms_norm(h, layer.pre_ffn_norm, eps, offset=1.0)
            x = gated_mlp(x, layer.gate_up, layer.down, c.hidden_act)
            h = h + rms_norm(x, layer.post_ffn_norm, eps, offset=1.0)
        return rms_norm(h, self.norm, eps, offset=1.0)

    def gemm_weights(self) -> list[Linear]:
        """One layer of each GEMM shape the forward pass runs (for row-padding calibration)."""
        layer = self.layers[0]
        return [layer.qkv, layer.o, layer.gate_up, layer.down, self.tokens.lm_head]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] (float32), soft-capped when configured."""
        logits = self.tokens.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

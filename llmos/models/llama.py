"""The llama family (Llama 2/3, SmolLM2, Mistral, Qwen2): RMSNorm, RoPE, GQA, SwiGLU.

Weights arrive under their HF names; q/k/v and gate/up are fused into one matrix each at load
time (fewer, larger GEMMs). Attention goes through the kernel's paged-attention interface.
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
    qkv: Linear  # hidden -> (H + 2 Hkv) * D, with the q/k/v bias when the family has one
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


class LlamaForCausalLM:
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
        self.norm = take(weights, "model.norm.weight").to(device)
        self.layers: list[_Layer] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = [a + f"{x}_proj.weight" for x in "qkv"]
            bias = [a + f"{x}_proj.bias" for x in "qkv"] if c.attention_bias else None
            self.layers.append(
                _Layer(
                    input_norm=take(weights, p + "input_layernorm.weight").to(device),
                    qkv=fused_linear(weights, quantized, qkv, device, bias),
                    o=fused_linear(weights, quantized, [a + "o_proj.weight"], device),
                    post_norm=take(weights, p + "post_attention_layernorm.weight").to(device),
                    gate_up=fused_linear(
                        weights,
                        quantized,
                        [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
                        device,
                    ),
                    down=fused_linear(weights, quantized, [p + "mlp.down_proj.weight"], device),
                )
            )
        self.rope = RotaryTable(
            c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings, device
        )
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> hidden states [T, hidden] (final norm applied)."""
        c = self.config
        h = self.tokens.embed(input_ids)
        T = h.shape[0]
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.input_norm, c.rms_norm_eps)
            qkv = layer.qkv(x)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.rope.apply(q.view(T, c.num_heads, c.head_dim), positions)
            k = self.rope.apply(k.view(T, c.num_kv_heads, c.head_dim), positions)
            v = v.reshape(T, c.num_kv_heads, c.head_dim)
            attn = paged_attention(q, k, v, kv.k[i], kv.v[i], meta, scale=c.attn_scale)
            h = h + layer.o(attn)
            x = rms_norm(h, layer.post_norm, c.rms_norm_eps)
            h = h + gated_mlp(x, layer.gate_up, layer.down, c.hidden_act)
        return rms_norm(h, self.norm, c.rms_norm_eps)

    def gemm_weights(self) -> list[Linear]:
        """One layer of each GEMM shape the forward pass runs (for row-padding calibration)."""
        layer = self.layers[0]
        return [layer.qkv, layer.o, layer.gate_up, layer.down, self.tokens.lm_head]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] (float32)."""
        return self.tokens.lm_head(hidden).float()

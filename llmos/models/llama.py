"""The llama family (Llama 2/3, SmolLM2, Mistral, Qwen2): RMSNorm, RoPE, GQA, SwiGLU.

Weights arrive under their HF names; q/k/v and gate/up are fused into one matrix each at load
time (fewer, larger GEMMs). Attention goes through the kernel's paged-attention interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmos.kernel.backends.cpu import AttentionMetadata, KVCache, paged_attention
from llmos.models.config import ModelConfig
from llmos.models.layers import RotaryTable, gated_mlp, rms_norm


@dataclass(slots=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(H + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _take(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise KeyError(f"checkpoint has no tensor {name!r}") from None


class LlamaForCausalLM:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        c = config
        self.embed = _take(weights, "model.embed_tokens.weight").to(device)
        self.norm = _take(weights, "model.norm.weight").to(device)
        head = weights.get("lm_head.weight")
        self.lm_head = self.embed if head is None or c.tie_word_embeddings else head.to(device)
        self.layers: list[_Layer] = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = torch.cat([_take(weights, a + f"{x}_proj.weight") for x in "qkv"])
            bias = None
            if c.attention_bias:
                bias = torch.cat([_take(weights, a + f"{x}_proj.bias") for x in "qkv"]).to(device)
            gate_up = torch.cat(
                [
                    _take(weights, p + "mlp.gate_proj.weight"),
                    _take(weights, p + "mlp.up_proj.weight"),
                ]
            )
            self.layers.append(
                _Layer(
                    input_norm=_take(weights, p + "input_layernorm.weight").to(device),
                    qkv=qkv.contiguous().to(device),
                    qkv_bias=bias,
                    o=_take(weights, a + "o_proj.weight").to(device),
                    post_norm=_take(weights, p + "post_attention_layernorm.weight").to(device),
                    gate_up=gate_up.contiguous().to(device),
                    down=_take(weights, p + "mlp.down_proj.weight").to(device),
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
        h = F.embedding(input_ids, self.embed)
        T = h.shape[0]
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.input_norm, c.rms_norm_eps)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.rope.apply(q.view(T, c.num_heads, c.head_dim), positions)
            k = self.rope.apply(k.view(T, c.num_kv_heads, c.head_dim), positions)
            v = v.reshape(T, c.num_kv_heads, c.head_dim)
            attn = paged_attention(q, k, v, kv.k[i], kv.v[i], meta, scale=c.attn_scale)
            h = h + F.linear(attn, layer.o)
            x = rms_norm(h, layer.post_norm, c.rms_norm_eps)
            h = h + gated_mlp(x, layer.gate_up, layer.down, c.hidden_act)
        return rms_norm(h, self.norm, c.rms_norm_eps)

    def gemm_weights(self) -> list[torch.Tensor]:
        """One weight of each GEMM shape the forward pass runs (for row-padding calibration)."""
        layer = self.layers[0]
        return [layer.qkv, layer.o, layer.gate_up, layer.down, self.lm_head]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] (float32)."""
        return F.linear(hidden, self.lm_head).float()

"""Pieces shared by the model families: RMSNorm, rotary embeddings, gated MLPs.

Every op here is row-wise (no reduction across tokens), so a token's result does not depend on
which other tokens share its batch; see docs/design/kernel.md ("batch invariance").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from llmos.ops.linear import Linear, QuantizedMatrix


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, offset: float = 0.0
) -> torch.Tensor:
    """x: [..., D] -> [..., D]; computes x / rms(x) * (offset + weight) in float32."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return (x32 * (offset + weight.float())).to(x.dtype)
    return weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] with linear or llama3-style scaling applied."""
    # float32 throughout, as HF computes it, so positions rotate by bit-identical angles
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif kind != "default":
        raise ValueError(f"unsupported rope scaling type {kind!r}")
    return inv_freq.float()


class RotaryTable:
    """cos/sin for every position up to `max_positions`, computed once (HF's rotate-half form)."""

    def __init__(
        self,
        head_dim: int,
        theta: float,
        scaling: dict[str, Any] | None,
        max_positions: int,
        device: torch.device | str = "cpu",
    ) -> None:
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(device)
        self.sin = emb.sin().to(device)

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D], positions: [T] -> [T, H, D] rotated."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


def take(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise KeyError(f"checkpoint has no tensor {name!r}") from None


def fused_linear(
    weights: dict[str, torch.Tensor],
    quantized: dict[str, QuantizedMatrix],
    names: list[str],
    device: torch.device | str,
    bias_names: list[str] | None = None,
) -> Linear:
    """One Linear whose output rows are those of `names` stacked in order (fewer, larger GEMMs).

    Weights stay in their stored quantized form when every part has one."""
    dense = [take(weights, n) for n in names]
    if all(n in quantized for n in names):
        parts = [quantized[n] for n in names]
        weight: torch.Tensor | QuantizedMatrix = (
            parts[0] if len(parts) == 1 else QuantizedMatrix.cat(parts)
        )
    else:
        weight = dense[0] if len(dense) == 1 else torch.cat(dense)
    bias = torch.cat([take(weights, n) for n in bias_names]) if bias_names else None
    return Linear(weight, bias, device)


class TokenIO:
    """The LM head and the embedding table. A tied head doubles as the table, so the largest
    matrix is held once (in its quantized form when it has one)."""

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        quantized: dict[str, QuantizedMatrix],
        is_tied: bool,
        device: torch.device | str,
    ) -> None:
        embed = "model.embed_tokens.weight"
        head = embed if is_tied or "lm_head.weight" not in weights else "lm_head.weight"
        self.lm_head = fused_linear(weights, quantized, [head], device)
        self.table = None if head == embed else take(weights, embed).to(device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] -> [T, hidden] float32."""
        if self.table is None:
            return self.lm_head.rows(input_ids)
        return F.embedding(input_ids, self.table)


def gated_mlp(x: torch.Tensor, gate_up: Linear, down: Linear, act: str) -> torch.Tensor:
    """x: [T, D]; gate_up: D -> 2I (gate rows then up rows); down: I -> D; -> [T, D]."""
    gu = gate_up(x)
    gate, up = gu.chunk(2, dim=-1)
    if act == "silu":
        h = F.silu(gate) * up
    elif act in ("gelu_pytorch_tanh", "gelu_tanh"):
        h = F.gelu(gate, approximate="tanh") * up
    else:
        raise ValueError(f"unsupported activation {act!r}")
    return down(h)

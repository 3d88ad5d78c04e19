"""A dense, autograd-friendly forward pass per model family, for training.

The inference models (`llmos.models.llama`, `llmos.models.gemma3`) run a paged KV cache on
packed native GEMM panels, which autograd cannot see through. Here the same maths runs on
`torch.nn` modules whose parameter names are the checkpoint's HF names (so `state_dict()` is a
loadable checkpoint), over packed rows: several sequences share a row, each attending only to
itself. RMSNorm, RoPE and the gated MLP are the models' own (`llmos.models.layers`), so the two
forwards agree to float32 rounding (tests/train/test_model.py holds them within 1e-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmos.models.config import ModelConfig
from llmos.models.layers import RotaryTable, rms_norm

IGNORE = -100  # label of a token that carries no loss (prompt, padding, sequence starts)


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight); gemma3 stores its norms as weight - 1 (offset 1)."""

    def __init__(self, dim: int, eps: float, offset: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, offset=self.offset)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        D, H, Hkv = c.hidden_size, c.num_heads, c.num_kv_heads
        self.q_proj = nn.Linear(D, H * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(D, Hkv * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(D, Hkv * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(H * c.head_dim, D, bias=False)
        self.is_gemma = c.architecture == "gemma3"
        if self.is_gemma:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, 1.0)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, 1.0)
        self.config = c
        self.window = c.sliding_window if c.is_sliding(layer_idx) else None

    def forward(self, x: torch.Tensor, rope: RotaryTable, batch: PackedRows) -> torch.Tensor:
        """x: [B, T, D] -> [B, T, D]."""
        c = self.config
        B, T, _ = x.shape
        q = self.q_proj(x).view(B * T, c.num_heads, c.head_dim)
        k = self.k_proj(x).view(B * T, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).view(B, T, c.num_kv_heads, c.head_dim)
        if self.is_gemma:
            q, k = self.q_norm(q), self.k_norm(k)
        pos = batch.positions.reshape(-1)
        q = rope.apply(q, pos).view(B, T, c.num_heads, c.head_dim).transpose(1, 2)
        k = rope.apply(k, pos).view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = v.transpose(1, 2)
        group = c.num_heads // c.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        mask = batch.attention_mask(self.window)  # [B, 1, T, T], True = may attend
        if c.attn_logit_softcapping:
            cap = c.attn_logit_softcapping
            scores = torch.tanh((q @ k.transpose(-1, -2)) * c.attn_scale / cap) * cap
            probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=c.attn_scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.act = c.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.act == "silu":
            gate = F.silu(gate)
        elif self.act in ("gelu_pytorch_tanh", "gelu_tanh"):
            gate = F.gelu(gate, approximate="tanh")
        else:
            raise ValueError(f"unsupported activation {self.act!r}")
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Llama: pre-norm residual blocks. Gemma3: also post-norms on each branch ("sandwich")."""

    def __init__(self, c: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        eps, offset = c.rms_norm_eps, 1.0 if c.architecture == "gemma3" else 0.0
        self.self_attn = Attention(c, layer_idx)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, eps, offset)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, eps, offset)
        self.is_gemma = c.architecture == "gemma3"
        if self.is_gemma:
            self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, eps, offset)
            self.post_feedforward_layernorm = RMSNorm(c.hidden_size, eps, offset)

    def forward(self, h: torch.Tensor, rope: RotaryTable, batch: PackedRows) -> torch.Tensor:
        if not self.is_gemma:
            h = h + self.self_attn(self.input_layernorm(h), rope, batch)
            return h + self.mlp(self.post_attention_layernorm(h))
        attn = self.self_attn(self.input_layernorm(h), rope, batch)
        h = h + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(h))
        return h + self.post_feedforward_layernorm(mlp)


class PackedRows:
    """A batch of packed rows: input_ids, positions, seq_ids, labels, all [B, T].

    `seq_ids` numbers the sequences within a row (-1 marks padding at a row's end); positions
    restart at 0 with each sequence; `labels[b, t]` is the token to predict at t or IGNORE.
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        seq_ids: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        self.input_ids, self.positions, self.seq_ids, self.labels = (
            input_ids,
            positions,
            seq_ids,
            labels,
        )
        self._masks: dict[int | None, torch.Tensor] = {}

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        return int((self.seq_ids >= 0).sum())

    def attention_mask(self, window: int | None) -> torch.Tensor:
        """[B, 1, T, T] bool: same sequence, causal, and within `window` when given."""
        if window not in self._masks:
            s, p = self.seq_ids, self.positions
            same = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] >= 0)
            causal = p[:, None, :] <= p[:, :, None]
            mask = same & causal
            # padding rows attend to themselves so their softmax stays finite
            mask |= torch.eye(s.shape[1], dtype=torch.bool)[None]
            if window is not None:
                mask &= (p[:, :, None] - p[:, None, :]) < window
            self._masks[window] = mask[:, None]
        return self._masks[window]


class Backbone(nn.Module):
    """The `model.` prefix of the checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        offset = 1.0 if c.architecture == "gemma3" else 0.0
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, offset)
        self.windows = [c.sliding_window if c.is_sliding(i) else None for i in range(c.num_layers)]


class TrainableLM(nn.Module):
    """llama- or gemma3-family causal LM as `nn.Module`s named as the HF checkpoint names them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.architecture not in ("llama", "gemma3"):
            raise ValueError(f"no training forward for family {c.architecture!r}")
        is_gemma = c.architecture == "gemma3"
        self.model = Backbone(c)
        self.lm_head: nn.Linear | None = None
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.embed_scale = c.hidden_size**0.5 if is_gemma else 1.0
        max_pos = c.max_position_embeddings
        with torch.device("cpu"):  # constants, real even when the modules are built on meta
            self.rope = RotaryTable(c.head_dim, c.rope_theta, c.rope_scaling, max_pos)
            self.rope_local = (
                RotaryTable(c.head_dim, c.rope_local_theta, None, max_pos)
                if is_gemma
                else self.rope
            )

    @classmethod
    def from_weights(
        cls, config: ModelConfig, weights: dict[str, torch.Tensor], *, copy: bool = True
    ) -> TrainableLM:
        """The model with `weights` (HF names, float) as its parameters, float32.

        `copy=False` shares float32 tensors with `weights` (a frozen LoRA base costs no second
        copy); full fine-tuning copies so the caller's weights are not trained in place."""
        with torch.device("meta"):
            model = cls(config)
        wanted = model.state_dict().keys()
        missing = sorted(set(wanted) - set(weights))
        if missing:
            raise KeyError(f"checkpoint has no tensor {missing[0]!r} ({len(missing)} missing)")
        state = {}
        for name in wanted:
            t = weights[name].float()
            state[name] = t.clone() if copy and t is weights[name] else t
        model.load_state_dict(state, assign=True)
        return model

    @property
    def head_weight(self) -> torch.Tensor:
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        return head.weight

    def forward(self, batch: PackedRows) -> torch.Tensor:
        """batch: [B, T] rows -> hidden states [B, T, hidden] (final norm applied)."""
        h = self.model.embed_tokens(batch.input_ids)
        if self.embed_scale != 1.0:
            # the paged model multiplies by a float32 tensor; match its rounding
            h = h * torch.tensor(self.embed_scale, dtype=torch.float32)
        for layer, window in zip(self.model.layers, self.model.windows, strict=True):
            h = layer(h, self.rope if window is None else self.rope_local, batch)
        return self.model.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., hidden] -> logits [..., vocab], soft-capped when the family does."""
        logits = F.linear(hidden, self.head_weight)
        cap = self.config.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits

    def loss_sum(self, batch: PackedRows, chunk_tokens: int = 1024) -> torch.Tensor:
        """Summed next-token cross entropy over the labelled tokens of `batch` (scalar).

        Only labelled positions reach the LM head, `chunk_tokens` at a time, each chunk's
        logits recomputed in the backward pass (activation checkpointing): peak logit memory is
        chunk_tokens x vocab instead of B x T x vocab."""
        hidden = self.forward(batch)
        keep = batch.labels != IGNORE
        h, targets = hidden[keep], batch.labels[keep]
        total = hidden.sum() * 0.0  # zero, but in the graph: a batch without targets still runs
        for start in range(0, h.shape[0], chunk_tokens):
            part = slice(start, start + chunk_tokens)
            total = total + checkpoint(self._chunk_ce, h[part], targets[part], use_reentrant=False)
        return total

    def _chunk_ce(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(h).float(), targets, reduction="sum")


def single_row(token_ids: list[int]) -> PackedRows:
    """One sequence as a batch of one row (no labels)."""
    ids = torch.tensor([token_ids])
    T = len(token_ids)
    return PackedRows(
        ids,
        torch.arange(T)[None],
        torch.zeros(1, T, dtype=torch.long),
        torch.full((1, T), IGNORE),
    )

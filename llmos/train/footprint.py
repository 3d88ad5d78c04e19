"""How much memory a training run needs, from the model's config and the training config alone,
so a job can reserve it (or be refused with these numbers) before it loads anything.

Terms, all float32: the weights (4 B each; a LoRA base is shared with the loaded model, so it is
counted once, here); per trainable parameter a gradient (4 B) and AdamW's two moments (8 B); the
activations autograd keeps for one micro-batch (per token per layer: the residual stream, norms,
q/k/v and attention output, the MLP's gate, up, activation and product, and the attention
probabilities over its row, ACTIVATION_MARGIN on top for what this count misses); and one loss
chunk's logits with their softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.models.config import ModelConfig
from llmos.train.trainer import TrainConfig

FLOAT32_BYTES = 4
ACTIVATION_MARGIN = 1.5


@dataclass(slots=True, frozen=True)
class TrainingFootprint:
    num_params: int
    num_trainable: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes


def projection_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each LoRA-targetable projection of one layer."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    D, F = c.hidden_size, c.intermediate_size
    return {
        "q_proj": (q, D), "k_proj": (kv, D), "v_proj": (kv, D), "o_proj": (D, q),
        "gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F),
    }  # fmt: skip


def num_params(c: ModelConfig) -> int:
    """Parameters of the model (a tied head counted once)."""
    shapes = projection_shapes(c)
    per_layer = sum(o * i for o, i in shapes.values())
    norms = 4 if c.architecture == "gemma3" else 2
    per_layer += norms * c.hidden_size
    if c.architecture == "gemma3":
        per_layer += 2 * c.head_dim  # q_norm, k_norm
    if c.attention_bias:
        per_layer += shapes["q_proj"][0] + 2 * shapes["k_proj"][0]
    embed = c.vocab_size * c.hidden_size
    head = 0 if c.tie_word_embeddings else embed
    return embed + head + c.hidden_size + c.num_layers * per_layer


def num_lora_params(c: ModelConfig, rank: int, targets: list[str]) -> int:
    shapes = projection_shapes(c)
    return c.num_layers * sum(rank * (o + i) for name, (o, i) in shapes.items() if name in targets)


def estimate(c: ModelConfig, cfg: TrainConfig) -> TrainingFootprint:
    """The memory `cfg` needs on the model `c` (see the module docstring)."""
    total = num_params(c)
    if cfg.method == "full":
        trainable = total
        weights = total
    else:
        trainable = num_lora_params(c, cfg.lora.rank, list(cfg.lora.target_modules))
        weights = total + trainable
    tokens = cfg.seq_len * cfg.rows_per_micro_batch
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    per_token_layer = 6 * c.hidden_size + 2 * q + 2 * kv + 4 * c.intermediate_size
    per_token_layer += c.num_heads * cfg.seq_len  # attention probabilities over the row
    per_token = c.num_layers * per_token_layer + 2 * c.hidden_size
    loss_chunk = 2 * min(cfg.loss_chunk_tokens, tokens) * c.vocab_size
    activations = int(ACTIVATION_MARGIN * tokens * per_token) + loss_chunk
    return TrainingFootprint(
        num_params=total,
        num_trainable=trainable,
        weight_bytes=weights * FLOAT32_BYTES,
        grad_bytes=trainable * FLOAT32_BYTES,
        optimizer_bytes=2 * trainable * FLOAT32_BYTES,
        activation_bytes=activations * FLOAT32_BYTES,
    )

"""Tiny random llama and gemma3 checkpoints (HF names) for the training tests."""

from __future__ import annotations

import torch

from llmos.models.config import ModelConfig
from llmos.models.tokenizer import Tokenizer


def tiny_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under HF names for `cfg` (norms random too, so a wrong convention shows)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    w = {"model.embed_tokens.weight": rnd(V, D, scale=0.5), "model.norm.weight": 1 + rnd(D)}
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rnd(V, D, scale=0.5)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if cfg.architecture == "gemma3":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for n in norms:
            w[p + n + ".weight"] = 1 + rnd(D)
        for name, shape in [("q", (q, D)), ("k", (kv, D)), ("v", (kv, D)), ("o", (D, q))]:
            w[p + f"self_attn.{name}_proj.weight"] = rnd(*shape)
        if cfg.attention_bias:
            for name, n in [("q", q), ("k", kv), ("v", kv)]:
                w[p + f"self_attn.{name}_proj.bias"] = rnd(n)
        if cfg.architecture == "gemma3":
            w[p + "self_attn.q_norm.weight"] = rnd(cfg.head_dim, scale=0.3)
            w[p + "self_attn.k_norm.weight"] = rnd(cfg.head_dim, scale=0.3)
        w[p + "mlp.gate_proj.weight"] = rnd(F, D)
        w[p + "mlp.up_proj.weight"] = rnd(F, D)
        w[p + "mlp.down_proj.weight"] = rnd(D, F)
    return w


def tiny_llama_config(**overrides: object) -> ModelConfig:
    cfg = ModelConfig(
        architecture="llama",
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_ids=[2],
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_gemma3_config(**overrides: object) -> ModelConfig:
    cfg = ModelConfig(
        architecture="gemma3",
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_layers=4,
        num_heads=4,
        num_kv_heads=1,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        hidden_act="gelu_pytorch_tanh",
        sliding_window=8,
        layer_types=["sliding", "full", "sliding", "full"],
        query_pre_attn_scalar=16,
        eos_token_ids=[2],
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_tokenizer(vocab_size: int = 97) -> Tokenizer:
    """A word-level tokenizer: <unk>=0, <s>=1, </s>=2, then the words w3 .. w{vocab_size-1}."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    backend = Backend(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return Tokenizer(backend, bos_token_id=1, eos_token_ids=[2], add_bos_token=True, kind="other")

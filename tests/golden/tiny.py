"""Tiny random HF models and a helper that runs llmos's forward pass over one prompt."""

from __future__ import annotations

import torch

from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Process
from llmos.kernel.runner import ModelRunner
from llmos.kernel.scheduler import Batch, ScheduledProcess
from llmos.models.config import ModelConfig
from llmos.ops.cpu import KVCache


def tiny_llama_config(**overrides: object) -> dict:
    cfg = dict(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.update(overrides)
    return cfg


def llmos_config_from_hf(hf: object, architecture: str = "llama") -> ModelConfig:
    g = hf.__getattribute__
    head_dim = getattr(hf, "head_dim", None) or g("hidden_size") // g("num_attention_heads")
    c = ModelConfig(
        architecture=architecture,
        vocab_size=g("vocab_size"),
        hidden_size=g("hidden_size"),
        intermediate_size=g("intermediate_size"),
        num_layers=g("num_hidden_layers"),
        num_heads=g("num_attention_heads"),
        num_kv_heads=g("num_key_value_heads"),
        head_dim=head_dim,
        rms_norm_eps=g("rms_norm_eps"),
        rope_theta=getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"],
        max_position_embeddings=g("max_position_embeddings"),
        tie_word_embeddings=g("tie_word_embeddings"),
        attention_bias=bool(getattr(hf, "attention_bias", False)),
        eos_token_ids=[2],
    )
    rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None)
    if rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
        c.rope_scaling = dict(rope)
    return c


def llmos_logprobs(
    model, token_ids: list[int], chunk: int | None = None, block_size: int = 16
) -> torch.Tensor:
    """Log-probs [len(token_ids), V] from llmos's paged forward, prefilling in chunks."""
    c = model.config
    num_blocks = len(token_ids) // block_size + 2
    kv = KVCache(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim)
    runner = ModelRunner(model, kv)
    proc = Process(1, list(token_ids), SamplingParams())
    proc.block_table = list(range(num_blocks))
    out = []
    chunk = chunk or len(token_ids)
    while proc.num_computed_tokens < len(token_ids):
        n = min(chunk, len(token_ids) - proc.num_computed_tokens)
        input_ids, positions, meta, _, _ = runner._prepare(Batch([ScheduledProcess(proc, n, True)]))
        with torch.inference_mode():
            hidden = model.forward(input_ids, positions, kv, meta)[:n]
            out.append(torch.log_softmax(model.compute_logits(hidden), -1))
        proc.num_computed_tokens += n
    return torch.cat(out)

"""The HF transformers (+ peft) side of the training golden tests, built from the same weights."""

from __future__ import annotations

import torch

from llmos.models.config import ModelConfig
from llmos.train.data import Example
from llmos.train.export import hf_config
from tests.required import require_transformers


def hf_model(cfg: ModelConfig, weights: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    transformers = require_transformers()
    raw = hf_config(cfg)
    cls = (
        transformers.Gemma3TextConfig if cfg.architecture == "gemma3" else transformers.LlamaConfig
    )
    hf_cfg = cls(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).float()
    state = {k: v.clone() for k, v in weights.items()}
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def example_loss_sum(model, ex: Example) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Summed cross entropy of `model` (HF) over `ex`'s target tokens."""
    ids = torch.tensor([ex.token_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = torch.tensor(ex.token_ids[1:])
    keep = torch.tensor(ex.is_target[1:], dtype=torch.bool)
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")


def random_examples(n: int, vocab: int, seed: int) -> list[Example]:
    """`n` random sequences (4..30 tokens), each with a prompt part and a target part."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 31, (1,), generator=g))
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Example(ids, [False] * prompt + [True] * (length - prompt)))
    return out

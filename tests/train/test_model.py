"""Golden: the dense training forward equals the paged inference forward (logits within 1e-4)."""

from __future__ import annotations

import pytest
import torch

from llmos.models.registry import build_model
from llmos.train.model import IGNORE, PackedRows, TrainableLM, single_row
from tests.golden.tiny import llmos_logprobs
from tests.train.tiny import tiny_gemma3_config, tiny_llama_config, tiny_weights

CONFIGS = {
    "llama": lambda: tiny_llama_config(),
    "llama-tied-bias": lambda: tiny_llama_config(tie_word_embeddings=True, attention_bias=True),
    "gemma3": lambda: tiny_gemma3_config(),
    "gemma3-softcap": lambda: tiny_gemma3_config(
        final_logit_softcapping=5.0, attn_logit_softcapping=20.0
    ),
}


def _paged_logits(cfg, weights, ids):
    model = build_model(cfg, {k: v.clone() for k, v in weights.items()})
    return llmos_logprobs(model, ids, chunk=7)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_forward_equals_paged_inference(name):
    cfg = CONFIGS[name]()
    weights = tiny_weights(cfg)
    ours = TrainableLM.from_weights(cfg, weights)
    g = torch.Generator().manual_seed(3)
    for length in (5, 30):  # 30 > the gemma3 sliding window of 8
        ids = torch.randint(3, cfg.vocab_size, (length,), generator=g).tolist()
        with torch.no_grad():
            got = torch.log_softmax(ours.logits(ours(single_row(ids))[0]), -1)
        torch.testing.assert_close(got, _paged_logits(cfg, weights, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_packed_sequences_do_not_see_each_other(name):
    cfg = CONFIGS[name]()
    model = TrainableLM.from_weights(cfg, tiny_weights(cfg))
    g = torch.Generator().manual_seed(4)
    a = torch.randint(3, cfg.vocab_size, (11,), generator=g).tolist()
    b = torch.randint(3, cfg.vocab_size, (17,), generator=g).tolist()
    T = len(a) + len(b) + 4  # four padding slots at the end
    ids = torch.tensor([a + b + [0] * 4])
    positions = torch.tensor([list(range(11)) + list(range(17)) + [0] * 4])
    seq_ids = torch.tensor([[0] * 11 + [1] * 17 + [-1] * 4])
    packed = PackedRows(ids, positions, seq_ids, torch.full((1, T), IGNORE))
    with torch.no_grad():
        hidden = model(packed)[0]
        alone_a, alone_b = model(single_row(a))[0], model(single_row(b))[0]
    torch.testing.assert_close(hidden[:11], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[11:28], alone_b, atol=1e-5, rtol=0)


def test_chunked_loss_equals_full_cross_entropy():
    cfg = tiny_llama_config()
    model = TrainableLM.from_weights(cfg, tiny_weights(cfg))
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, cfg.vocab_size, (1, 40), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), IGNORE)], 1)
    labels[:, :10] = IGNORE
    batch = PackedRows(ids, torch.arange(40)[None], torch.zeros(1, 40, dtype=torch.long), labels)
    chunked = model.loss_sum(batch, chunk_tokens=7)
    chunked.backward()
    grad_chunked = model.lm_head.weight.grad.clone()
    model.zero_grad()
    logits = model.logits(model(batch))[0]
    full = torch.nn.functional.cross_entropy(
        logits, labels[0], ignore_index=IGNORE, reduction="sum"
    )
    full.backward()
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(model.lm_head.weight.grad, grad_chunked, atol=1e-6, rtol=1e-5)


def test_a_batch_without_targets_has_zero_loss_and_gradient():
    cfg = tiny_llama_config()
    model = TrainableLM.from_weights(cfg, tiny_weights(cfg))
    loss = model.loss_sum(single_row([5, 6, 7]))
    loss.backward()
    assert float(loss) == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().sum()) == 0.0 for g in grads)

"""Golden: llmos's gemma3 family against HF transformers on a tiny random model (fp32)."""

from __future__ import annotations

import pytest
import torch

from llmos.models.config import ModelConfig
from llmos.models.registry import build_model
from tests.golden.tiny import llmos_logprobs
from tests.required import require_transformers

transformers = require_transformers()


def _tiny_gemma3(**overrides):
    torch.manual_seed(0)
    kw = dict(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=8,
        query_pre_attn_scalar=32,
        rms_norm_eps=1e-6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    )
    kw.update(overrides)
    hf_cfg = transformers.Gemma3TextConfig(**kw)
    hf = transformers.Gemma3ForCausalLM(hf_cfg).float().eval()
    # random norms so a wrong (1 + w) convention cannot pass
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    full_theta = rope.get("full_attention", {}).get("rope_theta", kw["rope_theta"])
    local_theta = rope.get("sliding_attention", {}).get("rope_theta", kw["rope_local_base_freq"])
    cfg = ModelConfig(
        architecture="gemma3",
        vocab_size=kw["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=1,
        head_dim=32,
        rms_norm_eps=1e-6,
        rope_theta=full_theta,
        rope_local_theta=local_theta,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        hidden_act="gelu_pytorch_tanh",
        sliding_window=8,
        layer_types=["sliding", "full", "sliding", "full"],
        query_pre_attn_scalar=32,
        final_logit_softcapping=kw["final_logit_softcapping"],
    )
    return hf, build_model(cfg, weights)


@pytest.mark.parametrize("softcap", [None, 5.0], ids=["plain", "softcap"])
def test_gemma3_logprobs_match_hf(softcap):
    hf, ours = _tiny_gemma3(final_logit_softcapping=softcap)
    g = torch.Generator().manual_seed(2)
    for length in (6, 40):  # 40 > sliding window 8: the window mask matters
        ids = torch.randint(3, 257, (length,), generator=g).tolist()
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        for chunk in (None, 5):
            got = llmos_logprobs(ours, ids, chunk=chunk)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)

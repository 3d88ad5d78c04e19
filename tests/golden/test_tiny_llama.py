"""Golden: llmos's llama family against HF transformers on tiny random models (fp32)."""

from __future__ import annotations

import pytest
import torch

from llmos.models.registry import build_model
from tests.golden.tiny import llmos_config_from_hf, llmos_logprobs, tiny_llama_config
from tests.required import require_transformers

transformers = require_transformers()


def _hf_and_ours(**overrides):
    torch.manual_seed(0)
    cfg_cls = (
        transformers.Qwen2Config if overrides.pop("qwen2", False) else transformers.LlamaConfig
    )
    hf_cfg = cfg_cls(**tiny_llama_config(**overrides))
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    cfg = llmos_config_from_hf(hf_cfg)
    if isinstance(hf_cfg, transformers.Qwen2Config):
        cfg.attention_bias = True
    return hf, build_model(cfg, weights)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": True},
        {"qwen2": True},
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ],
    ids=["llama", "tied", "qkv-bias", "llama3-rope"],
)
def test_logprobs_match_hf(overrides):
    hf, ours = _hf_and_ours(**overrides)
    g = torch.Generator().manual_seed(1)
    for length in (5, 37, 90):
        ids = torch.randint(3, hf.config.vocab_size, (length,), generator=g).tolist()
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        for chunk in (None, 7):
            got = llmos_logprobs(ours, ids, chunk=chunk)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)

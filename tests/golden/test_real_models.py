"""Golden: SmolLM2 and Gemma 3 270M (from their packaged GGUFs) against HF transformers.

The HF model gets the same dequantized weights (tests/models checks those against transformers'
own GGUF loader); log-probs must match within 1e-3 and greedy 64-token continuations exactly.
"""

from __future__ import annotations

import pytest
import torch

from llmos.kernel.params import SamplingParams
from llmos.llm import LLM
from llmos.models.loader import load_model_files
from tests.golden.tiny import llmos_logprobs
from tests.required import require_transformers

transformers = require_transformers()
pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived",
]


def _hf_from(files):
    c = files.config
    if c.architecture == "gemma3":
        hf_cfg = transformers.Gemma3TextConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            rms_norm_eps=c.rms_norm_eps,
            rope_theta=c.rope_theta,
            rope_local_base_freq=c.rope_local_theta,
            sliding_window=c.sliding_window,
            query_pre_attn_scalar=int(c.query_pre_attn_scalar or c.head_dim),
            layer_types=[
                ("sliding_attention" if t == "sliding" else "full_attention") for t in c.layer_types
            ],
            max_position_embeddings=c.max_position_embeddings,
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        )
        model = transformers.Gemma3ForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            rms_norm_eps=c.rms_norm_eps,
            rope_theta=c.rope_theta,
            max_position_embeddings=c.max_position_embeddings,
            tie_word_embeddings=c.tie_word_embeddings,
        )
        model = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = model.load_state_dict(files.weights, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    model.tie_weights()
    return model.float().eval()


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def pair(request, smollm2_files):
    files = smollm2_files if request.param == "smollm2" else load_model_files("gemma3")
    return files, _hf_from(files)


def test_logprobs_and_greedy_continuations_match_hf(pair, smollm2_model):
    files, hf = pair
    from llmos.kernel.engine import Engine
    from llmos.models.registry import build_model

    model = (
        smollm2_model
        if files.config.architecture == "llama"
        else build_model(files.config, files.weights, quantized=files.quantized)
    )
    tok = files.tokenizer
    llm = LLM(engine=Engine(model, tok, model_name=files.name))
    for text in PROMPTS:
        ids = tok.encode(text)
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        got = llmos_logprobs(model, ids)
        assert (got - ref).abs().max().item() < 1e-3
        with torch.no_grad():
            hf_out = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=64,
                min_new_tokens=64,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=files.config.eos_token_ids,
            )[0, len(ids) :].tolist()
        # min_tokens masks the stop tokens as HF's min_new_tokens does
        params = SamplingParams(max_tokens=64, temperature=0, min_tokens=64)
        ours = llm.generate([ids], params)[0].token_ids
        assert ours == hf_out, f"greedy continuation differs for {text!r}"

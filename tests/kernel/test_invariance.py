"""Batch invariance on the real model: a greedy process's tokens do not depend on its company.

Each of 16 prompts is run alone, all together (with chunked prefill mixing into decodes), under
a KV pool so small that processes are preempted (both through swap and through recompute), and
again with its prefix in the cache, under every scheduling policy (each orders and preempts
differently). Every run must produce exactly the same tokens.
"""

from __future__ import annotations

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.kernel.engine import Engine
from llmos.kernel.params import SamplingParams
from llmos.kernel.policy import POLICIES
from llmos.llm import LLM
from llmos.ops.cpu import KVCache

pytestmark = pytest.mark.slow
each_policy = pytest.mark.parametrize("policy", sorted(POLICIES))

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about rain.",
    "How many legs does a spider have?",
    "Explain gravity to a child.",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
    "List two prime numbers.",
    "What does a compiler do?",
    "Translate 'good morning' to Spanish.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
    "What is photosynthesis?",
    "Describe the moon in one line.",
]
MAX_TOKENS = 24


def _engine(
    files, model, *, kv_blocks=2048, swap_blocks=2048, budget=512, caching=False, policy="fcfs"
):
    c = files.config
    block = KVCache.bytes_per_block(c.num_layers, 16, c.num_kv_heads, c.head_dim)
    return Engine(
        model,
        files.tokenizer,
        model_name="smollm2",
        chat_template=files.chat_template,
        kernel=KernelConfig(max_num_batched_tokens=budget, max_num_seqs=64, policy=policy),
        memory=MemoryConfig(
            kv_cache_bytes=kv_blocks * block,
            swap_bytes=swap_blocks * block,
            enable_prefix_caching=caching,
        ),
    )


@pytest.fixture(scope="module")
def prompts(smollm2_files, smollm2_model):
    llm = LLM(engine=_engine(smollm2_files, smollm2_model))
    # half the prompts share a long system prompt, so the prefix cache has something to find
    system = {"role": "system", "content": "You are a careful assistant. Answer briefly. " * 4}
    out = []
    for i, q in enumerate(QUESTIONS):
        msgs = ([system] if i % 2 else []) + [{"role": "user", "content": q}]
        out.append(llm.chat_prompt_ids(msgs))
    return out


PARAMS = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(smollm2_files, smollm2_model, prompts):
    llm = LLM(engine=_engine(smollm2_files, smollm2_model))
    return [llm.generate([p], PARAMS)[0].token_ids for p in prompts]


@each_policy
def test_batched_with_chunked_prefill_equals_alone(
    smollm2_files, smollm2_model, prompts, alone, policy
):
    llm = LLM(engine=_engine(smollm2_files, smollm2_model, budget=48, policy=policy))
    together = [c.token_ids for c in llm.generate(prompts, PARAMS)]
    assert together == alone


def test_stall_free_chunks_equal_alone(smollm2_files, smollm2_model, prompts, alone):
    """Prefill chunks sized by a time target (odd sizes, beside decodes) change no token."""
    from llmos.kernel.tickcost import TickCost
    from tests.kernel.test_tickcost import trained

    engine = _engine(smollm2_files, smollm2_model)
    engine.scheduler.tick_cost = TickCost(target_ms=45, min_prefill_tokens=5, model=trained())
    sizes = set()
    schedule = engine.scheduler.schedule

    def spy():  # type: ignore[no-untyped-def]
        batch = schedule()
        sizes.update(i.num_new_tokens for i in batch.items if i.num_new_tokens > 1)
        return batch

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    together = [c.token_ids for c in LLM(engine=engine).generate(prompts, PARAMS)]
    assert together == alone
    assert len(sizes) > 3 and min(sizes) < 16  # the chunks really were cut by the target


@each_policy
@pytest.mark.parametrize("swap_blocks", [64, 0], ids=["swap", "recompute"])
def test_preempted_equals_alone(smollm2_files, smollm2_model, prompts, alone, swap_blocks, policy):
    # 16 blocks of 16 tokens hold about three of these processes at once
    engine = _engine(
        smollm2_files,
        smollm2_model,
        kv_blocks=16,
        swap_blocks=swap_blocks,
        budget=128,
        policy=policy,
    )
    got = [c.token_ids for c in LLM(engine=engine).generate(prompts, PARAMS)]
    stats = engine.stats()
    assert got == alone
    assert stats.num_preemptions > 0
    if swap_blocks:
        assert stats.num_swap_outs > 0
    else:
        assert stats.num_recomputes == stats.num_preemptions
    assert stats.kv_blocks_used == 0 and stats.swap_blocks_used == 0


@each_policy
def test_prefix_cache_hit_equals_alone(smollm2_files, smollm2_model, prompts, alone, policy):
    engine = _engine(smollm2_files, smollm2_model, caching=True, policy=policy)
    llm = LLM(engine=engine)
    first = [c.token_ids for c in llm.generate(prompts, PARAMS)]
    hits_before = engine.stats().prefix_cache_hits
    second = llm.generate(prompts, PARAMS)
    assert engine.stats().prefix_cache_hits > hits_before
    assert all(c.num_cached_tokens > 0 for c in second)
    assert first == alone
    assert [c.token_ids for c in second] == alone

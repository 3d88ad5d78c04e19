"""The engine's system calls and the sampler, on a tiny random llama with SmolLM2's tokenizer.

The tiny model makes ticks cheap; the tokenizer is the real one, so detokenization and stop
strings run exactly as in production.
"""

from __future__ import annotations

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.errors import ContextTooLong, InvalidRequest
from llmos.kernel.engine import Engine
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority
from llmos.llm import LLM
from tests.kernel.tiny import tiny_llama


@pytest.fixture(scope="module")
def tiny_model(smollm2_files):
    return tiny_llama(smollm2_files.config.vocab_size)


@pytest.fixture
def engine(tiny_model, smollm2_files):
    return Engine(
        tiny_model,
        smollm2_files.tokenizer,
        model_name="tiny",
        kernel=KernelConfig(max_model_len=256),
        memory=MemoryConfig(kv_cache_bytes=1 << 22, swap_bytes=1 << 20),
    )


def _run(engine, pids):
    outs = {pid: [] for pid in pids}
    pending = set(pids)
    for _ in range(10_000):
        if not pending:
            return outs
        for o in engine.step():
            if o.pid in outs:
                outs[o.pid].append(o)
                if o.finished:
                    pending.discard(o.pid)
    raise AssertionError("engine did not finish")


PROMPT = list(range(1000, 1020))


def test_max_tokens_gives_length_and_exact_count(engine):
    pid = engine.submit(PROMPT, SamplingParams(max_tokens=7, temperature=0, ignore_eos=True))
    outs = _run(engine, [pid])[pid]
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert sum(len(o.new_token_ids) for o in outs) == 7
    assert outs[-1].num_output_tokens == 7 and outs[-1].num_prompt_tokens == len(PROMPT)
    assert engine.stats().kv_blocks_used == 0


def test_stop_string_is_cut_from_the_output(engine):
    llm = LLM(engine=engine)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    full = llm.generate([PROMPT], params)[0].text
    assert len(full) > 12
    stop = full[8:11]
    first = full.find(stop)
    cut = llm.generate(
        [PROMPT], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    )[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[:first]


def test_streamed_deltas_join_to_the_full_text(engine):
    pid = engine.submit(PROMPT, SamplingParams(max_tokens=25, temperature=0, ignore_eos=True))
    outs = _run(engine, [pid])[pid]
    ids = [t for o in outs for t in o.new_token_ids]
    assert "".join(o.new_text for o in outs) == engine.tokenizer.decode(ids)


def test_stop_token_ids_end_the_process(engine):
    greedy = LLM(engine=engine).generate(
        [PROMPT], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    )[0]
    stop_id = greedy.token_ids[3]
    got = LLM(engine=engine).generate(
        [PROMPT], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[stop_id])
    )[0]
    assert got.finish_reason == "stop"
    assert got.token_ids == greedy.token_ids[: greedy.token_ids.index(stop_id) + 1]


def test_kill_frees_blocks_and_reports_killed(engine):
    pid = engine.submit(PROMPT, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    assert engine.kill(pid)
    outs = engine.step()
    assert [(o.pid, o.finish_reason) for o in outs if o.finished] == [(pid, "killed")]
    assert engine.stats().kv_blocks_used == 0
    assert engine.processes() == []
    assert not engine.kill(pid)


def test_renice_changes_the_class_in_the_table(engine):
    pid = engine.submit(PROMPT, SamplingParams(max_tokens=50), priority=Priority.BATCH)
    engine.step()
    assert engine.renice(pid, Priority.INTERACTIVE)
    engine.step()
    assert engine.processes()[0].priority == "interactive"
    engine.kill(pid)
    engine.step()


def test_seeded_sampling_does_not_depend_on_neighbours(engine):
    llm = LLM(engine=engine)
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate([PROMPT], params)[0].token_ids
    others = [list(range(2000 + 30 * i, 2020 + 30 * i)) for i in range(5)]
    mixed = llm.generate(
        others[:2] + [PROMPT] + others[2:],
        SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True),
    )
    again = llm.generate([PROMPT] + others, params)
    assert again[0].token_ids == alone
    assert mixed[2].token_ids != [] and len(set(map(tuple, (c.token_ids for c in mixed)))) > 1
    unseeded = llm.generate(
        [PROMPT] * 2, SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    )
    assert unseeded[0].token_ids != unseeded[1].token_ids


def test_logprobs_hold_the_chosen_token_and_top_k(engine):
    c = LLM(engine=engine).generate(
        [PROMPT], SamplingParams(max_tokens=5, temperature=0, logprobs=3, ignore_eos=True)
    )[0]
    assert c.logprobs is not None and len(c.logprobs) == 5
    for tok, lp in zip(c.token_ids, c.logprobs, strict=True):
        assert tok in lp and 3 <= len(lp) <= 4
        assert all(v <= 0 for v in lp.values())
        assert lp[tok] == max(lp.values())  # greedy picks the most likely token


def test_logit_bias_and_top_k_one(engine):
    llm = LLM(engine=engine)
    forced = llm.generate(
        [PROMPT],
        SamplingParams(
            max_tokens=4, temperature=1.0, seed=1, logit_bias={777: 100.0}, ignore_eos=True
        ),
    )[0]
    assert forced.token_ids == [777] * 4
    greedy = llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    top1 = llm.generate(
        [PROMPT], SamplingParams(max_tokens=6, temperature=1.5, top_k=1, seed=5, ignore_eos=True)
    )[0]
    assert top1.token_ids == greedy.token_ids


@pytest.mark.parametrize(
    "penalty",
    [{"frequency_penalty": 2.0, "presence_penalty": 2.0}, {"repetition_penalty": 3.0}],
    ids=["frequency+presence", "repetition"],
)
def test_penalties_reduce_repeats(engine, penalty):
    llm = LLM(engine=engine)
    plain = llm.generate([PROMPT], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[
        0
    ].token_ids
    penalised = llm.generate(
        [PROMPT], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, **penalty)
    )[0].token_ids
    assert len(set(plain)) < 40  # the unpenalised greedy continuation repeats itself
    assert len(set(penalised)) > len(set(plain))
    assert penalised != plain


def test_bad_requests_are_refused_at_submit(engine):
    with pytest.raises(ContextTooLong):
        engine.submit(list(range(100, 300)), SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequest):
        engine.submit([], SamplingParams())
    with pytest.raises(InvalidRequest):
        engine.submit([10**9], SamplingParams())
    with pytest.raises(InvalidRequest, match="temperature"):
        engine.submit(PROMPT, SamplingParams(temperature=-1))
    with pytest.raises(InvalidRequest, match="top_p"):
        engine.submit(PROMPT, SamplingParams(top_p=0))
    assert engine.processes() == []


def test_a_profile_sets_the_context_template_and_the_python_apis_defaults(
    tiny_model, smollm2_files
):
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    )
    profile = {
        "temperature": 0.0,
        "max_tokens": 5,
        "system": "Be terse.",
        "context_length": 64,
        "chat_template": template,
    }
    engine = Engine(
        tiny_model,
        smollm2_files.tokenizer,
        kernel=KernelConfig(max_model_len=256),
        memory=MemoryConfig(kv_cache_bytes=1 << 22),
        profile=profile,
    )
    assert engine.max_model_len == 64 and engine.chat_template == template
    with pytest.raises(ContextTooLong):
        engine.submit(list(range(1000, 1070)), SamplingParams(max_tokens=1))
    llm = LLM(engine=engine)
    p = llm.default_params()
    assert (p.temperature, p.max_tokens, p.top_k, p.top_p, p.min_p) == (0.0, 5, 40, 0.95, 0.05)
    assert llm.default_params(temperature=1.0, seed=3).temperature == 1.0
    c = llm.chat([{"role": "user", "content": "hi"}])  # the profile's greedy, 5 tokens
    text = smollm2_files.tokenizer.decode(c.prompt_token_ids)
    assert text.startswith("[system] Be terse.\n[user] hi\n") and len(c.token_ids) == 5
    assert c.token_ids == llm.chat([{"role": "user", "content": "hi"}]).token_ids

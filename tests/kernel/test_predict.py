"""The output-length predictor: features from real templated prompts, learning which words mean
long answers, background refits, persistence, and the engine feeding it finished processes."""

from __future__ import annotations

import math
import random

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.kernel.engine import Engine
from llmos.kernel.params import SamplingParams
from llmos.kernel.predict import (
    HistoryRecord,
    LengthModel,
    Predictor,
    PromptFeatures,
    features_of,
    kendall_tau,
    remaining_tokens,
    split_turns,
)
from llmos.llm import LLM
from tests.kernel.tiny import tiny_llama


def _features(text: str, *, max_tokens: int = 512, owner: str = "u") -> PromptFeatures:
    return PromptFeatures(
        num_prompt_tokens=10 + len(text.split()),
        text=text,
        roles="user",
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        model="m",
        owner=owner,
    )


# Requests whose answer length follows from their meaning, as a user population would send
# them; the lengths are drawn around what such answers take, with noise.
KINDS = [
    ("What is the capital of {}?", (1, 4)),
    ("Is a {} a mammal? Answer yes or no.", (1, 3)),
    ("In one sentence, where does a {} live?", (12, 30)),
    ("List five facts about {}.", (60, 120)),
    ("Explain in detail how {} works.", (150, 300)),
    ("Write a long story about {} at sea.", (300, 512)),
]
FILLERS = [
    "France",
    "Japan",
    "whale",
    "owl",
    "tiger",
    "Peru",
    "Chile",
    "bees",
    "rain",
    "engines",
    "trains",
    "bridges",
]


def _history(n: int, seed: int) -> list[HistoryRecord]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        template, (lo, hi) = rng.choice(KINDS)
        text = template.format(rng.choice(FILLERS))
        out.append(HistoryRecord(_features(text), rng.randint(lo, hi), "stop"))
    return out


def test_split_turns_finds_the_roles_and_the_last_user_message(smollm2_files):
    llm_prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWrite a poem.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    roles, message = split_turns(llm_prompt)
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert message == "Write a poem."
    assert split_turns("Once upon a time") == ([], "Once upon a time")
    ids = smollm2_files.tokenizer.encode(llm_prompt, add_special_tokens=False)
    f = features_of(
        ids,
        SamplingParams(max_tokens=64, temperature=0.5),
        tokenizer=smollm2_files.tokenizer,
        max_tokens=64,
        model="smollm2",
        owner="alice",
    )
    assert (f.text, f.roles, f.max_tokens, f.owner) == (
        "Write a poem.",
        "system,user,assistant,user,assistant",
        64,
        "alice",
    )
    assert f.num_prompt_tokens == len(ids) and f.temperature == 0.5


def test_the_model_learns_which_requests_run_long_from_history():
    train, held_out = _history(300, seed=1), _history(200, seed=2)
    model = LengthModel().fit(train)
    predicted = model.predict([r.features for r in held_out])
    tau = kendall_tau(predicted, [r.num_output_tokens for r in held_out])
    assert tau is not None and tau >= 0.6, tau
    assert all(1.0 <= p <= 512 for p in predicted)
    # and the same prompt without history gets nothing better than max_tokens (cold start)
    assert Predictor().predict(held_out[0].features) is None


def test_a_saved_model_predicts_the_same_after_a_restart():
    model = LengthModel().fit(_history(100, seed=3))
    rows = [r.features for r in _history(20, seed=4)]
    again = LengthModel.from_bytes(model.to_bytes())
    assert again is not None and again.predict(rows) == model.predict(rows)
    assert LengthModel.from_bytes(b"not a model") is None


def test_the_predictor_refits_in_the_background_and_scores_itself():
    saved: list[bytes] = []
    stored: list[HistoryRecord] = []
    p = Predictor(
        retrain_every=50,
        min_records=40,
        window=100,
        on_record=stored.append,
        on_trained=saved.append,
    )
    history = _history(40, seed=5)
    for rec in history[:39]:
        p.record(rec)
    assert p.wait_idle() and p.model is None  # too little history: cold start
    p.record(history[39])
    assert p.wait_idle() and p.model is not None and p.stats().num_trained_on == 40
    assert len(saved) == 1 and len(stored) == 40
    for rec in _history(60, seed=6):
        rec = HistoryRecord(rec.features, rec.num_output_tokens, "stop", p.predict(rec.features))
        p.record(rec)
    p.wait_idle()
    stats = p.stats()
    assert stats.num_window == 60 and stats.num_fits == 2
    assert stats.kendall_tau is not None and stats.kendall_tau >= 0.6
    assert stats.by_model == {"m": stats.kendall_tau}


def test_a_restart_starts_from_the_stored_history_and_model():
    model = LengthModel().fit(_history(60, seed=7))
    p = Predictor(min_records=10)
    p.seed(_history(60, seed=7), model)
    assert p.model is model and p.stats().num_records == 60
    cold = Predictor(min_records=10)
    cold.seed(_history(60, seed=7))  # history but no saved model: fit from it at once
    assert cold.wait_idle() and cold.model is not None


@pytest.mark.parametrize(
    ("predicted", "num_output", "max_tokens", "expected"),
    [
        (None, 10, 100, 90),  # cold start: all of max_tokens
        (50.0, 10, 100, 40),  # on track
        (50.0, 10, 20, 10),  # never past max_tokens
        (5.0, 30, 100, 30),  # outran its prediction: as long again as it has run
        (5.0, 90, 100, 10),
    ],
)
def test_remaining_tokens(predicted, num_output, max_tokens, expected):
    assert math.isclose(remaining_tokens(predicted, num_output, max_tokens), expected)


def test_the_engine_hands_finished_processes_to_the_predictor(smollm2_files):
    model = tiny_llama(smollm2_files.config.vocab_size)
    engine = Engine(
        model,
        smollm2_files.tokenizer,
        model_name="tiny",
        chat_template=smollm2_files.chat_template,
        kernel=KernelConfig(max_model_len=256, predict_min_records=2, predict_retrain_every=2),
        memory=MemoryConfig(kv_cache_bytes=1 << 22, swap_bytes=1 << 20),
    )
    llm = LLM(engine=engine)
    msgs = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(3)]
    prompts = [llm.chat_prompt_ids(m) for m in msgs]
    llm.generate(prompts, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    engine.predictor.wait_idle()
    stats = engine.predictor.stats()
    assert stats.num_records == 3 and engine.predictor.model is not None
    pid = engine.submit(prompts[0], SamplingParams(max_tokens=5, temperature=0.0))
    proc = engine.table.get(pid)
    assert proc is not None and proc.features is not None
    assert (
        proc.features.text == "Question number 0?"
        and proc.features.roles == "system,user,assistant"
    )
    assert proc.predicted_output_tokens is not None
    s = engine.stats()
    assert 0 < s.schedule_s < s.tick_s

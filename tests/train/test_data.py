"""Training data: assistant-only loss masks on real chat templates, completions, packing, plans."""

from __future__ import annotations

import pytest

from llmos.errors import InvalidRequest
from llmos.models.chat_template import render_chat
from llmos.train.data import (
    Example,
    collate,
    encode_chat,
    encode_completion,
    encode_records,
    pack,
    plan_steps,
    split,
)
from llmos.train.model import IGNORE
from tests.train.tiny import tiny_tokenizer

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of Zorbia?"},
    {"role": "assistant", "content": "Quuxville."},
    {"role": "user", "content": "And its river?"},
    {"role": "assistant", "content": "The Blarn."},
]


def _targets(ex: Example) -> list[list[int]]:
    """The runs of consecutive target tokens."""
    runs: list[list[int]] = []
    for i, (tok, is_target) in enumerate(zip(ex.token_ids, ex.is_target, strict=True)):
        if is_target:
            if i == 0 or not ex.is_target[i - 1]:
                runs.append([])
            runs[-1].append(tok)
    return runs


def test_chat_loss_covers_assistant_turns_only(smollm2_files):
    tok, template = smollm2_files.tokenizer, smollm2_files.chat_template
    ex = encode_chat(CHAT, tok, template)
    answers = [tok.decode(run, skip_special_tokens=False) for run in _targets(ex)]
    assert answers == ["Quuxville.<|im_end|>", "The Blarn.<|im_end|>"]
    # the context before the first answer is exactly the prompt inference feeds the model
    prompt = render_chat(template, CHAT[:2], bos_token=tok.bos_token, eos_token=tok.eos_token)
    first = ex.is_target.index(True)
    assert ex.token_ids[:first] == tok.encode(prompt, add_special_tokens=True)
    full = render_chat(
        template,
        CHAT,
        add_generation_prompt=False,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
    )
    assert tok.decode(ex.token_ids, skip_special_tokens=False) == full.rstrip()


def test_chat_without_an_assistant_turn_is_refused(smollm2_files):
    with pytest.raises(InvalidRequest, match="record 2: a chat record has no assistant"):
        encode_records(
            [{"messages": CHAT}, {"messages": CHAT[:2]}],
            smollm2_files.tokenizer,
            smollm2_files.chat_template,
        )


def test_completion_targets_the_completion_and_eos():
    tok = tiny_tokenizer()
    ex = encode_completion("w5 w6 w7", " w8 w9", tok)
    assert ex.token_ids == [1, 5, 6, 7, 8, 9, 2]
    assert ex.is_target == [False] * 4 + [True] * 3
    assert ex.num_target_tokens == 3


def test_packing_keeps_order_and_labels_stay_inside_each_sequence():
    a = Example([1, 5, 6, 7], [False, False, True, True])
    b = Example([1, 8, 9], [False, True, True])
    c = Example(list(range(3, 13)), [True] * 10)
    rows = pack([a, b, c], seq_len=8)
    assert rows == [[a, b], [Example(c.token_ids[:8], c.is_target[:8])]]
    batch = collate(rows)
    assert batch.input_ids.shape == (2, 8)
    assert batch.positions[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert batch.seq_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, -1]
    # a's last token predicts nothing (never b's first token); padding has no label
    assert batch.labels[0].tolist() == [IGNORE, 6, 7, IGNORE, 8, 9, IGNORE, IGNORE]
    assert batch.num_loss_tokens == 4 + 7 and batch.num_tokens == 7 + 8


def test_plan_and_split_are_pure_functions_of_the_seed():
    examples = [Example([1, i, i + 1], [False, True, True]) for i in range(3, 40)]
    train, held = split(examples, 0.2, seed=1)
    assert len(held) == 7 and len(train) + len(held) == len(examples)
    assert split(examples, 0.2, seed=1) == (train, held)
    kw = dict(seq_len=9, rows_per_micro_batch=2, grad_accum_steps=2, num_epochs=2)
    p1, p2 = plan_steps(train, seed=4, **kw), plan_steps(train, seed=4, **kw)
    assert p1 == p2 and p1 != plan_steps(train, seed=5, **kw)
    seen = [ex for step in p1.steps for micro in step for row in micro for ex in row]
    assert len(seen) == 2 * len(train)
    assert plan_steps(train, seed=4, max_steps=2, **kw).steps == p1.steps[:2]

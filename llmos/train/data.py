"""Training data: records -> token ids with loss masks -> packed rows -> a fixed step plan.

Chat records are rendered with the model's chat template and trained on assistant turns only;
completion records on the completion (and EOS). Sequences are packed into rows of `seq_len`
tokens, each attending only to itself (`PackedRows.attention_mask`), never padded one per row.
The plan (which examples form each optimizer step) is a pure function of the examples, the config
and the seed, so a resumed run replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from llmos.errors import InvalidRequest
from llmos.models.chat_template import render_chat
from llmos.train.model import IGNORE, PackedRows


class TextTokenizer(Protocol):
    bos_token: str | None
    eos_token: str | None
    eos_token_ids: list[int]

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...


@dataclass(slots=True)
class Example:
    """One training sequence: `is_target[t]` says whether token t carries loss (is predicted)."""

    token_ids: list[int]
    is_target: list[bool]

    @property
    def num_target_tokens(self) -> int:
        return sum(self.is_target[1:])


def encode_chat(
    messages: list[dict[str, Any]], tokenizer: TextTokenizer, chat_template: str | None
) -> Example:
    """Render with the template; only the assistant turns (content and end of turn) are targets.

    Each assistant turn's span is found by rendering the conversation up to it with the
    generation prompt (the prompt the model sees when it answers) and through it; the pieces
    are tokenized one after another, so the prompt tokens are those inference would feed."""

    def render(upto: int, gen: bool) -> str:
        return render_chat(
            chat_template,
            messages[:upto],
            add_generation_prompt=gen,
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
        )

    pieces: list[tuple[str, bool]] = []
    done = 0
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        prompt, through = render(i, True), render(i + 1, False)
        if not (through.startswith(prompt) and prompt.startswith(_joined(pieces))):
            raise InvalidRequest(
                f"the chat template does not render assistant turn {i} after its prompt",
                hint="this template cannot mask assistant turns; use completion records",
            )
        answer = through[len(prompt) :]
        tail = len(answer) - len(answer.rstrip())  # the newline after an end-of-turn token
        pieces.append((prompt[done:], False))
        pieces.append((answer[: len(answer) - tail], True))
        done = len(through) - tail
    if not any(is_target for _, is_target in pieces):
        raise InvalidRequest("a chat record has no assistant message to learn from")
    return _encode_pieces(pieces, tokenizer)


def _joined(pieces: list[tuple[str, bool]]) -> str:
    return "".join(text for text, _ in pieces)


def encode_completion(prompt: str, completion: str, tokenizer: TextTokenizer) -> Example:
    """The completion and an EOS token are targets; the prompt is context."""
    example = _encode_pieces([(prompt, False), (completion, True)], tokenizer)
    if tokenizer.eos_token_ids:
        example.token_ids.append(tokenizer.eos_token_ids[0])
        example.is_target.append(True)
    return example


def _encode_pieces(pieces: list[tuple[str, bool]], tokenizer: TextTokenizer) -> Example:
    ids: list[int] = []
    is_target: list[bool] = []
    for text, target in pieces:
        if not text:
            continue
        first = not ids
        bos = tokenizer.bos_token
        add_special = first and not (bos and text.startswith(bos))
        part = tokenizer.encode(text, add_special_tokens=add_special)
        ids += part
        is_target += [target] * len(part)
    return Example(ids, is_target)


def encode_records(
    records: Sequence[dict[str, Any]], tokenizer: TextTokenizer, chat_template: str | None
) -> list[Example]:
    """Chat (`messages`) or completion (`prompt`/`completion`) records -> examples."""
    out = []
    for idx, record in enumerate(records):
        try:
            if "messages" in record:
                out.append(encode_chat(record["messages"], tokenizer, chat_template))
            else:
                out.append(encode_completion(record["prompt"], record["completion"], tokenizer))
        except (KeyError, InvalidRequest) as e:
            raise InvalidRequest(f"record {idx + 1}: {e}") from e
    return out


def split(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held-out) by a seeded permutation; held-out has round(n * fraction) examples."""
    n_eval = round(len(examples) * eval_fraction)
    if eval_fraction > 0 and len(examples) > 1:
        n_eval = max(1, n_eval)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:n_eval])
    held_set = set(held)
    return [e for i, e in enumerate(examples) if i not in held_set], [examples[i] for i in held]


def pack(examples: Sequence[Example], seq_len: int) -> list[list[Example]]:
    """Examples (in order) into rows of at most `seq_len` tokens; a longer one is cut to fit."""
    rows: list[list[Example]] = []
    used = seq_len
    for ex in examples:
        if len(ex.token_ids) > seq_len:
            ex = Example(ex.token_ids[:seq_len], ex.is_target[:seq_len])
        if used + len(ex.token_ids) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex.token_ids)
    return rows


def collate(rows: Sequence[Sequence[Example]], pad_id: int = 0) -> PackedRows:
    """Packed rows -> [B, T] tensors (T = the longest row); labels are next tokens or IGNORE."""
    T = max(sum(len(e.token_ids) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    seq_ids = torch.full((B, T), -1, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for s, ex in enumerate(row):
            n = len(ex.token_ids)
            tokens = torch.tensor(ex.token_ids)
            ids[b, t : t + n] = tokens
            positions[b, t : t + n] = torch.arange(n)
            seq_ids[b, t : t + n] = s
            # position j predicts token j + 1 where that token is a target
            target = torch.tensor(ex.is_target[1:], dtype=torch.bool)
            labels[b, t : t + n - 1] = torch.where(target, tokens[1:], IGNORE)
            t += n
    return PackedRows(ids, positions, seq_ids, labels)


@dataclass(slots=True)
class StepPlan:
    """The micro-batches of every optimizer step, in order (rows of examples each)."""

    steps: list[list[list[list[Example]]]]  # step -> micro-batch -> row -> examples


def plan_steps(
    train: list[Example],
    *,
    seq_len: int,
    rows_per_micro_batch: int,
    grad_accum_steps: int,
    num_epochs: int,
    seed: int,
    max_steps: int | None = None,
) -> StepPlan:
    """Each epoch shuffles (seed + epoch), packs and groups rows into micro-batches and steps;
    a step never spans two epochs."""
    if not train:
        raise InvalidRequest("no training examples")
    steps: list[list[list[list[Example]]]] = []
    for epoch in range(num_epochs):
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(train), generator=g).tolist()
        rows = pack([train[i] for i in order], seq_len)
        micro = [
            rows[i : i + rows_per_micro_batch] for i in range(0, len(rows), rows_per_micro_batch)
        ]
        steps += [micro[i : i + grad_accum_steps] for i in range(0, len(micro), grad_accum_steps)]
    if max_steps is not None:
        steps = steps[:max_steps]
    return StepPlan(steps)

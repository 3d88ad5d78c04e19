"""The offline Python API: `LLM(model).generate(prompts, params)` and `.chat(messages, params)`.

A thin loop over one in-process Engine: submit everything, tick until every process has ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmos.config import Settings
from llmos.kernel.engine import Engine
from llmos.kernel.params import SamplingParams, with_defaults
from llmos.kernel.process import Priority
from llmos.system import load_engine


@dataclass(slots=True)
class Completion:
    """One finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_token_ids: list[int]
    logprobs: list[dict[int, float]] | None = None
    num_cached_tokens: int = 0
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LLM:
    """Run a model in this process. `model=None` is the embedded default (SmolLM2)."""

    def __init__(
        self,
        model: str | None = None,
        settings: Settings | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.engine = engine or load_engine(model, settings)
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        params: SamplingParams | None = None,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> list[Completion]:
        """Generate for each prompt (text or token ids); results in prompt order. Without
        `params`, the model's defaults (`default_params()`)."""
        params = params or self.default_params()
        batch: list[str | Sequence[int]]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            batch = [prompts]  # type: ignore[list-item]
        else:
            batch = list(prompts)  # type: ignore[arg-type]
        token_lists = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in batch]
        pids = [self.engine.submit(ids, params, priority=priority) for ids in token_lists]
        return self._collect(pids, token_lists)

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: SamplingParams | None = None,
        **template_kwargs: Any,
    ) -> Completion:
        """Apply the model's chat template to `messages` and generate the assistant's reply.
        A conversation without a system message gets the model profile's system prompt."""
        from llmos.api.prompts import with_profile_system

        messages = with_profile_system(messages, self.engine.profile)
        return self.generate([self.chat_prompt_ids(messages, **template_kwargs)], params)[0]

    def default_params(self, **fields: Any) -> SamplingParams:
        """SamplingParams as the server builds them: `fields` given here > the model's profile
        > llmos's chat defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); max_tokens
        16 unless the profile sets one."""
        return SamplingParams(**(fields | with_defaults(fields, self.engine.profile)))

    def chat_prompt_ids(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
        from llmos.models.chat_template import render_chat

        tok = self.tokenizer
        text = render_chat(
            self.engine.chat_template,
            messages,
            add_generation_prompt=True,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            **template_kwargs,
        )
        has_bos = bool(tok.bos_token) and text.startswith(tok.bos_token)
        return list(tok.encode(text, add_special_tokens=not has_bos))

    def _collect(self, pids: list[int], prompts: list[list[int]]) -> list[Completion]:
        results = {
            pid: Completion("", [], None, prompt, None, pid=pid)
            for pid, prompt in zip(pids, prompts, strict=True)
        }
        pending = set(pids)
        while pending:
            for out in self.engine.step():
                c = results.get(out.pid)
                if c is None:
                    continue
                c.text += out.new_text
                c.token_ids.extend(out.new_token_ids)
                if out.logprobs is not None:
                    c.logprobs = (c.logprobs or []) + out.logprobs
                if out.finished:
                    c.finish_reason = out.finish_reason
                    c.num_cached_tokens = out.num_cached_tokens
                    pending.discard(out.pid)
        return [results[pid] for pid in pids]

"""Output tracking per process: incremental text, stop tokens, stop strings, length limits.

Invariant: the text emitted so far is always a prefix of the final text; text that could still
turn out to be the start of a stop string is held back until it cannot, and a stop string is
never part of the output.
"""

from __future__ import annotations

from typing import Any

from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Process, ProcessState


class OutputTracker:
    def __init__(self, tokenizer: Any, params: SamplingParams) -> None:
        self.params = params
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=True)
        self.text = ""
        self.num_emitted = 0
        self.hold = max((len(s) for s in params.stop), default=1) - 1

    def push(
        self, proc: Process, token_id: int, eos_token_ids: list[int], max_model_len: int
    ) -> tuple[str, ProcessState | None]:
        """Take one new token; return (text safe to emit now, terminal state or None)."""
        sp = self.params
        if token_id in sp.stop_token_ids or (not sp.ignore_eos and token_id in eos_token_ids):
            self.text += self.decoder.flush()  # an unfinished character before the stop token
            return "", ProcessState.FINISHED_STOPPED
        start = max(0, len(self.text) - self.hold)
        self.text += self.decoder.push(token_id)
        state: ProcessState | None = None
        if sp.stop:
            cut = min((i for s in sp.stop if (i := self.text.find(s, start)) >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                state = ProcessState.FINISHED_STOPPED
        if state is None and (
            (sp.max_tokens is not None and proc.num_output_tokens >= sp.max_tokens)
            or proc.num_tokens >= max_model_len
        ):
            state = ProcessState.FINISHED_LENGTH
            self.text += self.decoder.flush()
        if state is not None:
            return "", state
        safe = len(self.text) - self.hold if sp.stop else len(self.text)
        delta = self.text[self.num_emitted : max(safe, self.num_emitted)]
        self.num_emitted += len(delta)
        return delta, None

    def flush(self) -> str:
        """Everything not yet emitted (call once the process has ended)."""
        delta = self.text[self.num_emitted :]
        self.num_emitted = len(self.text)
        return delta

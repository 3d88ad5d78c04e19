"""Streaming detokenization: turn one token id at a time into text deltas.

Invariant: ``"".join(push(i) for i in ids) + flush() == decode(ids)``, while every ``push`` costs
O(window) rather than O(output): we decode only a short window of recent tokens and emit the
text past the part of it already emitted (vLLM's prefix/read offsets). Text that ends in an
incomplete UTF-8 sequence (U+FFFD) is held back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Prompt tokens kept as left context, so the first output token decodes with the right
# leading space (SentencePiece "▁", byte-level "Ġ") and any partial character is completed.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


@dataclass(slots=True)
class IncrementalDecoder:
    decode: Callable[[list[int], bool], str]  # (ids, skip_special_tokens) -> text
    skip_special_tokens: bool = True
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # start of the decode window
    read_offset: int = 0  # tokens before this have been emitted

    @classmethod
    def start(
        cls,
        decode: Callable[[list[int], bool], str],
        *,
        skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> IncrementalDecoder:
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        return cls(decode, skip_special_tokens, context, 0, len(context))

    def _decode(self, ids: list[int]) -> str:
        return self.decode(ids, self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly completed text (may be "")."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = new_text[len(prefix_text) :]
        self._advance()
        return delta

    def _advance(self) -> None:
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        # Drop tokens left of the window so memory stays bounded on long outputs.
        if self.prefix_offset > 64:
            del self.ids[: self.prefix_offset]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end), as ``decode`` renders it."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text):
            return ""
        self._advance()
        return new_text[len(prefix_text) :]

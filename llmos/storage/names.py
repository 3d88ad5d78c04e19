"""Names of models (`name:tag`) and datasets, validated before anything else sees them.

A valid name is 1-64 characters of `a-z 0-9 . _ -`, starts with a letter or digit and has no
`..`; letters are folded to lowercase. Names never become paths (only digests do), and this check
makes that true even for code that forgets it: no separator, NUL, traversal or look-alike passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos.errors import InvalidRequest

DEFAULT_TAG = "latest"
MAX_NAME_CHARS = 64
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_name(text: str, *, what: str = "name") -> str:
    """The lowercase name, or InvalidRequest saying what is allowed."""
    if not isinstance(text, str) or len(text) > MAX_NAME_CHARS:
        shown = text[:40] + "..." if isinstance(text, str) else repr(text)
        raise InvalidRequest(
            f"invalid {what} {shown!r}: longer than {MAX_NAME_CHARS} characters",
            param=what,
        )
    folded = text.lower() if text.isascii() else text
    if not _NAME_RE.match(folded) or ".." in folded:
        raise InvalidRequest(
            f"invalid {what} {text!r}",
            hint=f"use 1-{MAX_NAME_CHARS} of a-z, 0-9, '.', '_', '-', starting with a letter or "
            "digit, without '..'",
            param=what,
        )
    return folded


@dataclass(frozen=True, slots=True, order=True)
class ModelRef:
    """A validated `name:tag`."""

    name: str
    tag: str = DEFAULT_TAG

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if not isinstance(text, str) or len(text) > 2 * MAX_NAME_CHARS + 1:
            raise InvalidRequest(f"invalid model name {str(text)[:40]!r}...: too long")
        name, sep, tag = text.partition(":")
        if sep and not tag:
            raise InvalidRequest(f"invalid model name {text!r}: empty tag after ':'")
        return cls(
            validate_name(name, what="model name"), validate_name(tag or DEFAULT_TAG, what="tag")
        )

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def display_id(ref: ModelRef) -> str:
    """How a registry model is named in the API: `name` for `name:latest`, else `name:tag`."""
    return ref.name if ref.tag == DEFAULT_TAG else f"{ref.name}:{ref.tag}"

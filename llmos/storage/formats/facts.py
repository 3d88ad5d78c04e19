"""ModelFacts: what the manifest records and the loaded model uses, chosen once per format.

Each format module has one `model_facts` function; the registry stores its answer and the loader
runs with it, so a stored model and the model it loads into cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The context a model declares no length for gets (llama.cpp's and transformers' old default).
DEFAULT_CONTEXT_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class ModelFacts:
    architecture: str  # as the file declares it: GGUF general.architecture, HF model_type
    context_length: int  # trained context in tokens (positions)
    chat_template: str | None  # Jinja source; None when the model ships none


def template_or_none(value: Any) -> str | None:
    """A chat template worth rendering: a string with some non-space text, else None (a blank
    template would render an empty prompt; None selects the fallback template)."""
    return value if isinstance(value, str) and value.strip() else None


def positive_int_or(value: Any, default: int) -> int:
    """`value` if it is a positive int (not a bool), else `default`."""
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )

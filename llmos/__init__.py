"""llmos: an operating system for large language models.

`from llmos import LLM, SamplingParams` is the offline API; heavy modules load on first use so
`import llmos` stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# torch's OpenMP threads spin after each parallel region by default; the native attention
# kernel runs on its own threads between GEMMs and would fight those spinners for the cores
# (measured: decode +27 %, 256-token prefill -22 % time with passive waiting). It must be set
# before torch loads its OpenMP runtime, hence here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmos.client import Client
    from llmos.kernel.params import SamplingParams
    from llmos.llm import LLM, Completion

_LAZY = {
    "LLM": "llmos.llm",
    "Completion": "llmos.llm",
    "SamplingParams": "llmos.kernel.params",
    "Client": "llmos.client",
}

__all__ = ["LLM", "Client", "Completion", "SamplingParams", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmos' has no attribute {name!r}")

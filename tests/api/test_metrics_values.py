"""`/os/stats` and `/metrics` report real numbers: each counter moves by exactly what a known
request did (its usage block says how many prompt, cached and completion tokens), the gauges
show a running process while it runs, and every KV block comes back when it ends.

Runs on the session's shared server; every check is a difference between two readings taken
around this test's own requests (pytest runs tests one at a time, so nothing else moves them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.serving import Scrape, idle, stream_sse, wait_until

pytestmark = pytest.mark.slow


class Reading:
    """`/os/stats` and `/metrics` read together."""

    def __init__(self, url: str) -> None:
        self.stats: dict[str, Any] = httpx.get(f"{url}/os/stats", timeout=10).json()
        self.metrics = Scrape(url)

    def stat_delta(self, before: Reading, key: str) -> float:
        return float(self.stats[key] - before.stats[key])

    def metric_delta(self, before: Reading, name: str, **labels: str) -> float:
        return self.metrics.value(name, **labels) - before.metrics.value(name, **labels)


def _completion(http: httpx.Client, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json()["usage"])


def _assert_pool_returned(reading: Reading) -> None:
    s = reading.stats
    assert s["kv_blocks_used"] == 0 and s["num_running"] == 0 and s["num_waiting"] == 0, s
    assert s["kv_blocks_free"] + s["kv_blocks_cached"] == s["kv_blocks_total"] > 0, s
    assert reading.metrics.value("llmos:kv_blocks_used") == 0
    assert reading.metrics.value("llmos:kv_cache_usage_perc") == 0
    assert reading.metrics.value("llmos:num_processes_running") == 0
    assert reading.metrics.value("llmos:kv_blocks_total") == s["kv_blocks_total"]


def test_counters_move_by_exactly_one_request(http: httpx.Client, server_url: str) -> None:
    before = Reading(server_url)
    usage = _completion(http, "Metrics probe: a lighthouse keeper counts the waves at dusk.", 7)
    after = Reading(server_url)
    prompt, cached = usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]
    assert usage["completion_tokens"] == 7 and prompt > 0

    assert after.stat_delta(before, "num_generated_tokens") == 7
    assert after.metric_delta(before, "llmos:generation_tokens_total") == 7
    assert after.metric_delta(before, "llmos:prompt_tokens_total") == prompt
    assert after.metric_delta(before, "llmos:cached_prompt_tokens_total") == cached
    assert after.stat_delta(before, "num_prompt_tokens") == prompt - cached  # computed ones
    assert after.stat_delta(before, "num_finished") == 1
    for reason, count in (("length", 1), ("stop", 0), ("killed", 0), ("error", 0)):
        delta = after.metric_delta(before, "llmos:process_finished_total", finish_reason=reason)
        assert delta == count, reason
    assert after.metric_delta(before, "llmos:time_to_first_token_seconds_count") == 1
    assert after.metric_delta(before, "llmos:e2e_request_latency_seconds_count") == 1
    assert after.metric_delta(before, "llmos:inter_token_latency_seconds_count") == 6
    assert after.stat_delta(before, "num_ticks") >= 7  # one token per tick at most
    assert after.metric_delta(before, "llmos:engine_ticks_total") >= 7
    _assert_pool_returned(after)


def test_a_repeated_prompt_hits_the_prefix_cache(http: httpx.Client, server_url: str) -> None:
    prompt = "Prefix probe: " + " ".join(f"stone{i}" for i in range(40))
    first = _completion(http, prompt, 2)
    block_size = int(http.get("/os/stats").json()["kv_block_size"])
    full_blocks = (first["prompt_tokens"] - 1) // block_size  # the last token is always computed
    assert full_blocks >= 3, first

    before = Reading(server_url)
    second = _completion(http, prompt, 2)
    after = Reading(server_url)
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert second["prompt_tokens"] == first["prompt_tokens"]
    assert cached == full_blocks * block_size
    assert after.stat_delta(before, "prefix_cache_hits") == full_blocks
    assert after.stat_delta(before, "prefix_cache_misses") == 0
    assert after.metric_delta(before, "llmos:prefix_cache_hits_total") == full_blocks
    assert after.metric_delta(before, "llmos:prefix_cache_queries_total") == full_blocks
    assert after.metric_delta(before, "llmos:cached_prompt_tokens_total") == cached
    assert after.stat_delta(before, "num_prompt_tokens") == second["prompt_tokens"] - cached
    hits, misses = after.stats["prefix_cache_hits"], after.stats["prefix_cache_misses"]
    assert after.stats["prefix_cache_hit_rate"] == pytest.approx(hits / (hits + misses))
    _assert_pool_returned(after)


def test_stream_usage_matches_counters_and_request_counts(
    http: httpx.Client, server_url: str
) -> None:
    before = Reading(server_url)
    bodies = [
        {
            "model": "smollm2",
            "max_tokens": 5 + i,
            "temperature": 0,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Stream probe {i}: name a color."}],
        }
        for i in range(3)
    ]

    async def run() -> list[Any]:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
            return [await stream_sse(client, "/v1/chat/completions", b) for b in bodies]

    results = asyncio.run(run())
    after = Reading(server_url)
    usages = [r.events[-1]["usage"] for r in results]
    assert [u["completion_tokens"] for u in usages] == [5, 6, 7]
    assert after.metric_delta(before, "llmos:generation_tokens_total") == 18
    assert after.stat_delta(before, "num_generated_tokens") == 18
    assert after.metric_delta(before, "llmos:prompt_tokens_total") == sum(
        u["prompt_tokens"] for u in usages
    )
    assert after.stat_delta(before, "num_finished") == 3
    assert after.metric_delta(before, "llmos:process_finished_total", finish_reason="length") == 3
    assert after.metric_delta(before, "llmos:e2e_request_latency_seconds_count") == 3
    _assert_pool_returned(after)


LONG = {
    "model": "smollm2",
    "prompt": "Gauge probe: count slowly from one to one thousand.",
    "max_tokens": 900,
    "temperature": 0,
    "ignore_eos": True,
}


def test_gauges_show_a_running_process_then_return_to_idle(
    http: httpx.Client, server_url: str
) -> None:
    before = Reading(server_url)
    block_size = int(before.stats["kv_block_size"])

    async def run() -> tuple[Reading, dict[str, Any], Any]:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
            task = asyncio.create_task(stream_sse(client, "/v1/completions", LONG))
            procs: list[dict[str, Any]] = []
            for _ in range(600):
                procs = (await client.get("/os/processes")).json()["data"]
                if procs and procs[0]["num_output_tokens"] >= 2:
                    break
                await asyncio.sleep(0.05)
            during = await asyncio.to_thread(Reading, server_url)
            (proc,) = procs
            await client.delete(f"/os/processes/{proc['pid']}")
            return during, proc, await task

    during, proc, result = asyncio.run(run())
    assert result.errors and result.errors[0]["error"]["code"] == "process_killed"
    s = during.stats
    assert s["num_running"] == 1 and s["num_live"] == 1 and s["queue_depth"] == 0, s
    num_computed = proc["num_prompt_tokens"] + proc["num_output_tokens"] - 1  # KV written
    assert s["kv_blocks_used"] >= -(-num_computed // block_size), (s, proc)
    assert s["kv_blocks_used"] + s["kv_blocks_free"] + s["kv_blocks_cached"] == s["kv_blocks_total"]
    assert s["kv_cache_usage"] == pytest.approx(s["kv_blocks_used"] / s["kv_blocks_total"])
    assert during.metrics.value("llmos:num_processes_running") == 1
    assert during.metrics.value("llmos:kv_blocks_used") >= s["kv_blocks_used"]  # scraped later
    assert during.stat_delta(before, "num_generated_tokens") >= proc["num_output_tokens"] >= 2

    assert wait_until(lambda: idle(server_url), 30)
    after = Reading(server_url)
    killed = after.metric_delta(before, "llmos:process_finished_total", finish_reason="killed")
    assert killed == 1
    assert after.metric_delta(before, "llmos:process_finished_total") == 1
    generated = after.stat_delta(before, "num_generated_tokens")
    assert after.metric_delta(before, "llmos:generation_tokens_total") == generated < 900
    _assert_pool_returned(after)


def test_the_scheduler_reports_its_policy_cost_and_predictor(
    http: httpx.Client, server_url: str
) -> None:
    _completion(http, "Scheduler probe: name one planet.", 3)
    reading = Reading(server_url)
    s = reading.stats
    assert s["policy"] == "llmos"
    assert 0 < s["schedule_share"] < 1 and 0 < s["schedule_s"] < s["tick_s"]
    assert s["predictor"]["num_records"] >= 1  # the probe's process, at least
    assert reading.metrics.value("llmos:scheduler_time_share", model_name="smollm2") > 0
    assert reading.metrics.value("llmos:scheduler_seconds_total", model_name="smollm2") > 0

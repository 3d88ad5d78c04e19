"""The OS admin API (/os), the probes and the tokenizer routes, against the shared server."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.serving import Scrape, idle, stream_sse, wait_until

pytestmark = pytest.mark.slow

LONG = {
    "model": "smollm2",
    "max_tokens": 900,
    "ignore_eos": True,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Count to a thousand."}],
}


async def _kill_while_streaming(url: str) -> tuple[object, list[dict[str, object]], dict]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        task = asyncio.create_task(stream_sse(client, "/v1/chat/completions", LONG))
        procs: list[dict[str, object]] = []
        for _ in range(600):
            procs = (await client.get("/os/processes")).json()["data"]
            if procs and procs[0]["num_output_tokens"] > 0:
                break
            await asyncio.sleep(0.05)
        pid = procs[0]["pid"]
        renice = (
            await client.post(f"/os/processes/{pid}/priority", json={"priority": "batch"})
        ).json()
        assert (await client.delete(f"/os/processes/{pid}")).json() == {"pid": pid, "killed": True}
        return await task, procs, renice


def test_ps_renice_kill_a_stream(server_url: str) -> None:
    result, procs, renice = asyncio.run(_kill_while_streaming(server_url))
    (proc,) = procs
    assert proc["state"] == "running" and proc["model"] and proc["owner"]
    assert renice == {"pid": proc["pid"], "priority": "batch"}
    assert result.done and result.errors  # type: ignore[attr-defined]
    assert result.errors[0]["error"]["code"] == "process_killed"  # type: ignore[attr-defined]
    assert wait_until(lambda: idle(server_url), 30)


def test_kill_non_stream_gets_503_no_retry(server_url: str) -> None:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
            task = asyncio.create_task(client.post("/v1/chat/completions", json=LONG))
            for _ in range(600):
                procs = (await client.get("/os/processes")).json()["data"]
                if procs:
                    await client.delete(f"/os/processes/{procs[0]['pid']}")
                    break
                await asyncio.sleep(0.05)
            return await task

    r = asyncio.run(run())
    assert r.status_code == 503 and r.json()["error"]["code"] == "process_killed"
    assert r.headers.get("x-should-retry") == "false"


def test_stats(http: httpx.Client) -> None:
    stats = http.get("/os/stats").json()
    used, free, cached = stats["kv_blocks_used"], stats["kv_blocks_free"], stats["kv_blocks_cached"]
    assert used + free + cached == stats["kv_blocks_total"] > 0
    assert stats["kv_cache_usage"] == pytest.approx(used / stats["kv_blocks_total"])
    assert stats["queue_depth"] == stats["num_waiting"] == 0 and stats["num_running"] == 0
    assert stats["tokens_per_s"] >= 0 and 0 <= stats["prefix_cache_hit_rate"] <= 1
    assert stats["models"] and stats["default_model"] in stats["model"]


def test_prefix_cache_shows_in_usage(http: httpx.Client) -> None:
    system = "You are a helpful assistant who answers briefly. " * 8
    body = {
        "model": "smollm2",
        "max_tokens": 2,
        "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
    }
    http.post("/v1/chat/completions", json=body)
    second = http.post("/v1/chat/completions", json=body).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert http.get("/os/stats").json()["prefix_cache_hit_rate"] > 0


def test_probes_and_metrics(http: httpx.Client, server_url: str) -> None:
    for probe in ("/health", "/ready"):
        report = http.get(probe).json()
        assert report["status"] == "ok" and report["reasons"] == [], report
        assert all(m["state"] == "ok" for m in report.get("models", [])), report
    assert http.get("/version").json()["version"]
    before = Scrape(server_url)
    usage = http.post(
        "/v1/chat/completions",
        json={
            "model": "smollm2",
            "max_tokens": 3,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    ).json()["usage"]
    after = Scrape(server_url)
    assert usage["completion_tokens"] == 3
    for name in (
        "llmos:num_processes_running",
        "llmos:num_processes_waiting",
        "llmos:kv_cache_usage_perc",
        "llmos:prompt_tokens_total",
        "llmos:generation_tokens_total",
        "llmos:time_to_first_token_seconds_bucket",
        "llmos:inter_token_latency_seconds_bucket",
        "llmos:e2e_request_latency_seconds_bucket",
        "llmos:num_preemptions_total",
        "llmos:process_finished_total",
    ):
        assert name in after.names(), name
    moved = {
        name: after.value(name) - before.value(name)
        for name in (
            "llmos:generation_tokens_total",
            "llmos:prompt_tokens_total",
            "llmos:process_finished_total",
            "llmos:e2e_request_latency_seconds_count",
        )
    }
    assert moved == {
        "llmos:generation_tokens_total": 3,
        "llmos:prompt_tokens_total": usage["prompt_tokens"],
        "llmos:process_finished_total": 1,
        "llmos:e2e_request_latency_seconds_count": 1,
    }
    assert after.value("llmos:num_processes_running") == 0
    assert after.value("llmos:kernel_alive") == 1


def test_tokenizer_routes(http: httpx.Client) -> None:
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] and info["model_max_length"] > 0
    tokens = http.post(
        "/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}
    ).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "Hello world"
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] > tokens["count"]

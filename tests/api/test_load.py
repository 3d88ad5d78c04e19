"""Acceptance 3 (shared server): 32 concurrent streams all end with [DONE]; 16 clients that
disconnect mid-stream leave no live process and no used KV block behind (seen via /os/stats)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from tests.serving import Scrape, StreamResult, idle, stream_sse, wait_until

pytestmark = pytest.mark.slow


def _body(i: int, max_tokens: int, **extra: object) -> dict[str, object]:
    return {
        "model": "smollm2",
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"Request {i}: say something short."}],
        **extra,
    }


async def _many(
    server_url: str, bodies: list[dict[str, object]], max_events: int | None = None
) -> list[StreamResult]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=server_url, timeout=300, limits=limits) as client:
        return await asyncio.gather(
            *(stream_sse(client, "/v1/chat/completions", b, max_events=max_events) for b in bodies)
        )


def test_32_concurrent_streams_all_finish(server_url: str) -> None:
    bodies = [_body(i, 12, stream_options={"include_usage": True}) for i in range(32)]
    results = asyncio.run(_many(server_url, bodies))
    for r in results:
        assert r.status == 200 and r.done and not r.errors
        assert r.finish_reasons and r.finish_reasons[0] in ("stop", "length")
        usage = r.events[-1]["usage"]
        assert isinstance(usage, dict) and 1 <= usage["completion_tokens"] <= 12
    assert wait_until(lambda: idle(server_url), 30)


def test_disconnecting_clients_leave_nothing_behind(server_url: str) -> None:
    before = Scrape(server_url)
    bodies = [_body(i, 400, ignore_eos=True) for i in range(16)]
    results = asyncio.run(_many(server_url, bodies, max_events=3))
    assert all(r.status == 200 and len(r.events) == 3 and not r.done for r in results)
    assert wait_until(lambda: idle(server_url), 30), httpx.get(f"{server_url}/os/stats").json()
    after = Scrape(server_url)
    finished = "llmos:process_finished_total"
    killed = after.value(finished, finish_reason="killed") - before.value(
        finished, finish_reason="killed"
    )
    assert killed == 16 and after.value(finished) - before.value(finished) == 16
    generated = "llmos:generation_tokens_total"
    assert after.value(generated) - before.value(generated) < 16 * 400


def test_non_stream_disconnect_kills_the_process(server_url: str) -> None:
    """A client that hangs up on a non-streaming request gets its process killed: the process
    leaves the table long before it could have made max_tokens tokens, and its blocks return."""
    max_tokens = 900
    before = httpx.get(f"{server_url}/os/stats").json()
    before_killed = Scrape(server_url).value("llmos:process_finished_total", finish_reason="killed")

    async def hang_up() -> int:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
            request = asyncio.create_task(
                client.post("/v1/chat/completions", json=_body(0, max_tokens, ignore_eos=True))
            )
            procs: list[dict[str, Any]] = []
            for _ in range(600):
                procs = (await client.get("/os/processes")).json()["data"]
                if procs and int(procs[0]["num_output_tokens"]) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert procs and not request.done()
            request.cancel()  # closes the connection: the server sees http.disconnect
            with contextlib.suppress(asyncio.CancelledError):
                await request
            return int(procs[0]["num_output_tokens"])

    num_before_hang_up = asyncio.run(hang_up())
    assert wait_until(lambda: idle(server_url), 30)
    after = httpx.get(f"{server_url}/os/stats").json()
    generated = after["num_generated_tokens"] - before["num_generated_tokens"]
    assert num_before_hang_up <= generated < max_tokens // 2, (num_before_hang_up, generated)
    assert after["num_finished"] - before["num_finished"] == 1
    killed = Scrape(server_url).value("llmos:process_finished_total", finish_reason="killed")
    assert killed - before_killed == 1
    assert after["kv_blocks_used"] == 0
    assert after["kv_blocks_free"] + after["kv_blocks_cached"] == after["kv_blocks_total"]

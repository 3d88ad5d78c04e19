"""Acceptance 3 (shared server): 32 concurrent streams all end with [DONE]; 16 clients that
disconnect mid-stream leave no live process and no used KV block behind (seen via /os/stats)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.serving import StreamResult, idle, stream_sse, wait_until

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
    bodies = [_body(i, 400, ignore_eos=True) for i in range(16)]
    results = asyncio.run(_many(server_url, bodies, max_events=3))
    assert all(r.status == 200 and len(r.events) == 3 and not r.done for r in results)
    assert wait_until(lambda: idle(server_url), 30), httpx.get(f"{server_url}/os/stats").json()
    metrics = httpx.get(f"{server_url}/metrics").text
    killed = [
        line
        for line in metrics.splitlines()
        if line.startswith("llmos:process_finished_total") and 'reason="killed"' in line
    ]
    assert killed and float(killed[0].split()[-1]) >= 16


def test_non_stream_disconnect_kills_the_process(server_url: str) -> None:
    body = _body(0, 900, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=1.5)
    assert wait_until(lambda: idle(server_url), 30)

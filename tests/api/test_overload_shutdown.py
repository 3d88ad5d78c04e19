"""Acceptance 3 (burst) and 4 (SIGTERM drain), each on its own small `llmos serve`.

The burst server admits 2 running + 4 waiting processes; a burst of 16 (4x the queue limit) must
get only 200s or 503s with Retry-After, never a hang or a 500. SIGTERM with streams in flight lets
them finish, refuses new work with 503, and exits 0 within the drain timeout; with a drain
timeout of 0 the streams get an error event and [DONE] instead.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import Scrape, ServerProcess, StreamResult, idle, stream_sse, wait_until

pytestmark = pytest.mark.slow

QUEUE = 4
SMALL = {"LLMOS_KERNEL__MAX_NUM_SEQS": "2"}


def _body(i: int, max_tokens: int, **extra: object) -> dict[str, object]:
    return {
        "model": "smollm2",
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
        **extra,
    }


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    server = ServerProcess("--max-queue", str(QUEUE), "--drain-timeout", "60", env=SMALL).start()
    yield server
    server.stop()


def test_burst_gets_200_or_503_with_retry_after(small_server: ServerProcess) -> None:
    url = small_server.url

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=_body(i, 6)) for i in range(4 * QUEUE))
            )

    before = Scrape(url)
    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected and len(rejected) < len(responses), statuses
    for r in rejected:
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"]["code"] == "server_is_overloaded"
    # Every request was answered (none hung past the client timeout): each admitted one ran to
    # its end and each refused one was counted, nothing else.
    accepted = [r for r in responses if r.status_code == 200]
    for r in accepted:
        assert 1 <= r.json()["usage"]["completion_tokens"] <= 6
    assert wait_until(lambda: idle(url), 30)
    after = Scrape(url)
    rejected_name = "llmos:admission_rejected_total"
    assert after.value(rejected_name, reason="queue_full") - before.value(
        rejected_name, reason="queue_full"
    ) == len(rejected)
    finished = "llmos:process_finished_total"
    assert after.value(finished) - before.value(finished) == len(accepted)
    generated = "llmos:generation_tokens_total"
    assert after.value(generated) - before.value(generated) == sum(
        r.json()["usage"]["completion_tokens"] for r in accepted
    )
    assert httpx.get(f"{url}/ready").status_code == 200


async def _streams_then_signal(
    server: ServerProcess, n: int, max_tokens: int
) -> tuple[list[StreamResult], httpx.Response | None, httpx.Response | None]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        tasks = [
            asyncio.create_task(
                stream_sse(client, "/v1/chat/completions", _body(i, max_tokens, ignore_eos=True))
            )
            for i in range(n)
        ]
        for _ in range(600):  # wait until every stream is admitted and running
            procs = (await client.get("/os/processes")).json()["data"]
            if len(procs) == n and all(p["num_output_tokens"] > 0 for p in procs):
                break
            await asyncio.sleep(0.05)
        server.signal(signal.SIGTERM)
        ready = refused = None
        try:  # with drain timeout 0 the listener may close before these are answered
            for _ in range(100):  # the drain starts within one uvicorn tick (0.1 s)
                ready = await client.get("/ready")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            refused = await client.post("/v1/chat/completions", json=_body(99, 4))
        except httpx.TransportError:
            pass
        results = await asyncio.gather(*tasks)
    return list(results), ready, refused


def test_sigterm_drains_streams_and_exits_0(small_server: ServerProcess) -> None:
    results, ready, refused = asyncio.run(_streams_then_signal(small_server, 2, 48))
    assert ready is not None and refused is not None
    assert ready.status_code == 503 and "draining" in ready.json()["reasons"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert "retry-after" in refused.headers
    for r in results:
        assert r.status == 200 and r.done and not r.errors
        assert r.finish_reasons == ["length"]
    assert small_server.wait(60) == 0


def test_sigterm_with_zero_drain_timeout_ends_streams_with_error_event() -> None:
    server = ServerProcess("--drain-timeout", "0", env=SMALL).start()
    try:
        results, _, _ = asyncio.run(_streams_then_signal(server, 2, 900))
        for r in results:
            assert r.status == 200 and r.done
            assert r.errors and r.errors[0]["error"]["type"] == "process_killed"  # type: ignore[index]
            # The drain did not wait for the streams: they end far short of max_tokens.
            assert len(r.events) < 900 // 2, len(r.events)
        assert server.wait(30) == 0
    finally:
        server.stop()

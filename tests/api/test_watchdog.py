"""The watchdog on a real `llmos serve` (issue 11, item 3): liveness by progress, not by the
process being up. A test-only fault makes a real tick block; `/ready` turns 503
`engine_stalled` within `kernel.watchdog_timeout_s` + 2 s, every thread's stack goes to the log,
the live stream ends with an error event, and past `kernel.watchdog_exit_s` the server exits
with status 70 (never 0) so systemd or Kubernetes restarts it. A tick that comes back clears it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from llmos.kernel.loop import EXIT_STALLED
from tests.serving import ServerProcess, StreamResult, stream_sse, wait_until

pytestmark = pytest.mark.slow
TIMEOUT_S = 1.5
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def start(exit_s: float) -> ServerProcess:
    env = {
        "LLMOS_TESTING": "1",
        "LLMOS_API__ENABLE_FAULT_INJECTION": "true",
        "LLMOS_KERNEL__WATCHDOG_TIMEOUT_S": str(TIMEOUT_S),
        "LLMOS_KERNEL__WATCHDOG_EXIT_S": str(exit_s),
    }
    return ServerProcess(env=env).start()


@pytest.fixture
def recovering() -> Iterator[ServerProcess]:
    srv = start(exit_s=0)
    try:
        yield srv
    finally:
        srv.stop()


def is_stalled(url: str) -> bool:
    r = httpx.get(f"{url}/ready", timeout=5)
    return r.status_code == 503 and "engine_stalled" in r.json()["reasons"]


async def hang_then_stream(url: str, hang_s: float) -> tuple[StreamResult, bool]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.post(
            "/os/debug/faults", json={"model": "smollm2", "kind": "hang", "hang_s": hang_s}
        )
        assert r.status_code == 200, r.text
        stream = asyncio.create_task(stream_sse(client, "/v1/chat/completions", BODY))
        # /ready must say so within the timeout + 2 s (polled, not timed).
        stalled = await asyncio.to_thread(wait_until, lambda: is_stalled(url), TIMEOUT_S + 2.0)
        return await stream, stalled


def test_a_hung_tick_is_reported_and_cleared(recovering: ServerProcess) -> None:
    url = recovering.url
    stream, stalled = asyncio.run(hang_then_stream(url, hang_s=6.0))
    assert stalled
    assert stream.status == 200 and stream.done
    assert [e["error"]["code"] for e in stream.errors] == ["process_failed"]  # type: ignore[index]
    assert "stalled" in str(stream.errors[0])
    log = recovering.log()
    assert "Thread stacks" in log and "llmos-engine" in log and "_fault_point" in log
    # New work is refused while the driver is stuck, with a retry hint.
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stalled"
    assert "Retry-After" in r.headers
    # The tick returns: ready again, and requests are served.
    assert wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, timeout_s=30)
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
    assert r.status_code == 200, r.text
    assert wait_until(lambda: httpx.get(f"{url}/os/stats").json()["num_live"] == 0)
    stalls = httpx.get(f"{url}/os/events", params={"kind": "engine_stalled"}).json()["data"]
    assert [e["severity"] for e in stalls] == ["error", "info"]  # stalled, then recovered


def test_a_tick_stuck_past_the_exit_limit_exits_non_zero() -> None:
    srv = start(exit_s=4.0)
    try:
        stream, stalled = asyncio.run(hang_then_stream(srv.url, hang_s=600.0))
        assert stalled and stream.errors
        assert srv.wait(timeout_s=60) == EXIT_STALLED != 0
        assert "watchdog_exit_s" in srv.log()
    finally:
        srv.stop()

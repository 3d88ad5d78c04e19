"""Fault injection (RELIABILITY F4) at the driver: the real SmolLM2 engine runs in this process
and only its `step` is patched to fail on demand.

An exception the engine cannot attribute to a batch (its state is unknown) ends that engine's
live requests with an error, and the engine is rebuilt: `/health` stays 200 and later requests
are served. Only the driver itself going down (a BaseException such as SystemExit in a tick)
kills the kernel: `/health` turns 503 and later requests get 503 `kernel_dead` with
`x-should-retry: false`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmos.api.app import create_app
from llmos.config import Settings
from llmos.kernel.engine import Engine
from llmos.system import load_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    settings = Settings(
        memory={"kv_cache_bytes": 32 << 20, "swap_bytes": 0}, kernel={"max_model_len": 512}
    )
    yield load_engine("smollm2", settings)


class DriverDown(BaseException):
    """Not an Exception: what a tick raises when the process itself is going down."""


async def _scenario(engine: Engine, fault: BaseException) -> dict[str, Any]:
    app = create_app(engine, Settings(security={"auth": "none"}))
    ctx = app.state.llmos
    ctx.loop.start()
    real_step = engine.step
    ticks = 0

    def failing_step() -> list[Any]:
        nonlocal ticks
        ticks += 1
        if ticks == 4:
            raise fault
        return real_step()

    engine.step = failing_step  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app)
    body = {
        "model": "smollm2",
        "max_tokens": 50,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
            health = await client.get("/health")
            after = await client.post("/v1/chat/completions", json={**body, "stream": False})
            for _ in range(200):  # a rebuild takes a backoff second and a model load
                if after.json().get("error", {}).get("code") != "engine_restarting":
                    break
                await asyncio.sleep(0.1)
                after = await client.post("/v1/chat/completions", json={**body, "stream": False})
            return {
                "lines": lines,
                "health": health,
                "after": after,
                "metrics": (await client.get("/metrics")).text,
            }
    finally:
        engine.step = real_step  # type: ignore[method-assign]
        ctx.loop.stop()


def test_an_unknown_tick_failure_rebuilds_only_that_engine(engine: Engine) -> None:
    result = asyncio.run(_scenario(engine, RuntimeError("injected fault in the model runner")))
    lines = result["lines"]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "injected fault in the model runner" in lines[-2]
    assert result["health"].status_code == 200
    after = result["after"]
    assert after.status_code == 200, after.text
    assert after.json()["usage"]["completion_tokens"] == 50
    assert 'llmos:engine_restarts_total{model_name="smollm2"} 1.0' in result["metrics"]


def test_the_driver_going_down_kills_the_kernel_cleanly(engine: Engine) -> None:
    result = asyncio.run(_scenario(engine, DriverDown("the driver is going down")))
    lines = result["lines"]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "kernel dead" in lines[-2]
    assert result["health"].status_code == 503
    assert result["health"].json()["reasons"] == ["kernel_dead"]
    after = result["after"]
    assert after.status_code == 503 and after.json()["error"]["code"] == "kernel_dead"
    assert after.headers["x-should-retry"] == "false"

"""Fault injection (RELIABILITY F4): when an engine tick raises, every live request gets an error,
`/health` turns 503 and later requests get 503 `kernel_dead` with `x-should-retry: false`.

The real SmolLM2 engine runs in this process; only its `step` is patched to fail on demand.
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


async def _scenario(engine: Engine) -> dict[str, Any]:
    app = create_app(engine, Settings(security={"auth": "none"}))
    ctx = app.state.llmos
    ctx.loop.start()
    real_step = engine.step
    ticks = 0

    def failing_step() -> list[Any]:
        nonlocal ticks
        ticks += 1
        if ticks > 3:
            raise RuntimeError("injected fault in the model runner")
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
            return {
                "lines": lines,
                "health": health,
                "after": after,
                "metrics": (await client.get("/metrics")).text,
            }
    finally:
        engine.step = real_step  # type: ignore[method-assign]
        ctx.loop.stop()


def test_tick_failure_kills_the_kernel_cleanly(engine: Engine) -> None:
    result = asyncio.run(_scenario(engine))
    lines = result["lines"]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "kernel dead" in lines[-2]
    assert result["health"].status_code == 503
    assert result["health"].json()["reasons"] == ["kernel_dead"]
    after = result["after"]
    assert after.status_code == 503 and after.json()["error"]["code"] == "kernel_dead"
    assert after.headers["x-should-retry"] == "false"
    assert 'llmos:kernel_alive{model_name="smollm2"} 0.0' in result["metrics"]

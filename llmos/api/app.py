"""The FastAPI application: routers, error handlers, body limit, and the engine loop's lifetime.

`create_app(engine, settings)` is all a server or a test needs: `engine` is the model resident
from the start (its id is the default model), and any other registry model is loaded on demand
(`llmos.kernel.residency`). The engine loop starts with the app's lifespan and stops (killing
what is still live) when the app shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

import llmos
from llmos.api.auth import authorize
from llmos.api.deps import ServerContext
from llmos.api.errors import register_error_handlers
from llmos.api.middleware import BodyLimitMiddleware
from llmos.api.openai import chat, completions, models, tokenizer
from llmos.api.openapi import install_openapi
from llmos.api.os import events, probes, processes, reservations, residency, security, stats
from llmos.api.os import models as os_models
from llmos.config import Settings
from llmos.kernel.residency import ServedEngine
from llmos.monitor.events import EventKind
from llmos.system import build_serving, start_residency

logger = logging.getLogger(__name__)

ROUTERS = (
    chat.router,
    completions.router,
    models.router,
    tokenizer.router,
    processes.router,
    stats.router,
    probes.router,
    security.router,
    reservations.router,
    os_models.router,
    events.router,
    residency.router,
)


def create_app(
    engine: Any,
    settings: Settings | None = None,
    *,
    aliases: Iterable[str] = (),
    guard: Any = None,
    pids: Iterator[int] | None = None,
) -> FastAPI:
    """An app serving `engine` (an `llmos.kernel.engine.Engine`) and the registry under
    `settings`; `pids` is the counter `engine` draws its pids from (engines loaded later share
    it, so a pid names one process).

    With `security.auth == "keys"` every non-public route needs an API key; `guard` (a
    `llmos.security.guard.Guard`) is opened from `settings` when not given.
    """
    settings = settings or Settings()
    ctx = build_context(engine, settings, aliases=aliases, pids=pids)
    if settings.security.auth == "keys":
        from llmos.security.guard import Guard

        ctx.guard = guard or Guard.open(settings, events=ctx.events)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.loop.start()
        await asyncio.to_thread(start_residency, ctx.residency, ctx.settings)
        if ctx.allotments is not None:
            ctx.allotments.start()
        ctx.events.record(
            EventKind.SERVER_STARTED,
            message=f"llmos {llmos.__version__} started (pid {os.getpid()}), serving "
            f"{ctx.default_model}",
            version=llmos.__version__,
            pid=os.getpid(),
        )
        try:
            yield
        finally:
            ctx.events.record(
                EventKind.SERVER_STOPPING,
                message=f"server stopping ({ctx.loop.num_live} live processes)",
                num_live=ctx.loop.num_live,
            )
            if ctx.allotments is not None:
                await asyncio.to_thread(ctx.allotments.stop)
            await asyncio.to_thread(ctx.loop.stop)
            ctx.residency.close()
            if ctx.guard is not None:
                await asyncio.to_thread(ctx.guard.close)  # flush queued audit rows
            await asyncio.to_thread(ctx.events.close)  # write queued events

    app = FastAPI(
        title="llmos",
        version=llmos.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by llmos.api.os.security behind a key
        dependencies=[Depends(authorize)],
        description="OpenAI-compatible API and the llmos OS admin API.",
    )
    app.state.llmos = ctx
    register_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.api.enable_fault_injection:
        from llmos.api.os import debug

        app.include_router(debug.router)
    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.api.max_body_bytes)
    return app


def build_context(
    engine: ServedEngine,
    settings: Settings,
    *,
    aliases: Iterable[str] = (),
    pids: Iterator[int] | None = None,
) -> ServerContext:
    system = build_serving(engine, settings, aliases=aliases, pids=pids)
    return ServerContext(
        loop=system.loop,
        residency=system.residency,
        source=system.source,
        settings=settings,
        metrics=system.metrics,
        default_model=system.default_model,
        events=system.events,
        allotments=system.allotments,
    )

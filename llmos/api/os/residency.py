"""Residency over HTTP: why each model is resident (`GET /os/residency`, `llmos models ps`) and
admin pins (`POST` / `DELETE /os/models/{name}/pin`, `llmos models pin|unpin`).

Thin: the residency manager decides and explains; these routes resolve the name, call it off the
event loop and audit what changed. A pin that cannot fit is 409 with the numbers; a pinned model
that cannot be loaded now stays pinned and the answer says why (`note`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request

from llmos.api.auth import record_action
from llmos.api.deps import ServerContext, get_context
from llmos.api.openapi import responses
from llmos.api.os.responses import Pinned, ResidencyReport
from llmos.errors import LlmosError, NotFound

router = APIRouter(tags=["models"])


@router.get("/os/residency", response_model=None, responses=responses(ResidencyReport))
async def residency(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Each resident, loading or pinned model and why: pinned, reserved, busy, loading,
    preloaded, predicted demand (requests in the next window), recently used; with memory."""
    r = ctx.residency
    infos = await asyncio.to_thread(r.report)
    return {
        "object": "list",
        "data": [dataclasses.asdict(i) for i in infos],
        "max_resident_models": r.max_resident,
        "memory_budget_bytes": r.memory_budget_bytes,
        "used_bytes": r.used_bytes(),
        "demand_window_s": r.demand.window_s,
        "is_preloading": r.is_preloading,
        "preload_min_requests": r.preload_min_requests,
        "num_loads_on_demand": r.num_loads_on_demand,
        "num_preloads": r.num_preloads,
    }


@router.post("/os/models/{name}/pin", response_model=None, responses=responses(Pinned, 404, 409))
async def pin_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Pin a model resident: it is loaded now if need be (the answer waits for the load) and
    never unloaded until unpinned, across restarts. 409 with the numbers when the pinned models
    would not all fit kernel.max_resident_models or the memory budget."""
    model_id = await ctx.resolve_model(name)
    future = await asyncio.to_thread(ctx.residency.pin_model, model_id)
    record_action(request, "models.pin", model_id)
    note = None
    try:
        await asyncio.shield(asyncio.wrap_future(future))
    except LlmosError as exc:  # stays pinned; loaded when it can be (the planner retries)
        note = exc.message
    state = "resident" if ctx.residency.is_resident(model_id) else "not_loaded"
    return {"model": model_id, "pinned": True, "state": state, "note": note}


@router.delete("/os/models/{name}/pin", response_model=None, responses=responses(Pinned, 404, 409))
async def unpin_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Unpin a model: it stays resident until room is needed (404 if it was not pinned)."""
    model_id = ctx.residency.lookup(name) or name
    if model_id not in ctx.residency.pinned:
        model_id = await ctx.resolve_model(name)
    if not await asyncio.to_thread(ctx.residency.unpin_model, model_id):
        raise NotFound(
            f"The model {model_id} is not pinned.",
            code="model_not_pinned",
            param="name",
            hint="see `llmos models ps` or GET /os/residency",
        )
    record_action(request, "models.unpin", model_id)
    state = "resident" if ctx.residency.is_resident(model_id) else "not_loaded"
    return {"model": model_id, "pinned": False, "state": state, "note": None}

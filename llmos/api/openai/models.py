"""GET /v1/models and GET /v1/models/{id}: what this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from llmos.api.auth import authorize, may_use_model
from llmos.api.deps import ServerContext, get_context
from llmos.errors import NotFound
from llmos.security.principals import Principal

router = APIRouter()


def model_card(ctx: ServerContext) -> dict[str, Any]:
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": int(ctx.started_s),
        "owned_by": "llmos",
        "max_model_len": ctx.engine.max_model_len,
        "aliases": sorted(ctx.aliases),
    }


@router.get("/v1/models")
async def list_models(
    ctx: ServerContext = Depends(get_context), principal: Principal = Depends(authorize)
) -> dict[str, Any]:
    """The models this server can answer for (those granted to you)."""
    cards = [model_card(ctx)] if await may_use_model(ctx, principal) else []
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}")
async def get_model(
    model_id: str,
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
) -> dict[str, Any]:
    """One served model by id or alias (404 `model_not_found` otherwise, or if not granted)."""
    ctx.resolve_model(model_id)
    if not await may_use_model(ctx, principal):
        raise NotFound(
            f"The model {model_id[:64]!r} does not exist or is not available to you.",
            code="model_not_found",
            param="model",
        )
    return model_card(ctx)

"""GET /v1/models and GET /v1/models/{id}: what this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from llmos.api.deps import ServerContext, get_context

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
async def list_models(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """The models this server can answer for."""
    return {"object": "list", "data": [model_card(ctx)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """One served model by id or alias (404 `model_not_found` otherwise)."""
    ctx.resolve_model(model_id)
    return model_card(ctx)

"""GET /v1/models and GET /v1/models/{id}: every model this server can answer for.

That is the registry (any stored model is loaded on demand) plus a start model served from a
path; each caller sees only the models granted to them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from llmos.api.auth import authorize, granted_model, may_use_model
from llmos.api.deps import ServerContext, get_context
from llmos.api.openai.responses import ModelCard, ModelList
from llmos.api.openapi import responses
from llmos.kernel.params import defaults_in_use
from llmos.security.principals import Principal
from llmos.storage.manifest import ModelManifest
from llmos.storage.names import ModelRef, display_id

router = APIRouter()


def model_card(ctx: ServerContext, model_id: str, m: ModelManifest | None) -> dict[str, Any]:
    engine = ctx.residency.engine(model_id)
    if engine is not None:
        max_model_len = engine.max_model_len
        profile: dict[str, Any] = engine.profile
    else:
        profile = m.profile.model_dump(exclude_none=True) if m and m.profile else {}
        trained = m.context_length if m is not None else ctx.settings.kernel.max_model_len
        max_model_len = min(
            ctx.settings.kernel.max_model_len, trained, profile.get("context_length") or trained
        )
    defaults = defaults_in_use(profile)
    return {
        "id": model_id,
        "object": "model",
        "created": int(m.created_at.timestamp()) if m is not None else int(ctx.started_s),
        "owned_by": "llmos",
        "max_model_len": max_model_len,
        "aliases": ctx.residency.aliases_of(model_id),
        "resident": engine is not None,
        "defaults": {name: value for name, (value, _) in defaults.items()},
        "defaults_source": {name: source for name, (_, source) in defaults.items()},
        "system_prompt": profile.get("system"),
    }


async def catalog(ctx: ServerContext) -> dict[str, ModelManifest | None]:
    """Every model id served here -> its manifest (None for a start model read from a path),
    the default model first."""
    manifests = await asyncio.to_thread(lambda: ctx.registry.list())
    found: dict[str, ModelManifest | None] = {
        display_id(ModelRef(m.name, m.tag)): m for m in manifests
    }
    for model_id in ctx.residency.resident_ids:
        found.setdefault(model_id, None)
    order = sorted(found, key=lambda i: (i != ctx.default_model, i))
    return {i: found[i] for i in order}


@router.get("/v1/models", response_model=None, responses=responses(ModelList))
async def list_models(
    ctx: ServerContext = Depends(get_context), principal: Principal = Depends(authorize)
) -> dict[str, Any]:
    """The models this server can answer for (those granted to you), the default first;
    `resident` says which are loaded now (others load on their first request)."""
    cards = [
        model_card(ctx, model_id, m)
        for model_id, m in (await catalog(ctx)).items()
        if await may_use_model(ctx, principal, model_id)
    ]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}", response_model=None, responses=responses(ModelCard, 404))
async def get_model(
    model_id: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """One model by id or alias (404 `model_not_found` otherwise, or if not granted)."""
    found = await granted_model(ctx, request, model_id)
    return model_card(ctx, found, (await catalog(ctx)).get(found))

"""The registry over HTTP: GET /os/models, GET /os/models/{name}, POST .../verify, DELETE.

Thin: each route opens the registry in the server's data dir and calls one Registry method in a
worker thread (hashing a model's blobs takes a while). The resident model cannot be removed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from llmos.api.auth import record_action
from llmos.api.deps import ServerContext, get_context
from llmos.errors import Conflict
from llmos.storage.manifest import ModelManifest
from llmos.storage.registry import Registry
from llmos.storage.store import Storage

router = APIRouter(tags=["models"])


def _registry(ctx: ServerContext) -> Registry:
    return Registry(Storage(ctx.settings.storage))


def _card(m: ModelManifest, ctx: ServerContext) -> dict[str, Any]:
    return {
        "id": m.ref,
        "name": m.name,
        "tag": m.tag,
        "format": m.format,
        "architecture": m.architecture,
        "parameters": m.parameters,
        "quantization": m.quantization,
        "size_bytes": m.size_bytes,
        "parent": m.parent,
        "source": m.source,
        "created_at": m.created_at.isoformat(),
        "resident": m.name == ctx.model_name or m.ref == ctx.model_name,
    }


@router.get("/os/models")
async def list_models(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every model in the registry, with which one is resident."""
    manifests = await asyncio.to_thread(lambda: _registry(ctx).list())
    return {"object": "list", "data": [_card(m, ctx) for m in manifests]}


@router.get("/os/models/{name}")
async def show_model(name: str, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """One stored model's manifest (404 if the registry has no such name)."""
    m = await asyncio.to_thread(lambda: _registry(ctx).show(name))
    return {**_card(m, ctx), "config": m.config, "files": [f.model_dump() for f in m.files]}


@router.post("/os/models/{name}/verify")
async def verify_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Re-hash every blob of a stored model; `ok` is false and `bad_files` names the damage."""
    results = await asyncio.to_thread(lambda: _registry(ctx).verify(name))
    record_action(request, "models.verify", name, ok=all(r.is_ok for r in results))
    r = results[0]
    return {"id": r.ref, "ok": r.is_ok, "bad_files": r.bad_files}


@router.delete("/os/models/{name}")
async def remove_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Remove a stored model (its blobs go at the next gc); the resident one is refused."""
    registry = _registry(ctx)
    m = await asyncio.to_thread(lambda: registry.show(name))
    if _card(m, ctx)["resident"]:
        raise Conflict(f"{m.ref} is the resident model of this server; stop serving it first.")
    await asyncio.to_thread(lambda: registry.remove(name))
    record_action(request, "models.remove", m.ref)
    return {"id": m.ref, "deleted": True}

"""The registry over HTTP: GET /os/models, GET /os/models/{name}, POST .../verify, DELETE.

Thin: each route calls one Registry method in a worker thread (hashing a model's blobs takes a
while). A resident model is unloaded before it is removed (409 while it has live processes); the
server's default model is never removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request

from llmos.api.auth import record_action
from llmos.api.deps import ServerContext, get_context
from llmos.errors import Conflict, InvalidRequest
from llmos.kernel.residency import display_id
from llmos.storage.manifest import ModelManifest
from llmos.storage.names import ModelRef

router = APIRouter(tags=["models"])
T = TypeVar("T")


def _card(m: ModelManifest, ctx: ServerContext) -> dict[str, Any]:
    model_id = display_id(ModelRef(m.name, m.tag))
    return {
        "id": m.ref,
        "name": m.name,
        "tag": m.tag,
        "model": model_id,  # the name to use in /v1 requests
        "format": m.format,
        "architecture": m.architecture,
        "parameters": m.parameters,
        "quantization": m.quantization,
        "size_bytes": m.size_bytes,
        "parent": m.parent,
        "source": m.source,
        "created_at": m.created_at.isoformat(),
        "resident": ctx.residency.is_resident(model_id),
    }


async def _run(fn: Callable[[], T]) -> T:
    """Run a storage call in a worker thread; file-system errors become a 400 naming them."""
    try:
        return await asyncio.to_thread(fn)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise InvalidRequest(f"Cannot do that on the server's file system:{where}: "
                             f"{exc.strerror or exc}.") from None  # fmt: skip


@router.get("/os/models")
async def list_models(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every model in the registry, with which ones are resident."""
    manifests = await _run(ctx.registry.list)
    return {"object": "list", "data": [_card(m, ctx) for m in manifests]}


@router.get("/os/models/{name}")
async def show_model(name: str, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """One stored model's manifest (404 if the registry has no such name)."""
    m = await _run(lambda: ctx.registry.show(name))
    return {**_card(m, ctx), "config": m.config, "files": [f.model_dump() for f in m.files]}


@router.post("/os/models/{name}/verify")
async def verify_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Re-hash every blob of a stored model; `ok` is false and `bad_files` names the damage."""
    results = await _run(lambda: ctx.registry.verify(name))
    record_action(request, "models.verify", name, ok=all(r.is_ok for r in results))
    r = results[0]
    return {"id": r.ref, "ok": r.is_ok, "bad_files": r.bad_files}


@router.delete("/os/models/{name}")
async def remove_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Remove a stored model (its blobs go at the next gc). A resident model is unloaded first
    (409 while it has live processes); the server's default model is refused (409)."""
    registry = ctx.registry
    m = await _run(lambda: registry.show(name))
    model_id = display_id(ModelRef(m.name, m.tag))
    if model_id == ctx.default_model:
        raise Conflict(
            f"{m.ref} is this server's default model; it stays while the server runs.",
            hint="restart the server with another --model first",
        )
    was_resident = await _run(
        lambda: ctx.residency.unload(model_id, then=lambda: registry.remove(m.ref))
    )
    record_action(request, "models.remove", m.ref, unloaded=was_resident)
    return {"id": m.ref, "deleted": True, "unloaded": was_resident}

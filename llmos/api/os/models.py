"""The registry over HTTP, the same operations as `llmos models`: list, show, import, tag, export,
verify, remove.

Thin: each route calls one Registry method in a worker thread (hashing and copying take a while)
and audits what changed. Import and export name paths on the server machine, so they need the
admin-only `models:files` permission; paths must be absolute, and every unreadable, unwritable or
malformed input is a 4xx; a full disk or a failing write is 507 `insufficient_storage`, with
nothing stored. A resident model is unloaded before it is removed or replaced (409 while it has
live processes); the server's default model is never removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.auth import record_action
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openapi import responses
from llmos.api.os.responses import (
    Exported,
    Removed,
    StoredModel,
    StoredModelDetail,
    StoredModelList,
    Verified,
)
from llmos.errors import Conflict, InvalidRequest
from llmos.storage.manifest import ModelManifest
from llmos.storage.names import ModelRef, display_id
from llmos.storage.packages import is_package_source

router = APIRouter(tags=["models"])
T = TypeVar("T")
MAX_PATH_CHARS = 4096


class ImportRequest(BaseModel):
    """Admin bodies reject unknown fields (unlike `/v1`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    source: str = Field(
        max_length=MAX_PATH_CHARS,
        description="An absolute path on the server (GGUF file or HF safetensors folder), or "
        "pkg:NAME (an installed package that ships a model).",
    )
    name: str | None = Field(None, max_length=200, description="name[:tag] to store it as.")
    parent: str | None = Field(None, max_length=200, description="Model it was derived from.")
    replace: bool = Field(False, description="Overwrite an existing name:tag.")


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=200, description="The new name[:tag].")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(
        max_length=MAX_PATH_CHARS,
        description="Absolute path on the server: a .gguf file or an existing folder (GGUF "
        "models), or a new or empty folder (HF models).",
    )


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
        what = f" {exc.filename}" if exc.filename else ""
        raise InvalidRequest(
            f"The server could not access{what}: {exc.strerror or exc}.",
            hint="check that the path exists and the server may read (import) or write (export) it",
        ) from None


def _absolute(text: str, param: str) -> Path:
    if "\x00" in text or not Path(text).is_absolute():
        raise InvalidRequest(
            f"{param} must be an absolute path on the server; got {text[:200]!r}.", param=param
        )
    return Path(text)


@router.get("/os/models", response_model=None, responses=responses(StoredModelList, 400))
async def list_models(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every model in the registry, with which ones are resident."""
    manifests = await _run(ctx.registry.list)
    return {"object": "list", "data": [_card(m, ctx) for m in manifests]}


@router.get("/os/models/{name}", response_model=None, responses=responses(StoredModelDetail, 404))
async def show_model(name: str, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """One stored model's manifest (404 if the registry has no such name)."""
    m = await _run(lambda: ctx.registry.show(name))
    profile = m.profile.model_dump(exclude_none=True) if m.profile is not None else None
    return {
        **_card(m, ctx),
        "config": m.config,
        "files": [f.model_dump() for f in m.files],
        "profile": profile,
    }


@router.post(
    "/os/models",
    openapi_extra=body_schema(ImportRequest),
    status_code=201,
    response_model=None,
    responses=responses(StoredModel, 404, 409, 507, status=201),
)
async def import_model(
    request: Request,
    body: ImportRequest = Depends(json_body(ImportRequest)),
    ctx: ServerContext = Depends(get_context),
) -> JSONResponse:
    """Import a model from a path on the server or an installed package (verified, deduplicated,
    atomic); 201 with its card. Replacing a resident model unloads it first."""
    source: str | Path = body.source
    if not is_package_source(body.source):
        source = _absolute(body.source, "source")
    registry = ctx.registry

    def store() -> ModelManifest:
        return registry.import_model(source, body.name, parent=body.parent, replace=body.replace)

    model_id = display_id(ModelRef.parse(body.name)) if body.name else None
    if body.replace and model_id is not None and ctx.residency.is_resident(model_id):
        holder: list[ModelManifest] = []
        await _run(lambda: ctx.residency.unload(model_id, then=lambda: holder.append(store())))
        m = holder[0]
    else:
        m = await _run(store)
    record_action(request, "models.import", m.ref, source=str(source), replace=body.replace)
    return JSONResponse(_card(m, ctx), status_code=201)


@router.post(
    "/os/models/{name}/tag",
    openapi_extra=body_schema(TagRequest),
    status_code=201,
    response_model=None,
    responses=responses(StoredModel, 404, 409, 507, status=201),
)
async def tag_model(
    name: str,
    request: Request,
    body: TagRequest = Depends(json_body(TagRequest)),
    ctx: ServerContext = Depends(get_context),
) -> JSONResponse:
    """Store a model under another name:tag too (a copy of the manifest; blobs are shared)."""
    m = await _run(lambda: ctx.registry.tag(name, body.name))
    record_action(request, "models.tag", m.ref, source=name)
    return JSONResponse(_card(m, ctx), status_code=201)


@router.post(
    "/os/models/{name}/export",
    openapi_extra=body_schema(ExportRequest),
    response_model=None,
    responses=responses(Exported, 404, 409, 507),
)
async def export_model(
    name: str,
    request: Request,
    body: ExportRequest = Depends(json_body(ExportRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Write a stored model to a path on the server (a GGUF file or an HF folder), verified
    while copying; an existing file is never overwritten (409)."""
    dest = _absolute(body.path, "path")
    m = await _run(lambda: ctx.registry.show(name))
    written = await _run(lambda: ctx.registry.export(name, dest))
    record_action(request, "models.export", m.ref, path=str(written))
    return {"id": m.ref, "path": str(written), "size_bytes": m.size_bytes}


@router.post("/os/models/{name}/verify", response_model=None, responses=responses(Verified, 404))
async def verify_model(
    name: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Re-hash every blob of a stored model; `ok` is false and `bad_files` names the damage."""
    results = await _run(lambda: ctx.registry.verify(name))
    record_action(request, "models.verify", name, ok=all(r.is_ok for r in results))
    r = results[0]
    return {"id": r.ref, "ok": r.is_ok, "bad_files": r.bad_files}


@router.delete(
    "/os/models/{name}", response_model=None, responses=responses(Removed, 404, 409, 507)
)
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

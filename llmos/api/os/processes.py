"""The process table over HTTP: list (`ps`), kill, renice."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.errors import NotFound
from llmos.kernel.process import Priority

router = APIRouter(prefix="/os", tags=["os"])


class ReniceRequest(BaseModel):
    """Admin bodies reject unknown fields (unlike `/v1`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    priority: str | int = Field(description="interactive, normal or batch (or 0, 1, 2).")


def _not_found(pid: int) -> NotFound:
    return NotFound(
        f"No live process with pid {pid}.",
        code="process_not_found",
        param="pid",
        hint="see GET /os/processes or `llmos ps`",
    )


@router.get("/processes")
async def list_processes(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every live process: pid, owner, model, priority, state, token counts, timings."""
    return {"object": "list", "data": [dataclasses.asdict(p) for p in ctx.loop.processes()]}


@router.delete("/processes/{pid}")
async def kill_process(pid: int, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Kill a live process; its client gets a `process_killed` error and its blocks are freed."""
    if not ctx.loop.kill(pid):
        raise _not_found(pid)
    return {"pid": pid, "killed": True}


@router.post("/processes/{pid}/priority", openapi_extra=body_schema(ReniceRequest))
async def renice_process(
    pid: int,
    body: ReniceRequest = Depends(json_body(ReniceRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Move a live process to another priority class."""
    priority = Priority.parse(body.priority)
    if not ctx.loop.renice(pid, priority):
        raise _not_found(pid)
    return {"pid": pid, "priority": priority.name.lower()}

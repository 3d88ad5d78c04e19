"""The process table over HTTP: list (`ps`), kill, renice.

Users see and touch only their own processes; another user's pid answers 404 like a pid that
does not exist (operators and admins see all). Kills and renices are audited.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.auth import authorize, check_priority, may_manage, record_action, visible_processes
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openapi import responses
from llmos.api.os.responses import Killed, ProcessList, Reniced
from llmos.errors import NotFound
from llmos.kernel.process import Priority
from llmos.security.principals import Principal

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


@router.get("/processes", response_model=None, responses=responses(ProcessList))
async def list_processes(
    ctx: ServerContext = Depends(get_context), principal: Principal = Depends(authorize)
) -> dict[str, Any]:
    """Every live process you may see: pid, owner, model, priority, state, tokens, timings."""
    procs = visible_processes(ctx, principal)
    return {"object": "list", "data": [dataclasses.asdict(p) for p in procs]}


@router.delete("/processes/{pid}", response_model=None, responses=responses(Killed, 404))
async def kill_process(
    pid: int,
    request: Request,
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
) -> dict[str, Any]:
    """Kill a live process; its client gets a `process_killed` error and its blocks are freed."""
    if not may_manage(ctx, principal, pid) or not ctx.loop.kill(pid):
        raise _not_found(pid)
    record_action(request, "process.kill", str(pid))
    return {"pid": pid, "killed": True}


@router.post(
    "/processes/{pid}/priority",
    openapi_extra=body_schema(ReniceRequest),
    response_model=None,
    responses=responses(Reniced, 404),
)
async def renice_process(
    pid: int,
    request: Request,
    body: ReniceRequest = Depends(json_body(ReniceRequest)),
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
) -> dict[str, Any]:
    """Move a live process to another priority class (within your quota's highest class)."""
    priority = Priority.parse(body.priority)
    if not may_manage(ctx, principal, pid):
        raise _not_found(pid)
    check_priority(principal, priority)
    if not ctx.loop.renice(pid, priority):
        raise _not_found(pid)
    record_action(request, "process.renice", str(pid), priority=priority.name.lower())
    return {"pid": pid, "priority": priority.name.lower()}

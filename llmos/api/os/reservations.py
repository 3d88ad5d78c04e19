"""Reservations and fair-share weights over HTTP (admins): list, reserve, unreserve, set a share.

A change is written to the database and handed to the kernel at once (the server re-reads the
database every `kernel.allotments_refresh_s` too, for changes made with the CLI). A reservation
is checked against the model's real pool when it is resident, else against the pool its stored
config and this server's settings give.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.auth import record_action
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openapi import responses
from llmos.api.os.responses import ReservationList, ReservationOut, User
from llmos.api.os.security import MAX_INT32, _guard, _user_json
from llmos.security.principals import Users
from llmos.security.reservations import Reservations, check_amount

router = APIRouter(prefix="/os", tags=["security"])


class NewReservation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user: str = Field(description="Who holds it.")
    model: str = Field(description="Model id, alias or name:tag.")
    blocks: int | None = Field(None, ge=1, le=MAX_INT32, description="KV blocks guaranteed.")
    fraction: float | None = Field(None, description="Or: a share of the pool, in (0, 1].")
    slots: int = Field(1, ge=1, le=MAX_INT32, description="Running processes guaranteed.")


class NewShare(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)
    share: float = Field(description="Fair-share weight in (0, 1000]; 1 is the default.")


async def _capacity(ctx: ServerContext, name: str) -> tuple[str, int, int]:
    """(model id, KV blocks of its pool, running slots): the resident engine's, else computed."""
    from llmos.system import model_capacity

    model_id = await ctx.resolve_model(name)
    engine = ctx.loop.engine(model_id)
    pool = getattr(engine, "pool", None)
    if pool is not None:
        return model_id, pool.num_blocks, ctx.settings.kernel.max_num_seqs
    return await asyncio.to_thread(model_capacity, model_id, ctx.settings)


async def _apply(ctx: ServerContext) -> None:
    if ctx.allotments is not None:
        await asyncio.to_thread(ctx.allotments.refresh)


@router.get("/reservations", response_model=None, responses=responses(ReservationList, 400))
async def list_reservations(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every reservation: user, model, blocks or fraction of the pool, slots (admins only)."""
    rows = await asyncio.to_thread(Reservations(_guard(ctx).db).list)
    return {"object": "list", "data": [dataclasses.asdict(r) for r in rows]}


@router.post(
    "/reservations",
    openapi_extra=body_schema(NewReservation),
    response_model=None,
    responses=responses(ReservationOut, 404, 409),
)
async def reserve(
    request: Request,
    body: NewReservation = Depends(json_body(NewReservation)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Guarantee a user KV blocks and running slots on a model (replacing theirs there); 409
    with the numbers when the model's reservations would exceed its pool or max_num_seqs."""
    db = _guard(ctx).db
    check_amount(body.blocks, body.fraction, body.slots)
    model_id, num_blocks, max_num_seqs = await _capacity(ctx, body.model)
    info = await asyncio.to_thread(
        Reservations(db).set,
        body.user.lower(),
        model_id,
        blocks=body.blocks,
        fraction=body.fraction,
        slots=body.slots,
        num_blocks=num_blocks,
        max_num_seqs=max_num_seqs,
    )
    record_action(request, "user.reserve", info.user, model=model_id, slots=body.slots,
                  blocks=body.blocks, fraction=body.fraction)  # fmt: skip
    await _apply(ctx)
    return dataclasses.asdict(info)


@router.delete(
    "/reservations/{user}/{model}",
    response_model=None,
    responses=responses(ReservationOut, 404),
)
async def unreserve(
    user: str, model: str, request: Request, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """Remove a user's reservation on a model."""
    from llmos.system import served_name

    model_id = served_name(model) or model
    info = await asyncio.to_thread(Reservations(_guard(ctx).db).remove, user.lower(), model_id)
    record_action(request, "user.unreserve", info.user, model=model_id)
    await _apply(ctx)
    return dataclasses.asdict(info)


@router.put(
    "/users/{name}/share",
    openapi_extra=body_schema(NewShare),
    response_model=None,
    responses=responses(User, 404),
)
async def set_share(
    name: str,
    request: Request,
    body: NewShare = Depends(json_body(NewShare)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Set a user's fair-share weight; it applies from the server's next tick."""
    info = await asyncio.to_thread(Users(_guard(ctx).db).set_share, name, body.share)
    record_action(request, "user.set_share", info.name, share=info.share)
    await _apply(ctx)
    return _user_json(info)

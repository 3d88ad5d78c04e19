"""POST /os/debug/faults: the test-only fault hook (`api.enable_fault_injection`).

Arms a fault inside the real tick of a resident model's engine: the next `count` ticks that run a
batch raise (`error`) or block for `hang_s` (`hang`), so tests can watch failure isolation, engine
restarts, the crash-loop state and the watchdog on a real server. The router is mounted only when
the setting is on, and `llmos serve` refuses the setting outside a test run (`LLMOS_TESTING=1`)
or on a non-loopback address.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.deps import ServerContext, get_context, json_body
from llmos.errors import ModelNotResident

router = APIRouter(prefix="/os/debug", tags=["debug"])


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A resident model.")
    kind: Literal["error", "hang"] = "error"
    count: int = Field(1, ge=1, le=10_000, description="How many ticks with a batch it hits.")
    hang_s: float = Field(0.0, ge=0, le=3600, description="How long a `hang` blocks the tick.")


class FaultArmed(BaseModel):
    model: str
    kind: str
    count: int


@router.post("/faults", response_model=FaultArmed)
async def arm_fault(
    body: FaultRequest = Depends(json_body(FaultRequest)),
    ctx: ServerContext = Depends(get_context),
) -> FaultArmed:
    """Arm a fault in a resident model's next ticks (test-only)."""
    model_id = await ctx.resolve_model(body.model)
    if not ctx.residency.is_resident(model_id):
        raise ModelNotResident(f"The model {model_id!r} is not resident.", param="model")
    ctx.loop.arm_fault(model_id, body.kind, body.count, body.hang_s)
    return FaultArmed(model=model_id, kind=body.kind, count=body.count)

"""Unauthenticated probes: GET /health (liveness), GET /ready (readiness), GET /metrics,
GET /version. They answer from the event loop alone, so they stay fast while the engine computes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import llmos
from llmos.api.deps import ServerContext, get_context
from llmos.api.openapi import responses
from llmos.api.os.responses import Health, Version
from llmos.monitor.health import HealthReport, liveness, readiness
from llmos.monitor.metrics import CONTENT_TYPE
from llmos.storage.space import is_disk_low

router = APIRouter(tags=["probes"])
_HEALTH: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "ok"},
    503: {"model": Health, "description": "not ready or dead, with the reasons"},
}


def _report(report: HealthReport) -> JSONResponse:
    body: dict[str, Any] = {"status": report.status, "reasons": report.reasons}
    if report.models:
        body["models"] = report.models
    return JSONResponse(body, status_code=200 if report.is_ok else 503)


@router.get("/health", response_model=None, responses=_HEALTH)
async def health(ctx: ServerContext = Depends(get_context)) -> JSONResponse:
    """Liveness: 200 while the engine loop runs, 503 once the kernel is dead."""
    return _report(liveness(ctx.loop))


@router.get("/ready", response_model=None, responses=_HEALTH)
async def ready(ctx: ServerContext = Depends(get_context)) -> JSONResponse:
    """Readiness: model resident, engine ticking, not draining; 503 with reasons otherwise.
    A crash-looping model or a data dir below `storage.min_free_bytes` (`disk_low`) answers
    200 `degraded`: the rest still serves."""
    is_low = is_disk_low(ctx.settings.storage)  # one statvfs: cheap enough for the event loop
    return _report(readiness(ctx.loop, models=ctx.residency.health(), is_disk_low=is_low))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: ServerContext = Depends(get_context)) -> Response:
    """Prometheus text exposition; every series is named `llmos:*`."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/version", response_model=None, responses=responses(Version))
async def version() -> dict[str, str]:
    return {"version": llmos.__version__}

"""GET /os/stats: the kernel at a glance (KV blocks, prefix cache, throughput, queue depth),
summed over the resident models, and the same per model under `models`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Depends

from llmos.api.deps import ServerContext, get_context
from llmos.api.openapi import responses
from llmos.api.os.responses import Stats

router = APIRouter(prefix="/os", tags=["os"])


@router.get("/stats", response_model=None, responses=responses(Stats))
async def get_stats(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """KV blocks used/free/cached, prefix-cache hit rate, tokens/s, queue depth and counters of
    all resident models together; `models` has each resident model's own numbers."""
    s = ctx.loop.stats()
    data = dataclasses.asdict(s)
    data.update(
        prefix_cache_hit_rate=s.prefix_cache_hit_rate,
        kv_cache_usage=s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0,
        tokens_per_s=round(ctx.loop.tokens_per_s(), 2),
        queue_depth=s.num_waiting,
        num_live=ctx.loop.num_live,
        max_live=ctx.loop.max_running + ctx.loop.max_waiting,
        is_draining=ctx.loop.is_draining,
        uptime_s=round(max(0.0, time.time() - ctx.started_s), 1),
        default_model=ctx.default_model,
        max_resident_models=ctx.residency.max_resident,
        policy=ctx.settings.kernel.policy,
        schedule_share=round(s.schedule_share, 5),
        predictor=(dataclasses.asdict(ctx.loop.predictor.stats()) if ctx.loop.predictor else None),
        models={name: dataclasses.asdict(m) for name, m in ctx.loop.stats_by_model().items()},
    )
    return data

"""GET /os/events: the event log (models loaded and evicted, engine failures, refusals, keys),
filtered, oldest first, with the cursor to poll from next (`llmos events --follow`)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from llmos.api.deps import ServerContext, get_context
from llmos.errors import InvalidRequest
from llmos.monitor.events import EventKind, EventPage

router = APIRouter(prefix="/os", tags=["os"])
FLUSH_TIMEOUT_S = 5.0
_SEQ = re.compile(r"^[0-9]{1,18}$")  # ASCII digits that fit a 64-bit integer


class EventOut(BaseModel):
    seq: int = Field(description="Position in the log; pass it as `since` to read what follows.")
    ts: datetime = Field(description="When it happened (UTC).")
    kind: str = Field(description="What happened: model_loaded, model_evicted, ...")
    severity: str = Field(description="info, warning or error.")
    model: str | None = Field(description="The model it concerns, if any.")
    message: str = Field(description="One line for people, with the reason.")
    details: dict[str, Any] = Field(description="The same facts for scripts (reason, ...).")


class EventList(BaseModel):
    object: str = "list"
    data: list[EventOut]
    last_seq: int = Field(description="Poll again with `since` set to this for newer events.")


@router.get("/events", response_model=EventList)
async def list_events(
    ctx: ServerContext = Depends(get_context),
    since: str | None = Query(
        None,
        description="A seq (events after it, oldest first) or an ISO 8601 time (events from "
        "then on; UTC unless it has an offset); without it, the newest `limit` events.",
        max_length=64,
    ),
    kind: str | None = Query(None, description="Only this kind of event.", max_length=32),
    model: str | None = Query(None, description="Only events of this model.", max_length=130),
    limit: int = Query(100, ge=1, le=1000, description="Most events to return."),
) -> dict[str, Any]:
    """Events of this server's data dir, oldest first (admins only): loads, evictions and why,
    failed loads, engine failures, preemption storms, quota and rate-limit refusals, keys."""
    since_seq, since_ts = _parse_since(since)
    if kind is not None and kind not in {k.value for k in EventKind}:
        raise InvalidRequest(
            f"Unknown event kind {kind!r}; one of: {', '.join(EventKind)}.", param="kind"
        )
    log = ctx.events

    def read() -> EventPage:
        log.flush(FLUSH_TIMEOUT_S)  # what was recorded before this request is included
        return log.read(since_seq=since_seq, since=since_ts, kind=kind, model=model, limit=limit)

    page = await asyncio.to_thread(read)
    return {
        "object": "list",
        "data": [e.to_json() for e in page.events],
        "last_seq": page.last_seq,
    }


def _parse_since(text: str | None) -> tuple[int | None, datetime | None]:
    if text is None or not text.strip():
        return None, None
    text = text.strip()
    if _SEQ.match(text):
        return int(text), None
    try:
        ts = datetime.fromisoformat(text)
        return None, ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"`since` must be an event seq or an ISO 8601 time, got {text!r}.",
            param="since",
            hint="e.g. since=42 or since=2026-12-02T14:00:00Z (a time without offset is UTC)",
        ) from None

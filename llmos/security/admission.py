"""Admission, metering and process visibility for a principal: what the API, agents and jobs
all go through before a process runs, and what settles its usage after.

Everything here takes a `Principal`, never an HTTP request, so a non-HTTP caller (an agent, a
batch job) is held to the same grants, quotas, rate limits, ownership and audit as a client.
Invariant: every stream opened by `open_metered_stream` settles its ticket exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmos.errors import LlmosError, PermissionDenied
from llmos.kernel.loop import EngineLike, EngineLoop, OutputStream
from llmos.kernel.outputs import FinishReason, ProcessOutput
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority, ProcessInfo
from llmos.security.acl import Permission, can_see
from llmos.security.guard import Guard, Ticket
from llmos.security.principals import Principal
from llmos.security.quotas import Demand, Quotas

Prompts = Sequence[tuple[list[int], SamplingParams]]


# ---- processes: what a principal may see and touch -----------------------------------------


def visible_processes(loop: EngineLoop, principal: Principal) -> list[ProcessInfo]:
    return [p for p in loop.processes() if can_see(principal, Permission.PROCESS_READ, p.owner)]


def may_manage(loop: EngineLoop, principal: Principal, pid: int) -> bool:
    """True if `pid` is live and the principal may kill/renice it; other users' pids look
    exactly like pids that do not exist (no enumeration)."""
    return any(
        p.pid == pid and can_see(principal, Permission.PROCESS_MANAGE, p.owner)
        for p in loop.processes()
    )


def check_priority(principal: Principal, priority: Priority) -> None:
    ceiling = principal.quota.max_priority
    if ceiling is not None and priority < ceiling:
        raise PermissionDenied(
            f"Priority {priority.name.lower()!r} is above the highest class your quota allows "
            f"({ceiling.name.lower()!r}).",
            param="priority",
        )


def may_use_model(guard: Guard | None, principal: Principal, model_names: list[str]) -> bool:
    """Whether a model (by every name a grant may use) is granted to `principal`; always true
    without a guard (`auth none`). Blocking: a database read."""
    return guard is None or guard.acl.allows(principal, model_names)


# ---- inference -----------------------------------------------------------------------------


async def open_metered_stream(
    loop: EngineLoop,
    guard: Guard | None,
    principal: Principal,
    engine: EngineLike,
    prompts: Prompts,
    *,
    priority: Priority,
    arrival_s: float,
    model_names: list[str],
    client: str | None,
    request_id: str,
    tokenizer: Any = None,
) -> OutputStream:
    """Admit `prompts` for `principal` (grant, quotas, rate limits; audited) and submit them to
    `engine` as processes it owns. Without a guard they are submitted as they are."""
    if guard is None:
        return loop.open_stream(
            prompts, engine=engine, owner=principal.name, priority=priority, arrival_s=arrival_s
        )
    prompts = [(ids, _within_context(principal, ids, params)) for ids, params in prompts]
    demand = Demand(
        num_prompt_tokens=[len(ids) for ids, _ in prompts],
        max_tokens=[params.max_tokens for _, params in prompts],
        priority=priority,
        num_live_owned=sum(p.owner == principal.name for p in loop.processes()),
    )
    ticket = await asyncio.to_thread(
        guard.admit,
        principal,
        model=engine.model_name,
        model_names=model_names,
        demand=demand,
        client=client,
        request_id=request_id,
    )
    stream = MeteredStream(loop, asyncio.get_running_loop(), guard, ticket)
    if guard.config.audit_prompts and tokenizer is not None:
        stream.prompt_text = tokenizer.decode(prompts[0][0])
    try:
        stream.pids = loop.submit(
            prompts, stream.put_threadsafe, engine=engine, owner=principal.name,
            priority=priority, arrival_s=arrival_s,
        )  # fmt: skip
    except LlmosError as exc:
        guard.settle(ticket, num_prompt_tokens=0, num_completion_tokens=0, outcome=exc.code)
        raise
    stream.unfinished = set(stream.pids)
    return stream


def _within_context(principal: Principal, ids: list[int], params: SamplingParams) -> SamplingParams:
    """Cap an open-ended max_tokens at what the principal's context quota leaves."""
    limit = Quotas.max_tokens_within(principal, len(ids))
    if limit is None or params.max_tokens is not None:
        return params
    return dataclasses.replace(params, max_tokens=limit)


class MeteredStream(OutputStream):
    """An OutputStream that tallies token counts as outputs pass and settles its ticket (usage,
    rate, audit) exactly once, when the request ends: `cancel()` runs on every exit path."""

    def __init__(self, loop: EngineLoop, aio_loop: asyncio.AbstractEventLoop, guard: Guard,
                 ticket: Ticket) -> None:  # fmt: skip
        super().__init__(loop, aio_loop)
        self._guard = guard
        self._ticket = ticket
        self._num_output: dict[int, int] = {}
        self._reasons: dict[int, FinishReason] = {}
        self._texts: dict[int, str] = {}
        self.prompt_text: str | None = None

    async def __aiter__(self) -> AsyncIterator[ProcessOutput]:
        async for out in super().__aiter__():
            self._num_output[out.pid] = out.num_output_tokens or self._num_output.get(out.pid, 0)
            if self.prompt_text is not None:
                self._texts[out.pid] = self._texts.get(out.pid, "") + out.new_text
            if out.finished:
                self._reasons[out.pid] = out.finish_reason or FinishReason.STOP
            yield out

    def cancel(self) -> None:
        was_unfinished = bool(self.unfinished)
        super().cancel()
        reasons = sorted(set(self._reasons.values()))
        if was_unfinished:
            outcome = "cancelled"
        elif FinishReason.ERROR in reasons:
            outcome = "error"
        elif FinishReason.KILLED in reasons:
            outcome = "killed"
        else:
            outcome = "ok"
        details: dict[str, Any] = {"num_processes": len(self.pids), "finish_reasons": reasons}
        if self.prompt_text is not None:
            details |= {
                "prompt": self.prompt_text,
                "output": [self._texts.get(p, "") for p in self.pids],
            }
        self._guard.settle(
            self._ticket,
            num_prompt_tokens=self._ticket.num_prompt_tokens,
            num_completion_tokens=sum(self._num_output.values()),
            outcome=outcome,
            details=details,
        )

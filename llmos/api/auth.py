"""Security at the API edge: one app-wide dependency authenticates and authorizes every route,
and inference goes through `open_guarded_stream` (grant, quotas, rate limits, owner, audit).

`authorize` runs before a route's own dependencies (so an anonymous client gets 401 before its
body is even parsed). It looks the matched route up in `llmos.security.acl.ROUTE_PERMISSIONS`:
PUBLIC routes get the anonymous principal, anything else needs a key whose role grants the
permission, and a route missing from the table is refused (deny by default). A wrong key is
answered late (an asyncio sleep, see `llmos.security.signin`), never a valid one. With `auth none`
(loopback only) every request acts as the local admin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request

from llmos.api import forwarded
from llmos.api.deps import ServerContext, get_context
from llmos.errors import LlmosError, NotFound, PermissionDenied
from llmos.kernel.loop import EngineLoop, OutputStream
from llmos.kernel.outputs import ProcessOutput
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority, ProcessInfo
from llmos.kernel.residency import ServedEngine
from llmos.security.acl import PUBLIC, Permission, can_see, require, route_rule
from llmos.security.guard import Guard, Ticket
from llmos.security.principals import ANONYMOUS, LOCAL, Principal
from llmos.security.quotas import Demand, Quotas
from llmos.security.signin import SignInFailure

logger = logging.getLogger(__name__)

Prompts = Sequence[tuple[list[int], SamplingParams]]


def client_address(request: Request) -> str:
    """The socket peer, or the client a trusted proxy forwarded for (`security.trusted_proxies`);
    worked out once per request."""
    cached: str | None = getattr(request.state, "client_address", None)
    if cached is not None:
        return cached
    peer = request.client.host if request.client else "unknown"
    proxies = get_context(request).settings.security.trusted_proxies
    address = peer
    if proxies:
        address = forwarded.client_address(
            peer,
            forwarded.trusted_networks(tuple(proxies)),
            request.headers.getlist("x-forwarded-for"),
            request.headers.getlist("forwarded"),
        )
    request.state.client_address = address
    return address


async def authorize(request: Request) -> Principal:
    """The principal of this request, checked against the route's declared permission."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    rule = route_rule(request.method, path)
    if rule is None:
        logger.error("route %s %s declares no permission; refusing it", request.method, path)
        raise PermissionDenied(
            "This route declares no permission and stays closed.", code="route_undeclared"
        )
    request.state.request_id = uuid.uuid4().hex[:16]
    ctx = get_context(request)
    guard: Guard | None = ctx.guard
    if rule == PUBLIC:
        principal = ANONYMOUS
    elif guard is None:
        principal = LOCAL
    else:
        header = request.headers.get("authorization")
        signed_in = await asyncio.to_thread(guard.authenticate, header, client_address(request))
        if isinstance(signed_in, SignInFailure):
            # Late, not never: the event loop keeps serving everyone else meanwhile.
            await asyncio.sleep(signed_in.delay_s)
            raise signed_in.error
        principal = signed_in
        require(principal, Permission(rule))
    request.state.principal = principal
    return principal


def record_action(request: Request, action: str, target: str | None, **details: Any) -> None:
    """Audit an action taken through the API (queued; written in order)."""
    guard: Guard | None = get_context(request).guard
    if guard is None:
        return
    principal: Principal = getattr(request.state, "principal", LOCAL)
    guard.record(
        principal.name,
        action,
        target=target,
        client=client_address(request),
        request_id=getattr(request.state, "request_id", None),
        details={"key_id": principal.key_id, **details},
    )


# ---- processes: what a principal may see and touch -----------------------------------------


def visible_processes(ctx: ServerContext, principal: Principal) -> list[ProcessInfo]:
    return [p for p in ctx.loop.processes() if can_see(principal, Permission.PROCESS_READ, p.owner)]


def may_manage(ctx: ServerContext, principal: Principal, pid: int) -> bool:
    """True if `pid` is live and the principal may kill/renice it; other users' pids look
    exactly like pids that do not exist (no enumeration)."""
    return any(
        p.pid == pid and can_see(principal, Permission.PROCESS_MANAGE, p.owner)
        for p in ctx.loop.processes()
    )


def check_priority(principal: Principal, priority: Priority) -> None:
    ceiling = principal.quota.max_priority
    if ceiling is not None and priority < ceiling:
        raise PermissionDenied(
            f"Priority {priority.name.lower()!r} is above the highest class your quota allows "
            f"({ceiling.name.lower()!r}).",
            param="priority",
        )


# ---- inference -----------------------------------------------------------------------------


async def open_guarded_stream(
    ctx: ServerContext,
    request: Request,
    engine: ServedEngine,
    prompts: Prompts,
    priority: Priority,
    arrival_s: float,
) -> OutputStream:
    """Admit `prompts` for the request's principal and submit them to `engine` as processes it
    owns."""
    principal: Principal = getattr(request.state, "principal", LOCAL)
    guard: Guard | None = ctx.guard
    if guard is None:
        return ctx.loop.open_stream(
            prompts, engine=engine, owner=principal.name, priority=priority, arrival_s=arrival_s
        )
    prompts = [(ids, _within_context(principal, ids, params)) for ids, params in prompts]
    demand = Demand(
        num_prompt_tokens=[len(ids) for ids, _ in prompts],
        max_tokens=[params.max_tokens for _, params in prompts],
        priority=priority,
        num_live_owned=sum(p.owner == principal.name for p in ctx.loop.processes()),
    )
    ticket = await asyncio.to_thread(
        guard.admit,
        principal,
        model=engine.model_name,
        model_names=ctx.model_names(engine.model_name),
        demand=demand,
        client=client_address(request),
        request_id=getattr(request.state, "request_id", uuid.uuid4().hex[:16]),
    )
    stream = MeteredStream(ctx.loop, asyncio.get_running_loop(), guard, ticket)
    if guard.config.audit_prompts:
        stream.prompt_text = engine.tokenizer.decode(prompts[0][0])
    try:
        stream.pids = ctx.loop.submit(
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
        self._reasons: dict[int, str] = {}
        self._texts: dict[int, str] = {}
        self.prompt_text: str | None = None

    async def __aiter__(self) -> AsyncIterator[ProcessOutput]:
        async for out in super().__aiter__():
            self._num_output[out.pid] = out.num_output_tokens or self._num_output.get(out.pid, 0)
            if self.prompt_text is not None:
                self._texts[out.pid] = self._texts.get(out.pid, "") + out.new_text
            if out.finished:
                self._reasons[out.pid] = out.finish_reason or "stop"
            yield out

    def cancel(self) -> None:
        was_unfinished = bool(self.unfinished)
        super().cancel()
        reasons = sorted(set(self._reasons.values()))
        if was_unfinished:
            outcome = "cancelled"
        elif "error" in reasons or "killed" in reasons:
            outcome = "error" if "error" in reasons else "killed"
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


async def may_use_model(ctx: ServerContext, principal: Principal, model_id: str) -> bool:
    """Whether the model `model_id` is granted to `principal` (always, with `auth none`)."""
    guard: Guard | None = ctx.guard
    if guard is None:
        return True
    return await asyncio.to_thread(guard.acl.allows, principal, ctx.model_names(model_id))


async def granted_model(ctx: ServerContext, request: Request, name: str) -> str:
    """The id of the model `name` names, if it exists and the request's principal may use it;
    otherwise 404 `model_not_found` (a model you may not use looks like one that is absent).
    Checked before the model is loaded, so nobody loads a model they may not use."""
    model_id = await ctx.resolve_model(name)
    principal: Principal = getattr(request.state, "principal", LOCAL)
    if not await may_use_model(ctx, principal, model_id):
        raise NotFound(
            f"The model {name[:64]!r} does not exist or is not available to you.",
            code="model_not_found",
            param="model",
        )
    return model_id

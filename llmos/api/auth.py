"""Security at the API edge: one app-wide dependency authenticates and authorizes every route;
admission, metering and process visibility are `llmos.security.admission`'s, called here with
the request's principal (inference goes through `open_guarded_stream`).

`authorize` runs before a route's own dependencies (so an anonymous client gets 401 before its
body is even parsed). It looks the matched route up in `llmos.security.acl.ROUTE_PERMISSIONS`:
PUBLIC routes get the anonymous principal, anything else needs a key whose role grants the
permission, and a route missing from the table is refused (deny by default). A wrong key is
answered late (an asyncio sleep, see `llmos.security.signin`), never a valid one. With `auth none`
(loopback only) every request acts as the local admin.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fastapi import Request

from llmos.api import forwarded
from llmos.api.deps import ServerContext, get_context
from llmos.errors import NotFound, PermissionDenied
from llmos.kernel.loop import OutputStream
from llmos.kernel.process import Priority, ProcessInfo
from llmos.kernel.residency import ServedEngine
from llmos.security import admission
from llmos.security.acl import PUBLIC, Permission, require, route_rule
from llmos.security.guard import Guard
from llmos.security.principals import ANONYMOUS, LOCAL, Principal
from llmos.security.signin import SignInFailure

logger = logging.getLogger(__name__)


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


# ---- the request's principal, handed to llmos.security.admission -------------------------


def principal_of(request: Request) -> Principal:
    return getattr(request.state, "principal", LOCAL)


def visible_processes(ctx: ServerContext, principal: Principal) -> list[ProcessInfo]:
    return admission.visible_processes(ctx.loop, principal)


def may_manage(ctx: ServerContext, principal: Principal, pid: int) -> bool:
    return admission.may_manage(ctx.loop, principal, pid)


check_priority = admission.check_priority


async def open_guarded_stream(
    ctx: ServerContext,
    request: Request,
    engine: ServedEngine,
    prompts: admission.Prompts,
    priority: Priority,
    arrival_s: float,
) -> OutputStream:
    """Admit `prompts` for the request's principal and submit them to `engine` as processes it
    owns (see `llmos.security.admission.open_metered_stream`)."""
    return await admission.open_metered_stream(
        ctx.loop,
        ctx.guard,
        principal_of(request),
        engine,
        prompts,
        priority=priority,
        arrival_s=arrival_s,
        model_names=ctx.model_names(engine.model_name),
        client=client_address(request) if ctx.guard is not None else None,
        request_id=getattr(request.state, "request_id", None) or uuid.uuid4().hex[:16],
        tokenizer=engine.tokenizer,
    )


async def may_use_model(ctx: ServerContext, principal: Principal, model_id: str) -> bool:
    """Whether the model `model_id` is granted to `principal` (always, with `auth none`)."""
    names = ctx.model_names(model_id)
    return await asyncio.to_thread(admission.may_use_model, ctx.guard, principal, names)


async def granted_model(ctx: ServerContext, request: Request, name: str) -> str:
    """The id of the model `name` names, if it exists and the request's principal may use it;
    otherwise 404 `model_not_found` (a model you may not use looks like one that is absent).
    Checked before the model is loaded, so nobody loads a model they may not use."""
    model_id = await ctx.resolve_model(name)
    if not await may_use_model(ctx, principal_of(request), model_id):
        raise NotFound(
            f"The model {name[:64]!r} does not exist or is not available to you.",
            code="model_not_found",
            param="model",
        )
    return model_id

"""The security admin API: users, API keys, the audit log, and the OpenAPI schema (behind a key).

Bodies reject unknown fields, so a client cannot mass-assign (`{"role": "admin"}` on a route that
does not take a role). Responses never carry key hashes; a new key's secret is returned once.
Every change is audited. Users manage only their own keys; others' keys answer 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos.api.auth import authorize, record_action
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openapi import responses
from llmos.api.os.responses import AuditRows, CreatedKey, Key, KeyList, User, UserList
from llmos.errors import InvalidRequest, NotFound
from llmos.kernel.process import Priority
from llmos.security.acl import Permission, Scope, scope_of
from llmos.security.guard import Guard
from llmos.security.keys import ApiKeys, KeyInfo
from llmos.security.principals import Principal, Quota, Role, UserInfo, Users

router = APIRouter(tags=["security"])
# The widest values the columns hold on every database (INTEGER is 32-bit on PostgreSQL).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_EXPIRY_S = 100 * 365 * 86400


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(description="User name (a-z, 0-9, '.', '_', '-').")
    role: str = Field("user", description="admin, operator, user or viewer.")
    tokens_per_day: int | None = Field(None, ge=1, le=MAX_INT64)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_INT32)
    max_priority: str | None = Field(None, description="interactive, normal or batch.")
    max_context: int | None = Field(None, ge=1, le=MAX_INT32)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user: str | None = Field(None, description="Owner (default: yourself).")
    name: str = Field("default", min_length=1, max_length=64)
    expires_in_s: float | None = Field(None, gt=0, le=MAX_EXPIRY_S)
    requests_per_minute: int | None = Field(None, ge=1, le=MAX_INT32)
    tokens_per_minute: int | None = Field(None, ge=1, le=MAX_INT32)


def _guard(ctx: ServerContext) -> Guard:
    if ctx.guard is None:
        raise InvalidRequest(
            "User and key management needs `auth keys`; this server runs with `auth none`.",
            code="auth_disabled",
        )
    guard: Guard = ctx.guard
    return guard


def _user_json(u: UserInfo) -> dict[str, Any]:
    q = u.quota
    return {
        "name": u.name,
        "role": u.role.value,
        "is_disabled": u.is_disabled,
        "quota": dataclasses.asdict(q)
        | {"max_priority": q.max_priority.name.lower() if q.max_priority is not None else None},
        "models": list(u.models),
        "num_active_keys": u.num_active_keys,
        "created_at": u.created_at.isoformat(),
        "share": u.share,
    }


def _key_json(k: KeyInfo) -> dict[str, Any]:
    values = dataclasses.asdict(k)
    return {name: v.isoformat() if hasattr(v, "isoformat") else v for name, v in values.items()}


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI schema of this server (needs a key: it maps the whole attack surface)."""
    return JSONResponse(request.app.openapi())


@router.get("/os/users", response_model=None, responses=responses(UserList, 400))
async def list_users(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """Every user with role, state, quotas and model grants (admins only)."""
    users = await asyncio.to_thread(Users(_guard(ctx).db).list)
    return {"object": "list", "data": [_user_json(u) for u in users]}


@router.post(
    "/os/users",
    openapi_extra=body_schema(NewUser),
    response_model=None,
    responses=responses(User, 409, 507),
)
async def add_user(
    request: Request,
    body: NewUser = Depends(json_body(NewUser)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Add a user (admins only)."""
    quota = Quota(
        tokens_per_day=body.tokens_per_day,
        max_concurrent=body.max_concurrent,
        max_priority=Priority.parse(body.max_priority) if body.max_priority else None,
        max_context=body.max_context,
    )
    role = Role.parse(body.role)
    info = await asyncio.to_thread(Users(_guard(ctx).db).add, body.name, role, quota)
    record_action(request, "user.add", info.name, role=role.value)
    return _user_json(info)


@router.get("/os/keys", response_model=None, responses=responses(KeyList))
async def list_keys(
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
    user: str | None = Query(None, description="Only this user's keys (admins)."),
) -> dict[str, Any]:
    """API keys without secrets: yours, or anyone's for admins."""
    if scope_of(principal, Permission.KEYS_MANAGE) is not Scope.ALL:
        user = principal.name
    keys = await asyncio.to_thread(ApiKeys(_guard(ctx).db).list, user)
    return {"object": "list", "data": [_key_json(k) for k in keys]}


@router.post(
    "/os/keys",
    openapi_extra=body_schema(NewKey),
    response_model=None,
    responses=responses(CreatedKey, 404, 507),
)
async def create_key(
    request: Request,
    body: NewKey = Depends(json_body(NewKey)),
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
) -> dict[str, Any]:
    """Create a key; the response holds its secret, shown this once."""
    owner = (body.user or principal.name).lower()
    if owner != principal.name and scope_of(principal, Permission.KEYS_MANAGE) is not Scope.ALL:
        raise NotFound(f"user {owner} not found")
    new = await asyncio.to_thread(
        ApiKeys(_guard(ctx).db).create,
        owner,
        body.name,
        expires_in_s=body.expires_in_s,
        requests_per_minute=body.requests_per_minute,
        tokens_per_minute=body.tokens_per_minute,
    )
    record_action(request, "key.create", new.info.key_id, user=owner)
    return _key_json(new.info) | {"key": new.secret}


@router.delete("/os/keys/{key_id}", response_model=None, responses=responses(Key, 404, 507))
async def revoke_key(
    key_id: str,
    request: Request,
    ctx: ServerContext = Depends(get_context),
    principal: Principal = Depends(authorize),
) -> dict[str, Any]:
    """Revoke a key (yours, or anyone's for admins); it fails from the next request on."""
    keys = ApiKeys(_guard(ctx).db)
    info = await asyncio.to_thread(keys.get, key_id)
    if info.user != principal.name and scope_of(principal, Permission.KEYS_MANAGE) is not Scope.ALL:
        raise NotFound(f"API key {key_id} not found")
    info = await asyncio.to_thread(keys.revoke, key_id)
    record_action(request, "key.revoke", key_id, user=info.user)
    return _key_json(info)


@router.get("/os/audit", response_model=None, responses=responses(AuditRows))
async def audit_tail(
    ctx: ServerContext = Depends(get_context),
    limit: int = Query(50, ge=1, le=1000),
    actor: str | None = Query(None),
    action: str | None = Query(None, description="Exact, or a prefix ending in '*'."),
) -> dict[str, Any]:
    """The newest audit rows matching the filters, oldest first (admins only)."""
    guard = _guard(ctx)

    def read() -> list[Any]:
        guard.flush()  # rows still queued (e.g. this server's last requests) are included
        return guard.audit.search(actor=actor, action=action, limit=limit)

    rows = await asyncio.to_thread(read)
    return {"object": "list", "data": [dataclasses.asdict(r) for r in rows]}

"""Who may do what: permissions, the role table, the route table and per-model grants.

Deny by default: a role has exactly the permissions `ROLE_GRANTS` lists, and an HTTP route is
reachable only if `ROUTE_PERMISSIONS` names it (a route missing from the table is refused, and a
test fails). A grant's scope says whose objects it covers: OWN (the principal's processes, keys,
and the models granted to it) or ALL. docs/security.md renders this table for users.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

from sqlalchemy import select

from llmos.errors import PermissionDenied
from llmos.security.principals import Principal, Role
from llmos.security.tables import ModelAclRow
from llmos.storage.db import Database


class Permission(enum.StrEnum):
    INFERENCE = "inference"  # generate and tokenize with a model
    MODELS_READ = "models:read"  # list served models
    MODELS_MANAGE = "models:manage"  # verify, tag, remove stored models
    MODELS_FILES = "models:files"  # import from / export to paths on the server machine
    PROCESS_READ = "process:read"  # ps
    PROCESS_MANAGE = "process:manage"  # kill, renice
    JOBS_MANAGE = "jobs:manage"  # fine-tune / quantize jobs
    STATS_READ = "stats:read"  # kernel stats
    METRICS_READ = "metrics:read"  # Prometheus /metrics
    SERVER_INFO = "server:info"  # version, OpenAPI schema
    KEYS_MANAGE = "keys:manage"  # create, list, revoke API keys
    USERS_MANAGE = "users:manage"  # users, roles, quotas, model grants
    AUDIT_READ = "audit:read"  # audit tail/search/verify
    EVENTS_READ = "events:read"  # the event log (loads, evictions, failures, refusals)
    SECURITY_ADMIN = "security:admin"  # master key rotation


class Scope(enum.IntEnum):
    OWN = 1
    ALL = 2


PUBLIC: Final = "public"
RouteRule = Permission | str

_ALL = Scope.ALL
_OWN = Scope.OWN
ROLE_GRANTS: Final[dict[Role, dict[Permission, Scope]]] = {
    Role.ADMIN: {p: _ALL for p in Permission},
    Role.OPERATOR: {
        Permission.INFERENCE: _ALL,
        Permission.MODELS_READ: _ALL,
        Permission.MODELS_MANAGE: _ALL,
        Permission.PROCESS_READ: _ALL,
        Permission.PROCESS_MANAGE: _ALL,
        Permission.JOBS_MANAGE: _ALL,
        Permission.STATS_READ: _ALL,
        Permission.METRICS_READ: _ALL,
        Permission.SERVER_INFO: _ALL,
        Permission.KEYS_MANAGE: _OWN,
    },
    Role.USER: {
        Permission.INFERENCE: _OWN,
        Permission.MODELS_READ: _OWN,
        Permission.PROCESS_READ: _OWN,
        Permission.PROCESS_MANAGE: _OWN,
        Permission.SERVER_INFO: _ALL,
        Permission.KEYS_MANAGE: _OWN,
    },
    Role.VIEWER: {
        Permission.STATS_READ: _ALL,
        Permission.METRICS_READ: _ALL,
        Permission.SERVER_INFO: _ALL,
    },
}

# Every HTTP route, by (method, path template). PUBLIC routes need no key.
ROUTE_PERMISSIONS: Final[dict[tuple[str, str], RouteRule]] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/version"): Permission.SERVER_INFO,
    ("GET", "/openapi.json"): Permission.SERVER_INFO,
    ("GET", "/metrics"): Permission.METRICS_READ,
    ("POST", "/v1/chat/completions"): Permission.INFERENCE,
    ("POST", "/v1/completions"): Permission.INFERENCE,
    ("GET", "/v1/models"): Permission.MODELS_READ,
    ("GET", "/v1/models/{model_id:path}"): Permission.MODELS_READ,
    ("POST", "/tokenize"): Permission.INFERENCE,
    ("POST", "/detokenize"): Permission.INFERENCE,
    ("GET", "/tokenizer_info"): Permission.INFERENCE,
    ("GET", "/os/processes"): Permission.PROCESS_READ,
    ("DELETE", "/os/processes/{pid}"): Permission.PROCESS_MANAGE,
    ("POST", "/os/processes/{pid}/priority"): Permission.PROCESS_MANAGE,
    ("GET", "/os/stats"): Permission.STATS_READ,
    ("GET", "/os/users"): Permission.USERS_MANAGE,
    ("POST", "/os/users"): Permission.USERS_MANAGE,
    ("PUT", "/os/users/{name}/share"): Permission.USERS_MANAGE,
    ("GET", "/os/reservations"): Permission.USERS_MANAGE,
    ("POST", "/os/reservations"): Permission.USERS_MANAGE,
    ("DELETE", "/os/reservations/{user}/{model}"): Permission.USERS_MANAGE,
    ("GET", "/os/keys"): Permission.KEYS_MANAGE,
    ("POST", "/os/keys"): Permission.KEYS_MANAGE,
    ("DELETE", "/os/keys/{key_id}"): Permission.KEYS_MANAGE,
    ("GET", "/os/audit"): Permission.AUDIT_READ,
    ("POST", "/os/debug/faults"): Permission.SECURITY_ADMIN,  # test-only, see api/os/debug.py
    ("GET", "/os/events"): Permission.EVENTS_READ,
    ("GET", "/os/models"): Permission.MODELS_READ,
    ("GET", "/os/models/{name}"): Permission.MODELS_READ,
    ("POST", "/os/models"): Permission.MODELS_FILES,
    ("POST", "/os/models/{name}/tag"): Permission.MODELS_MANAGE,
    ("POST", "/os/models/{name}/export"): Permission.MODELS_FILES,
    ("POST", "/os/models/{name}/verify"): Permission.MODELS_MANAGE,
    ("DELETE", "/os/models/{name}"): Permission.MODELS_MANAGE,
    ("GET", "/os/residency"): Permission.STATS_READ,
    ("POST", "/os/models/{name}/pin"): Permission.MODELS_MANAGE,
    ("DELETE", "/os/models/{name}/pin"): Permission.MODELS_MANAGE,
}


def scope_of(principal: Principal, permission: Permission) -> Scope | None:
    """The scope `principal`'s role grants for `permission`, or None."""
    return ROLE_GRANTS[principal.role].get(permission)


def require(principal: Principal, permission: Permission) -> Scope:
    """The granted scope, or PermissionDenied naming the role and the permission."""
    scope = scope_of(principal, permission)
    if scope is None:
        raise PermissionDenied(
            f"Role {principal.role.value!r} lacks the permission {permission.value!r}.",
            hint="ask an admin for a role that has it (see docs/security.md)",
        )
    return scope


def route_rule(method: str, path: str) -> RouteRule | None:
    """What a route requires (a Permission or PUBLIC), or None if it declares nothing."""
    return ROUTE_PERMISSIONS.get((method.upper(), path))


def can_see(principal: Principal, permission: Permission, owner: str) -> bool:
    """True if the principal may act on an object owned by `owner` under `permission`."""
    scope = scope_of(principal, permission)
    return scope is Scope.ALL or (scope is Scope.OWN and owner == principal.name)


class ModelAcl:
    """Per-model grants: a model nobody was granted is open to every role with INFERENCE; once
    granted to someone, users (OWN scope) need a grant; operators and admins (ALL) always pass."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def allows(self, principal: Principal, names: Iterable[str]) -> bool:
        """May `principal` use the model known by any of `names` (its id and aliases)?"""
        scope = scope_of(principal, Permission.INFERENCE)
        if scope is Scope.ALL:
            return True
        if scope is None:
            return False
        with self.db.session() as s:
            grantees = set(
                s.scalars(select(ModelAclRow.user_id).where(ModelAclRow.model.in_(list(names))))
            )
        return not grantees or principal.user_id in grantees

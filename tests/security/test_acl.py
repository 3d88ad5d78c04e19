"""The role table, the route table and per-model grants."""

from __future__ import annotations

import pytest

from llmos.errors import PermissionDenied
from llmos.security.acl import (
    PUBLIC,
    ROLE_GRANTS,
    ROUTE_PERMISSIONS,
    ModelAcl,
    Permission,
    Scope,
    can_see,
    require,
    route_rule,
)
from llmos.security.principals import Principal, Role, Users
from llmos.storage.db import Database


def _p(role: Role, name: str = "x", user_id: int | None = None) -> Principal:
    return Principal(name=name, role=role, user_id=user_id)


def test_role_table() -> None:
    assert set(ROLE_GRANTS[Role.ADMIN]) == set(Permission)
    assert require(_p(Role.USER), Permission.PROCESS_READ) is Scope.OWN
    assert require(_p(Role.OPERATOR), Permission.PROCESS_MANAGE) is Scope.ALL
    for role, perm in [
        (Role.VIEWER, Permission.INFERENCE),
        (Role.USER, Permission.USERS_MANAGE),
        (Role.OPERATOR, Permission.AUDIT_READ),
        (Role.USER, Permission.METRICS_READ),
    ]:
        with pytest.raises(PermissionDenied) as e:
            require(_p(role), perm)
        assert e.value.error_type == "permission_error"


def test_ownership() -> None:
    alice = _p(Role.USER, "alice")
    assert can_see(alice, Permission.PROCESS_READ, "alice")
    assert not can_see(alice, Permission.PROCESS_READ, "bob")
    assert can_see(_p(Role.OPERATOR), Permission.PROCESS_READ, "bob")
    assert not can_see(_p(Role.VIEWER), Permission.PROCESS_READ, "x")


def test_route_table_shape() -> None:
    assert route_rule("get", "/health") == PUBLIC
    assert route_rule("GET", "/metrics") is Permission.METRICS_READ
    assert route_rule("GET", "/nope") is None
    for (method, path), rule in ROUTE_PERMISSIONS.items():
        assert method in {"GET", "POST", "DELETE", "PUT", "PATCH"} and path.startswith("/")
        assert rule == PUBLIC or isinstance(rule, Permission)


def test_model_grants(db: Database, users: Users) -> None:
    acl = ModelAcl(db)
    alice = users.add("alice")
    bob = users.add("bob")
    pa = _p(Role.USER, "alice", alice.id)
    pb = _p(Role.USER, "bob", bob.id)
    assert acl.allows(pa, ["smollm2"]) and acl.allows(pb, ["smollm2"])  # ungranted: open
    users.grant_model("alice", "smollm2")
    assert acl.allows(pa, ["smollm2-135m", "smollm2"])
    assert not acl.allows(pb, ["smollm2"])
    assert acl.allows(_p(Role.OPERATOR), ["smollm2"])
    assert not acl.allows(_p(Role.VIEWER), ["smollm2"])
    assert users.get("alice").models == ("smollm2",)
    users.revoke_model("alice", "smollm2")
    assert acl.allows(pb, ["smollm2"])

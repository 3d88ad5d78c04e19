"""docs/security.md shows the real permission and route tables and every security setting."""

from __future__ import annotations

from pathlib import Path

from llmos.config import SecurityConfig
from llmos.security.acl import PUBLIC, ROLE_GRANTS, ROUTE_PERMISSIONS, Permission
from llmos.security.principals import Role

DOC = (Path(__file__).parents[2] / "docs" / "security.md").read_text()


def test_permission_table_matches_the_code() -> None:
    for p in Permission:
        cells = []
        for role in Role:
            scope = ROLE_GRANTS[role].get(p)
            cells.append("-" if scope is None else scope.name.lower())
        assert f"| `{p.value}` | " + " | ".join(cells) + " |" in DOC, p


def test_route_table_matches_the_code() -> None:
    for (method, path), rule in ROUTE_PERMISSIONS.items():
        shown = "public" if rule == PUBLIC else f"`{rule}`"
        assert f"| `{method} {path}` | {shown} |" in DOC, (method, path)


def test_every_setting_is_documented() -> None:
    for name in SecurityConfig.model_fields:
        assert f"`{name}`" in DOC, name

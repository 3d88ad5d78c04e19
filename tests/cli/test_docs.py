"""Every CLI command is in docs/cli.md and every API setting in docs/api.md (Datasette's rule)."""

from __future__ import annotations

from pathlib import Path

from llmos.cli.app import app
from llmos.config import ApiConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
    names += [g.name for g in app.registered_groups if g.name]
    assert names
    for name in names:
        assert f"`llmos {name}" in text, name


def test_every_api_setting_is_documented() -> None:
    text = (DOCS / "api.md").read_text()
    for name in ApiConfig.model_fields:
        assert f"| `{name}` |" in text, name

"""Every CLI command is in docs/cli.md and every API setting in docs/api.md (Datasette's rule)."""

from __future__ import annotations

from pathlib import Path

from llmos.cli.app import COMMAND_MODULES
from llmos.config import ApiConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_command_is_documented() -> None:
    """The serving commands; sub-apps (models, users, ...) are documented by their owners."""
    text = (DOCS / "cli.md").read_text()
    names = [
        c.name or (c.callback.__name__ if c.callback else "")
        for module in COMMAND_MODULES
        for c in module.app.registered_commands
    ]
    assert len(names) >= 7
    for name in names:
        assert f"`llmos {name}" in text, name


def test_every_api_setting_is_documented() -> None:
    text = (DOCS / "api.md").read_text()
    for name in ApiConfig.model_fields:
        assert f"| `{name}` |" in text, name

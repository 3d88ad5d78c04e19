"""CLI tests drive the `llmos` commands against the session's real `llmos serve`."""

from __future__ import annotations

import pytest

from tests.serving import shared_server


@pytest.fixture(scope="session")
def server_url() -> str:
    return shared_server().url

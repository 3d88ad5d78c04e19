"""Monitor fixtures: DB-backed tests run on SQLite and, given $LLMOS_TEST_POSTGRES_URL, on a fresh
PostgreSQL database (the storage tests' `database_url` fixture, reused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmos.storage.db import Database
from tests.storage.conftest import database_url, storage_config  # noqa: F401


@pytest.fixture
def db(storage_config) -> Iterator[Database]:  # noqa: F811
    d = Database(storage_config)
    yield d
    d.dispose()

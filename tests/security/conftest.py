"""Security fixtures: every DB-backed test runs on SQLite and, given $LLMOS_TEST_POSTGRES_URL,
on a fresh PostgreSQL database (the storage tests' `database_url` fixture, reused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmos.security.audit import AuditLog
from llmos.security.keys import ApiKeys
from llmos.security.principals import Users
from llmos.storage.db import Database
from tests.storage.conftest import database_url, storage, storage_config  # noqa: F401

AUDIT_KEY = bytes(range(32))


@pytest.fixture
def db(storage_config) -> Iterator[Database]:  # noqa: F811
    d = Database(storage_config)
    yield d
    d.dispose()


@pytest.fixture
def users(db: Database) -> Users:
    return Users(db)


@pytest.fixture
def keys(db: Database) -> ApiKeys:
    return ApiKeys(db)


@pytest.fixture
def audit(db: Database, tmp_path) -> AuditLog:
    return AuditLog(db, AUDIT_KEY, anchor_path=tmp_path / "audit.anchor")

"""Storage fixtures: every DB-backed test runs on SQLite and, when a server is given via
$LLMOS_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres), on a
fresh PostgreSQL database created for the test and dropped after it. Without that URL the
PostgreSQL half skips, and fails under CI=true (tests/required.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from llmos.config import StorageConfig
from llmos.storage.datasets import Datasets
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.required import require_postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    yield from _fresh_pg_database(require_postgres_url())


def _fresh_pg_database(server: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"llmos_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def storage_config(tmp_path, database_url) -> StorageConfig:
    return StorageConfig(data_dir=tmp_path / "home", database_url=database_url)


@pytest.fixture
def storage(storage_config) -> Iterator[Storage]:
    s = Storage(storage_config)
    yield s
    s.close()


@pytest.fixture
def registry(storage) -> Registry:
    return Registry(storage)


@pytest.fixture
def datasets(storage) -> Datasets:
    return Datasets(storage)

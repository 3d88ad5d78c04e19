"""API tests run against one real `llmos serve` subprocess (SmolLM2) per session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.serving import shared_server


@pytest.fixture(scope="session")
def server_url() -> str:
    return shared_server().url


@pytest.fixture(scope="session")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def model_id(http: httpx.Client) -> str:
    return str(http.get("/v1/models").json()["data"][0]["id"])

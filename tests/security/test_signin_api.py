"""Sign-in through a real `llmos serve` started with no auth setting at all: it requires a key;
wrong keys are slowed, then refused with 429, and audited in bounds, while a valid key from the
same address is still served; X-Forwarded-For counts only from a trusted proxy.

The server trusts 127.0.0.2 as a proxy; clients connect from chosen loopback addresses (Linux
routes all of 127/8 to lo). 127.0.0.1 is deliberately untrusted: uvicorn on its own would take
X-Forwarded-For from it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmos.config import SecurityConfig, Settings
from llmos.security.audit import AuditLog, load_audit_key
from llmos.security.secretfile import read_secret_file
from llmos.storage.db import Database
from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow
AUDITED_PER_MINUTE = 5
MAX_DELAY_S = 0.2  # small, so 30 failures in a row stay quick; the doubling below it is real


def _wrong_key(i: int) -> str:
    """A well-formed key that does not exist, with its own key id (so only the address adds up)."""
    return f"llmos-{i:012x}-" + "W" * 43


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        env={
            "LLMOS_SECURITY__TRUSTED_PROXIES": "127.0.0.2",
            "LLMOS_SECURITY__AUTH_FAILURE_MAX_DELAY_S": str(MAX_DELAY_S),
            "LLMOS_SECURITY__AUTH_FAILURES_AUDITED_PER_MINUTE": str(AUDITED_PER_MINUTE),
        }
    )
    srv.env.pop("LLMOS_SECURITY__AUTH", None)  # tests/serving.py sets "none"; we want the default
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _client(server: ServerProcess, local_address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(base_url=server.url, transport=transport, timeout=60)


def _admin(server: ServerProcess) -> dict[str, str]:
    key = read_secret_file(Path(server.home.name) / "admin.key")
    return {"Authorization": f"Bearer {key}"}


def _audit_rows(server: ServerProcess, **params: str) -> list[dict]:
    with _client(server, "127.0.0.1") as http:
        r = http.get("/os/audit", params={**params, "limit": 1000}, headers=_admin(server))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_serve_requires_a_key_by_default(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LLMOS_SECURITY__AUTH", raising=False)
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))  # no llmos.toml there
    assert Settings().security.auth == "keys"
    assert SecurityConfig.model_fields["auth"].default == "keys"
    assert "LLMOS_SECURITY__AUTH" not in server.env
    with _client(server, "127.0.0.1") as http:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            r = http.request(method, path, json={"model": "smollm2", "messages": []})
            assert r.status_code == 401, r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
            assert "Missing API key" in error["message"]
        assert http.get("/v1/models", headers=_admin(server)).status_code == 200


def test_forwarded_for_counts_only_from_a_trusted_proxy(server: ServerProcess) -> None:
    trusted_key, untrusted_key = _wrong_key(0xAAAA), _wrong_key(0xBBBB)
    with _client(server, "127.0.0.2") as http:
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {trusted_key}",
                                            "X-Forwarded-For": "6.6.6.6, 198.51.100.7"})  # fmt: skip
        assert r.status_code == 401
        # garbage from a trusted proxy is parsed and never answered with a 500
        garbage = {"X-Forwarded-For": "[::, 999.1.1.1:x,,", "Forwarded": 'for="[;;,=by'}
        assert http.get("/v1/models", headers={**garbage, **_admin(server)}).status_code == 200
    with _client(server, "127.0.0.1") as http:
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {untrusted_key}",
                                            "X-Forwarded-For": "198.51.100.8",
                                            "Forwarded": "for=198.51.100.9"})  # fmt: skip
        assert r.status_code == 401

    def clients() -> dict[str, str | None]:
        rows = _audit_rows(server, action="auth.fail")
        return {r["actor"]: r["client"] for r in rows}

    assert wait_until(lambda: {"00000000aaaa", "00000000bbbb"} <= clients().keys())
    seen = clients()
    assert seen["00000000aaaa"] == "198.51.100.7"  # the trusted proxy's word is taken
    assert seen["00000000bbbb"] == "127.0.0.1"  # a client's own header is not


def test_valid_key_is_served_after_30_wrong_ones(server: ServerProcess) -> None:
    codes, answers = [], []
    with _client(server, "127.0.0.3") as http:
        for i in range(30):
            # an untrusted peer cannot spread its failures over made-up addresses
            headers = {"Authorization": f"Bearer {_wrong_key(i)}", "X-Forwarded-For": f"10.9.9.{i}"}
            r = http.get("/v1/models", headers=headers)
            codes.append(r.status_code)
            answers.append(r)
        r = http.get("/v1/models", headers=_admin(server))
        assert r.status_code == 200, r.text
        assert r.json()["data"]
    # The default budget is 10 a minute; one more may refill (one per 6 s) on a slow machine.
    assert codes[:10] == [401] * 10 and codes[10] == 429, codes
    assert set(codes) == {401, 429} and codes.count(429) >= 15, codes
    for r in answers:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "too_many_auth_failures"
            assert int(r.headers["retry-after"]) >= 1

    def rows() -> list[dict]:
        return [r for r in _audit_rows(server, action="auth.fail") if r["client"] == "127.0.0.3"]

    assert wait_until(lambda: len(rows()) >= AUDITED_PER_MINUTE)
    audited = rows()
    assert len(audited) == AUDITED_PER_MINUTE  # the other 25 wait for the summary row
    assert [r["details"]["num_recent_failures"] for r in audited] == [1, 2, 3, 4, 5]
    assert [r["details"]["delay_ms"] for r in audited] == [50, 100, 200, 200, 200]
    assert {r["outcome"] for r in audited} == {"invalid_api_key"}


def test_unaudited_failures_are_summarized_at_shutdown(server: ServerProcess) -> None:
    """Last in this module: it stops the server."""
    server.signal(signal.SIGTERM)
    assert server.wait(120) == 0
    home = Path(server.home.name)
    db = Database(f"sqlite:///{home / 'llmos.db'}", migrate=False)
    try:
        audit = AuditLog(db, load_audit_key(home / "audit.key"))
        summaries = {r.client: r.details for r in audit.search(action="auth.fail.summary")}
        assert audit.verify().is_ok
    finally:
        db.dispose()
    mine = summaries["127.0.0.3"]
    assert mine["num_failures"] == 30 and mine["num_unaudited"] == 30 - AUDITED_PER_MINUTE
    assert summaries[None]["num_failures"] >= 32  # all addresses together

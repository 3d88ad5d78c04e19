"""Issue 10, acceptance 4: a schema-driven fuzzer (schemathesis) over every route of a real
`llmos serve --auth keys`, as the admin, on a throwaway data dir, DELETE routes included.

The fuzzer reads /openapi.json and runs its coverage phase (boundary values, missing and wrong
fields, unexpected methods) and its fuzzing phase (random valid and invalid requests) on every
operation. Every answer must be no 5xx, with a status, content type and body its operation
declares. Generation is bounded by the server (a 96-token `kernel.max_model_len` caps every
output) and by a few examples per operation from a fixed seed, so CI runs the same cases each
time (a few minutes on two cores).

Cases are sandboxed just before they are sent: paths on the server land under the data dir, the
fuzzer never revokes its own key (it learns key ids from GET /os/keys), and half the /v1 bodies
name the served model (a random model name only ever reaches the 404).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from llmos.security.secretfile import read_secret_file
from tests.serving import ServerProcess

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 5
SEED = 20_250_610
FUZZ_ENV = {"LLMOS_SECURITY__AUTH": "keys", "LLMOS_KERNEL__MAX_MODEL_LEN": "96"}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
PATH_FIELDS = ("source", "path")  # body fields naming a path on the server machine
NOT_A_KEY_ID = "000000000000"


@dataclass
class Target:
    url: str
    home: Path
    key: str
    model: str

    @property
    def key_id(self) -> str:
        return self.key.split("-")[1]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Run:
    """What one fuzzer run saw: status codes per operation, failed checks, engine errors."""

    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n\n".join(self.failures + self.errors)

    def summary(self) -> str:
        lines = [
            f"{op}: {dict(sorted(seen.items()))}" for op, seen in sorted(self.statuses.items())
        ]
        total = sum(sum(seen.values()) for seen in self.statuses.values())
        return "\n".join([f"{total} requests", *lines])


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    server = ServerProcess(env=FUZZ_ENV).start()
    try:
        home = Path(server.home.name)
        key = read_secret_file(home / "admin.key")
        auth = {"Authorization": f"Bearer {key}"}
        models = httpx.get(f"{server.url}/v1/models", headers=auth, timeout=30).json()
        yield Target(url=server.url, home=home, key=key, model=str(models["data"][0]["id"]))
    finally:
        server.stop()


def fuzzer_config(target: Target) -> Any:
    return schemathesis.Config.from_dict(
        {
            "base-url": target.url,
            "headers": target.headers,
            "seed": SEED,
            "workers": 1,
            "request-timeout": 120,
            "continue-on-failure": True,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "database": "none",
                # Our key goes on every request; generated Authorization headers would only test
                # sign-in failures (tests/security does) and trip their slow-down.
                "with-security-parameters": False,
            },
            "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


def sandbox(case: Any, target: Target) -> None:
    """Keep a generated case from harming the machine or the run itself."""
    params = case.path_parameters or {}
    if params.get("key_id") == target.key_id:
        params["key_id"] = NOT_A_KEY_ID
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path.startswith("/os/models"):
        for name in PATH_FIELDS:
            value = body.get(name)
            if isinstance(value, str) and value.startswith("/"):
                body[name] = str(target.home / "fuzz-files") + value
    model = body.get("model")
    if isinstance(model, str) and len(model) % 2 == 0:
        body["model"] = target.model


def fuzz(schema: Any, target: Target) -> Run:
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        sandbox(case, target)

    run = Run()
    schemathesis.hook(before_call)  # only a global hook may edit a case this late
    try:
        for event in from_schema(schema).execute():
            record(event, run)
    finally:
        schemathesis.hooks.unregister(before_call)
    return run


def record(event: Any, run: Run) -> None:
    if isinstance(event, events.ScenarioFinished):
        label = event.recorder.label
        for interaction in event.recorder.interactions.values():
            if interaction.response is not None:
                seen = run.statuses.setdefault(label, {})
                status = interaction.response.status_code
                seen[status] = seen.get(status, 0) + 1
        for checks in event.recorder.checks.values():
            for check in checks:
                if check.failure_info is not None:
                    failure = check.failure_info.failure
                    run.failures.append(
                        f"{label}: {failure.title}\n{failure.message}\n"
                        f"{check.failure_info.code_sample}"
                    )
    elif isinstance(event, events.NonFatalError):
        run.errors.append(f"{event.label}: {event.info}")
    elif isinstance(event, events.FatalError):
        run.errors.append(f"fatal: {event.exception!r}")


def test_every_route_answers_as_documented(target: Target) -> None:
    doc = httpx.get(f"{target.url}/openapi.json", headers=target.headers, timeout=30).json()
    operations = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    schema = schemathesis.openapi.from_dict(doc, config=fuzzer_config(target))

    run = fuzz(schema, target)
    print(run.summary())  # shown with -s: how far past validation the fuzzer got

    assert not run.failures and not run.errors, run.report()
    assert set(run.statuses) == operations, "operations the fuzzer never called"
    assert any(p.startswith("DELETE ") for p in run.statuses)
    # It got past validation to real work, not just 4xx: generation, imports, key changes.
    ok = {op for op, seen in run.statuses.items() if any(200 <= s < 300 for s in seen)}
    for op in ("POST /v1/chat/completions", "POST /v1/completions", "POST /os/keys"):
        assert op in ok, run.statuses[op]
    server_errors = {op: s for op, seen in run.statuses.items() for s in seen if s >= 500}
    assert not server_errors, server_errors
    # The fuzzer's own key survived the DELETE routes.
    assert httpx.get(f"{target.url}/os/stats", headers=target.headers).status_code == 200

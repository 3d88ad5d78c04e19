"""Issue 10, acceptance 4: /openapi.json of a real server is valid OpenAPI 3.1, every `$ref` in it
resolves inside the document, and it tells the truth about errors and chat messages (the fuzz
test, tests/api/test_fuzz.py, checks real answers against it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from llmos.security.acl import PUBLIC, ROUTE_PERMISSIONS

pytestmark = pytest.mark.slow

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def doc(http: httpx.Client) -> dict[str, Any]:
    r = http.get("/openapi.json")
    assert r.status_code == 200, r.text
    return dict(r.json())


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(keys(v) for v in node))
    return set()


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (`#/a/b~1c`) resolved against the whole document, as clients do."""
    assert ref.startswith("#/"), f"{ref} is not a reference inside the document"
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"{ref} does not resolve (at {token!r})"
        node = node[token]
    return node


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises OpenAPIValidationError with the path of the first problem


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    found = set(refs(doc))
    for ref in sorted(found):
        assert isinstance(resolve(doc, ref), dict), ref
    assert "#/components/schemas/TextPart" in found  # the two that did not resolve
    assert "#/components/schemas/StreamOptions" in found
    assert "$defs" not in keys(doc), "a schema still nests local $defs"


def test_every_operation_declares_its_answers(doc: dict[str, Any]) -> None:
    acl = {(m, p.replace(":path}", "}")): rule for (m, p), rule in ROUTE_PERMISSIONS.items()}
    for method, path, operation in operations(doc):
        where = f"{method} {path}"
        assert (method, path) in acl, f"{where} is not in the ACL table"
        answers = operation["responses"]
        assert "422" not in answers, f"{where} declares FastAPI's 422, never sent"
        ok = [s for s in answers if s.startswith("2")]
        assert ok and all(answers[s].get("content") for s in ok), where
        assert "500" in answers, where
        for status, answer in answers.items():
            if status.startswith(("4", "5")) and not path.startswith(("/health", "/ready")):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, f"{where} {status}: {schema}"
        if acl[(method, path)] == PUBLIC:
            assert "security" not in operation and "401" not in answers, where
        else:
            assert operation["security"] == [{"apiKey": []}], where
            assert {"401", "403", "429"} <= set(answers), where
        if "requestBody" in operation:
            assert {"400", "413"} <= set(answers), where
    error = resolve(doc, ERROR_REF)
    detail = resolve(doc, error["properties"]["error"]["$ref"])
    assert set(detail["required"]) == {"message", "type", "param", "code"}


def test_chat_messages_documented_per_role(doc: dict[str, Any]) -> None:
    body = resolve(doc, "#/components/schemas/ChatCompletionRequest")
    branches = [resolve(doc, b["$ref"]) for b in body["properties"]["messages"]["items"]["oneOf"]]
    by_role = {b["properties"]["role"]["const"]: b for b in branches}
    assert set(by_role) == {"system", "developer", "user", "assistant", "tool"}
    for role in ("system", "developer", "user", "tool"):
        assert "content" in by_role[role]["required"], role
    assert "tool_call_id" in by_role["tool"]["required"]
    assistant = by_role["assistant"]
    assert "content" not in assistant["required"]
    assert [b["required"] for b in assistant["anyOf"]] == [["content"], ["tool_calls"]]

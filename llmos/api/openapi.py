"""The OpenAPI 3.1 document of the server, valid and self-contained: every `$ref` resolves.

Request bodies are parsed by `llmos.api.deps.json_body`, out of FastAPI's sight, so their schemas
come in through `openapi_extra` with nested models under a local `$defs`. A `#/$defs/...`
reference resolves against the root of the whole document, where no `$defs` lives, so each body
model and each model it nests is hoisted into `components/schemas` and referenced from there.
Every route also declares the errors it can answer, all in the OpenAI error shape.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from llmos.api.errors import STATUS_MEANINGS, ErrorResponse, error_responses
from llmos.security.acl import PUBLIC, ROUTE_PERMISSIONS

DEFS_PREFIX = "#/$defs/"
COMPONENTS_PREFIX = "#/components/schemas/"
# FastAPI's own 422 shape never leaves the server: validation errors are 400 OpenAI errors.
FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
SECURITY_SCHEME = "apiKey"


def responses(
    model: type[BaseModel] | None,
    *errors: int,
    status: int = 200,
    content: dict[str, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """A route's `responses`: its answer (`model`, plus other media types in `content`) and the
    errors particular to it (404, 409, 503); those every route shares are added by
    `build_document`."""
    answer: dict[str, Any] = {"description": "Successful Response"}
    if model is not None:
        answer["model"] = model
    if content is not None:
        answer["content"] = content
    return {status: answer, **error_responses(*errors)}


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with one that builds the corrected document once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_document(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_VALIDATION:
        schemas.pop(name, None)
    error_schema = ErrorResponse.model_json_schema(ref_template=COMPONENTS_PREFIX + "{model}")
    error_ref = _hoist(error_schema, schemas)
    rules = {(m, _template(p)): rule for (m, p), rule in ROUTE_PERMISSIONS.items()}
    for path, path_item in doc.get("paths", {}).items():
        for method, operation in path_item.items():
            _drop_validation_422(operation)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                if "schema" in media:
                    media["schema"] = _hoist(media["schema"], schemas)
            is_public = rules.get((method.upper(), path)) == PUBLIC
            if not is_public:
                operation["security"] = [{SECURITY_SCHEME: []}]
            answers = operation["responses"]
            for status in _error_statuses(operation, is_public=is_public):
                answers.setdefault(
                    str(status),
                    {
                        "description": STATUS_MEANINGS[status],
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
            operation["responses"] = dict(sorted(answers.items()))
    doc["components"]["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An llmos API key (`llmos keys create`); not needed with `auth none`.",
        }
    }
    return doc


def _error_statuses(operation: dict[str, Any], *, is_public: bool) -> list[int]:
    """The errors any route can answer, from what it is: 500 always; 401/403/429 behind a key
    (a route missing from the ACL table is refused with 403); 400 with parameters or a body;
    413 with a body. Route-specific errors (404, 409, 503) are declared on the route."""
    statuses = [500]
    if not is_public:
        statuses += [401, 403, 429]
    has_body = "requestBody" in operation
    if has_body or operation.get("parameters"):
        statuses.append(400)
    if has_body:
        statuses.append(413)
    return statuses


def _template(path: str) -> str:
    """`/v1/models/{model_id:path}` as the document spells it: `/v1/models/{model_id}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _hoist(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """Move `schema` (named by its title) and its `$defs` into `schemas`; return a `$ref`."""
    schema = _rewrite_refs(schema)
    for name, sub in schema.pop("$defs", {}).items():
        _add(schemas, name, sub)
    name = schema.get("title")
    if not name:
        return schema
    _add(schemas, name, schema)
    return {"$ref": COMPONENTS_PREFIX + name}


def _add(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    # Two routes may nest the same model (ChatMessage); two different models must not share a
    # name, or one would silently describe the other's body.
    if schemas.setdefault(name, schema) != schema:
        raise ValueError(f"two different schemas are both named {name!r} in the API document")


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(DEFS_PREFIX):
            out["$ref"] = COMPONENTS_PREFIX + ref.removeprefix(DEFS_PREFIX)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def _drop_validation_422(operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    schema = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema == {"$ref": COMPONENTS_PREFIX + "HTTPValidationError"}:
        del responses["422"]

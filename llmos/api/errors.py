"""Every failure leaves the server as OpenAI error JSON: `{"error": {message, type, param, code}}`.

`LlmosError` carries its own status, code and type; request-validation errors become 400 with the
first bad field as `param` (never FastAPI's 422 `detail` shape); anything unexpected becomes a 500
with a request id, logged with its traceback, and no trace ever reaches the client.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos.errors import (
    InvalidRequest,
    KernelDead,
    LlmosError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
# Failures a retry would not fix (the SDK retries every 5xx unless told not to).
NO_RETRY_CODES = {"kernel_dead", "process_killed", "model_unavailable", "insufficient_storage"}
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the server answers, in OpenAI's shape."""

    error: ErrorDetail


STATUS_MEANINGS = {
    400: "Invalid request: `param` names the first bad field.",
    401: "No API key, or a wrong, expired or revoked one.",
    403: "The key's role or grants do not allow this.",
    404: "No such object (or one you may not see).",
    409: "Conflicts with the current state.",
    413: "The request body is over `api.max_body_bytes`.",
    429: "A rate limit or quota was hit; see Retry-After.",
    500: "Internal error (a request id to find it in the server log).",
    503: "Overloaded, draining, the model cannot be made resident, or the kernel is dead.",
    507: "The data dir's disk is full or failed a write (`insufficient_storage`); nothing was "
    "stored. Free space and retry.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all in the OpenAI error shape."""
    return {
        status: {"model": ErrorResponse, "description": STATUS_MEANINGS[status]}
        for status in statuses
    }


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def llmos_error_body(exc: LlmosError) -> dict[str, Any]:
    message = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return error_body(message, exc.error_type, param=exc.param, code=exc.code)


def llmos_error_headers(exc: LlmosError) -> dict[str, str]:
    """Retry hints for the openai SDK: it retries 429/5xx by itself unless told not to."""
    if isinstance(exc, KernelDead) or exc.code in NO_RETRY_CODES:
        return {"x-should-retry": "false"}
    own: dict[str, str] | None = getattr(exc, "headers", None)  # RateLimited, QuotaExceeded
    if own:
        return dict(own)
    if exc.status_code in (429, 503):
        return {"Retry-After": str(RETRY_AFTER_S)}
    return {}


def llmos_error_response(exc: LlmosError) -> JSONResponse:
    return JSONResponse(
        llmos_error_body(exc), status_code=exc.status_code, headers=llmos_error_headers(exc)
    )


def validation_error(errors: list[Any]) -> InvalidRequest:
    """The most specific pydantic error as an InvalidRequest naming the field."""
    if not errors:
        return InvalidRequest("The request body is invalid.")
    located = [(_field_path(e.get("loc", ())), e) for e in errors]
    # The deepest field; among a union's branches, a broken rule ("at least 1 item") says more
    # than "should be a valid string". max keeps the first of equals.
    path, first = max(located, key=lambda pe: (len(pe[0]), not _is_type_error(pe[1])))
    param = _param(path)
    kind = first.get("type", "")
    msg = str(first.get("msg", "invalid"))
    if kind == "json_invalid":
        return InvalidRequest(
            f"The request body is not valid JSON: {msg.removeprefix('Invalid JSON: ')}.",
            hint="send one UTF-8 JSON object",
        )
    if kind == "model_type" and not path:
        return InvalidRequest("The request body must be a JSON object.")
    if kind == "missing":
        return InvalidRequest(f"Missing required field '{param}'.", param=param)
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unknown field '{param}'.", param=param)
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return InvalidRequest(f"Invalid value for '{param}': {msg} (received {shown}).", param=param)


def _field_path(loc: tuple[Any, ...]) -> list[str | int]:
    """`loc` without pydantic's union-branch tags (`str`, `list[TextPart]`) and FastAPI's
    `body`/`query` prefixes, so `param` reads like the JSON path the client sent."""
    return [part for part in loc if isinstance(part, int) or not _is_tag(part)]


def _is_type_error(error: Any) -> bool:
    kind = str(error.get("type", ""))
    return kind.endswith("_type") or kind == "none_required"


def _param(path: list[str | int]) -> str | None:
    """The path as OpenAI spells a `param`: `messages[0].content`, `stop[1]`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or None


_TYPE_TAGS = {"body", "query", "path", "str", "int", "float", "bool", "none", "list", "dict"}


def _is_tag(part: str) -> bool:
    # model class names (CamelCase) also appear as union tags
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


async def _on_llmos_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LlmosError)
    if exc.status_code >= 500:
        logger.warning(
            "%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.code
        )
    return llmos_error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return llmos_error_response(validation_error(list(exc.errors())))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        err: LlmosError = NotFound(
            f"No route {request.method} {request.url.path}.", code="route_not_found"
        )
    elif status == 413:
        err = PayloadTooLarge(str(exc.detail), code="request_too_large")
    elif status == 503:
        err = Overloaded(str(exc.detail))
    else:
        err = LlmosError(str(exc.detail), code=None)
        err.status_code = status
        err.error_type = _STATUS_TYPES.get(status, "server_error")
        err.code = None  # type: ignore[assignment]
    return JSONResponse(
        llmos_error_body(err),
        status_code=status,
        headers={**llmos_error_headers(err), **(exc.headers or {})},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = uuid.uuid4().hex[:12]
    logger.error(
        "request %s %s failed (request id %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return JSONResponse(
        error_body(
            f"Internal server error (request id {request_id}); see the server log.",
            "server_error",
            code="internal_error",
        ),
        status_code=500,
    )


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LlmosError, _on_llmos_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

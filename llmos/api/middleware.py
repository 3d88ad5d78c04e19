"""Pure-ASGI middleware: a request-body size limit (413) that never buffers an oversized body.

Pure ASGI rather than Starlette's BaseHTTPMiddleware so that `receive` stays the server's own and
client disconnects reach the handlers that watch for them.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos.errors import PayloadTooLarge


class BodyLimitMiddleware:
    """Refuse bodies over `max_body_bytes`: at once from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_413(send, declared, self.max_body_bytes)
            return
        num_bytes = 0

        async def limited_receive() -> Message:
            nonlocal num_bytes
            message = await receive()
            if message["type"] == "http.request":
                num_bytes += len(message.get("body", b""))
                if num_bytes > self.max_body_bytes:
                    raise _too_large(num_bytes, self.max_body_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(num_bytes: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the limit of {limit} bytes (at least {num_bytes}).",
        code="request_too_large",
        hint="send a smaller request or raise api.max_body_bytes",
    )


async def _send_413(send: Send, num_bytes: int, limit: int) -> None:
    exc = _too_large(num_bytes, limit)
    body = json.dumps(
        {
            "error": {
                "message": f"{exc.message} ({exc.hint})",
                "type": exc.error_type,
                "param": None,
                "code": exc.code,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

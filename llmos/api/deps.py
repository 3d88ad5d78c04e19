"""Dependencies shared by the routes: the server context and strict JSON body parsing.

Bodies are parsed here rather than by FastAPI so that any content type, invalid UTF-8, lone
surrogates, arrays instead of objects and wrong types all become the same 400 error shape.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from llmos.api.errors import validation_error
from llmos.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from llmos.config import Settings
    from llmos.kernel.loop import EngineLoop
    from llmos.monitor.metrics import Metrics

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass
class ServerContext:
    """What every route needs: the engine loop, the engine, settings and metrics."""

    loop: EngineLoop
    settings: Settings
    metrics: Metrics
    aliases: set[str] = field(default_factory=set)
    started_s: float = field(default_factory=time.time)
    guard: Any = None  # llmos.security.guard.Guard with `auth keys`; None with `auth none`

    @property
    def engine(self) -> Any:
        return self.loop.engine

    @property
    def model_name(self) -> str:
        return str(self.engine.model_name)

    def resolve_model(self, name: str) -> str:
        """The served model's id for `name`, or NotFound (nothing is opened by name here)."""
        if name == self.model_name or name in self.aliases:
            return self.model_name
        shown = name if len(name) <= 64 else name[:61] + "..."
        raise NotFound(
            f"The model {shown!r} does not exist or is not served here.",
            code="model_not_found",
            param="model",
            hint=f"served: {self.model_name}; see GET /v1/models",
        )


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.llmos
    return ctx


def json_body(model: type[ModelT]) -> Callable[[Request], Awaitable[ModelT]]:
    """A dependency that reads the body as JSON (whatever the content type) into `model`."""

    async def parse(request: Request) -> ModelT:
        raw = await request.body()
        if not raw.strip():
            raise InvalidRequest("The request body is empty; send a JSON object.")
        try:
            return model.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            raise validation_error(list(exc.errors())) from None

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI text for a body parsed by `json_body` (FastAPI cannot see it)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/$defs/{model}")
                }
            },
        }
    }

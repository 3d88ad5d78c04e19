"""Dependencies shared by the routes: the server context and strict JSON body parsing.

Bodies are parsed here rather than by FastAPI so that any content type, invalid UTF-8, lone
surrogates, arrays instead of objects and wrong types all become the same 400 error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from llmos.api.errors import validation_error
from llmos.errors import InvalidRequest, ModelNotResident

if TYPE_CHECKING:
    from llmos.config import Settings
    from llmos.kernel.loop import EngineLoop
    from llmos.kernel.residency import Residency, ServedEngine
    from llmos.monitor.eventlog import EventLog
    from llmos.monitor.metrics import Metrics
    from llmos.storage.registry import Registry
    from llmos.system import RegistrySource

ModelT = TypeVar("ModelT", bound=BaseModel)
MAX_LOAD_ATTEMPTS = 3


@dataclass
class ServerContext:
    """What every route needs: the engine loop, the resident models, settings and metrics."""

    loop: EngineLoop
    residency: Residency
    source: RegistrySource
    settings: Settings
    metrics: Metrics
    default_model: str  # the id of the model `llmos serve` started with
    events: EventLog  # the persisted event log (GET /os/events)
    started_s: float = field(default_factory=time.time)
    guard: Any = None  # llmos.security.guard.Guard with `auth keys`; None with `auth none`
    allotments: Any = None  # llmos.system.AllotmentSync: shares and reservations into the kernel

    @property
    def registry(self) -> Registry:
        """The registry of the server's data dir (opened on first use; may block briefly)."""
        return self.source.registry

    async def resolve_model(self, name: str) -> str:
        """The id of the model `name` names (resident, an alias, or in the registry), else
        NotFound `model_not_found` (names are compared and looked up, never opened)."""
        found = self.residency.lookup(name)
        if found is not None:
            return found
        return await asyncio.to_thread(self.residency.resolve, name)

    def model_names(self, model_id: str) -> list[str]:
        """Every name of a model that a grant may use: its id, `name:tag`, aliases."""
        names = [model_id, *self.residency.aliases_of(model_id)]
        if ":" not in model_id:
            names.append(f"{model_id}:latest")
        return names

    @contextlib.asynccontextmanager
    async def use_model(self, model_id: str) -> AsyncIterator[ServedEngine]:
        """The engine of `model_id`, loaded first if need be (off the event loop), pinned
        resident for the block: submit its processes inside, and they keep it resident. The
        request counts toward the model's demand history (what preloading forecasts from)."""
        self.residency.note_request(model_id)
        for _ in range(MAX_LOAD_ATTEMPTS):
            engine = self.residency.pin(model_id)
            if engine is not None:
                break
            self.loop.check_open(model_id)
            # shield: a client that goes away must not cancel a load other requests share.
            await asyncio.shield(asyncio.wrap_future(self.residency.request(model_id)))
        else:
            raise ModelNotResident(
                f"The model {model_id!r} was unloaded again before it could be used: too many "
                "models are in demand for kernel.max_resident_models.",
                code="models_busy",
                hint="retry, or raise kernel.max_resident_models",
            )
        try:
            yield engine
        finally:
            self.residency.release(model_id)


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

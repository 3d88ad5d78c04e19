"""What the `/os` admin routes and the probes answer, as models for the OpenAPI document.

Like `llmos.api.openai.responses`, these only describe the dicts the routes build; the fuzz test
checks every answer against them. Rows that are kernel or security dataclasses (a process, an
audit entry, engine stats) are described by those dataclasses themselves, so a new field there
shows up here without an edit.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from llmos.kernel.outputs import EngineStats
from llmos.kernel.process import ProcessInfo
from llmos.security.audit import AuditEntry
from llmos.storage.manifest import FileRole, ModelFormat


class ModelHealth(BaseModel):
    """One model's engine as the supervisor sees it."""

    model: str
    state: Literal["ok", "restarting", "crashloop", "stalled"]
    restarts: int
    failures: int
    last_error: str | None


class Health(BaseModel):
    """/health and /ready: 200 when ok, 503 with the reasons otherwise."""

    status: Literal["ok", "degraded", "not_ready", "dead"]
    reasons: list[str]
    models: list[ModelHealth] | None = None  # /ready: each model's engine state


class Version(BaseModel):
    version: str


class ProcessList(BaseModel):
    object: Literal["list"]
    data: list[ProcessInfo]


class Killed(BaseModel):
    pid: int
    killed: Literal[True]


class Reniced(BaseModel):
    pid: int
    priority: Literal["interactive", "normal", "batch"]


def _engine_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(EngineStats)
    return {f.name: (hints[f.name], ...) for f in dataclasses.fields(EngineStats)}


Stats = create_model(
    "Stats",
    __doc__="GET /os/stats: the engine counters summed over resident models, and more.",
    **_engine_fields(),
    prefix_cache_hit_rate=(float, ...),
    kv_cache_usage=(float, Field(ge=0.0, le=1.0)),
    tokens_per_s=(float, ...),
    queue_depth=(int, ...),
    num_live=(int, ...),
    max_live=(int, ...),
    is_draining=(bool, ...),
    uptime_s=(float, ...),
    default_model=(str, ...),
    max_resident_models=(int, ...),
    models=(dict[str, EngineStats], Field(description="Each resident model's own numbers.")),
)


class UserQuota(BaseModel):
    tokens_per_day: int | None
    max_concurrent: int | None
    max_priority: Literal["interactive", "normal", "batch"] | None
    max_context: int | None


class User(BaseModel):
    name: str
    role: Literal["admin", "operator", "user", "viewer"]
    is_disabled: bool
    quota: UserQuota
    models: list[str] = Field(description="Models granted to the user.")
    num_active_keys: int
    created_at: datetime
    share: float = Field(description="Fair-share weight (1 unless set).")


class UserList(BaseModel):
    object: Literal["list"]
    data: list[User]


class ReservationOut(BaseModel):
    """A guaranteed minimum for one user on one model."""

    user: str
    model: str
    blocks: int | None = Field(description="KV blocks; null when given as a fraction.")
    fraction: float | None = Field(description="Share of the model's KV pool, in (0, 1].")
    slots: int = Field(description="Running processes guaranteed.")


class ReservationList(BaseModel):
    object: Literal["list"]
    data: list[ReservationOut]


class Key(BaseModel):
    """An API key without its secret."""

    key_id: str
    user: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    requests_per_minute: int | None
    tokens_per_minute: int | None


class CreatedKey(Key):
    key: str = Field(description="The secret, shown this once.")


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[Key]


class AuditRows(BaseModel):
    object: Literal["list"]
    data: list[AuditEntry]


class StoredModel(BaseModel):
    id: str = Field(description="name:tag")
    name: str
    tag: str
    model: str = Field(description="The name to use in /v1 requests.")
    format: ModelFormat
    architecture: str
    parameters: int
    quantization: str | None
    size_bytes: int
    parent: str | None
    source: str
    created_at: datetime
    resident: bool


class StoredFile(BaseModel):
    path: str
    role: FileRole
    digest: str
    size_bytes: int


class StoredModelDetail(StoredModel):
    config: dict[str, Any]
    files: list[StoredFile]
    profile: dict[str, Any] | None = Field(
        description="The model's defaults (temperature, top_p, top_k, min_p, "
        "repetition_penalty, max_tokens, system, stop; only those set); null: llmos's defaults."
    )


class StoredModelList(BaseModel):
    object: Literal["list"]
    data: list[StoredModel]


class Exported(BaseModel):
    id: str
    path: str
    size_bytes: int


class Verified(BaseModel):
    id: str
    ok: bool
    bad_files: list[str]


class Removed(BaseModel):
    id: str
    deleted: Literal[True]
    unloaded: bool

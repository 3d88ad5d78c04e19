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
from llmos.kernel.residency import ResidencyInfo
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


class PredictorInfo(BaseModel):
    """The output-length predictor of the `llmos` policy (docs/design/scheduling.md)."""

    kendall_tau: float | None = Field(
        description="Kendall's tau between predicted and actual output tokens over the window "
        "of recent finished processes; null until two were predicted."
    )
    num_window: int = Field(description="Predicted finished processes in the window.")
    num_records: int = Field(description="Finished processes in memory to learn from.")
    num_trained_on: int = Field(description="Records the current model was fit on (0: cold).")
    num_fits: int
    last_fit_s: float = Field(description="Seconds the last fit took (in the background).")
    by_model: dict[str, float | None] = Field(description="Kendall's tau per model.")


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
    policy=(str, Field(description="The scheduling policy (kernel.policy).")),
    schedule_share=(
        float,
        Field(description="Share of tick time spent scheduling since start (per-tick cost)."),
    ),
    predictor=(PredictorInfo | None, ...),
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


class ResidencyReport(BaseModel):
    """GET /os/residency: why each model is resident, with the memory figures."""

    object: Literal["list"]
    data: list[ResidencyInfo] = Field(description="Pinned first, then by predicted demand.")
    max_resident_models: int
    memory_budget_bytes: int = Field(description="0: no budget.")
    used_bytes: int = Field(description="Measured bytes of the resident models.")
    demand_window_s: float
    is_preloading: bool
    preload_min_requests: float
    num_loads_on_demand: int = Field(description="Loads a request waited for (cold loads).")
    num_preloads: int = Field(description="Loads started by the demand forecast.")


class Pinned(BaseModel):
    """A pin or unpin: the model's id and whether it is resident now."""

    model: str
    pinned: bool
    state: Literal["resident", "not_loaded"]
    note: str | None = Field(description="Why a pinned model is not resident (it stays pinned).")

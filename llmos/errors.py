"""The LlmosError tree: every error a user can cause or meet, each with a code and HTTP status.

The API turns these into OpenAI-style error JSON; the CLI prints them as one line.
"""

from __future__ import annotations

import math


class LlmosError(Exception):
    """Base of every error llmos reports to a user."""

    status_code: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint
        self.param = param

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidRequest(LlmosError):
    status_code = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class Unauthenticated(LlmosError):
    status_code = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class PermissionDenied(LlmosError):
    status_code = 403
    code = "permission_denied"
    error_type = "permission_error"


class NotFound(LlmosError):
    status_code = 404
    code = "not_found"
    error_type = "not_found_error"


class Conflict(LlmosError):
    status_code = 409
    code = "conflict"
    error_type = "invalid_request_error"


class PayloadTooLarge(LlmosError):
    status_code = 413
    code = "payload_too_large"
    error_type = "invalid_request_error"


class QuotaExceeded(LlmosError):
    """A quota (tokens per day) is used up; retrying before it resets cannot succeed."""

    status_code = 429
    code = "insufficient_quota"
    error_type = "insufficient_quota"
    # The openai SDK retries every 429 unless told not to.
    headers: dict[str, str] = {"x-should-retry": "false"}


class RateLimited(LlmosError):
    """Too many requests or tokens for now; `Retry-After` says when to come back."""

    status_code = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 1.0,
        headers: dict[str, str] | None = None,
        **kwargs: str | None,
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s))), **(headers or {})}


class ModelNotResident(LlmosError):
    status_code = 503
    code = "model_not_resident"
    error_type = "server_error"


class InsufficientMemory(ModelNotResident):
    """A model whose load does not fit the memory budget (`kernel.memory_budget_bytes`)."""

    code = "insufficient_memory"

    def __init__(
        self, model_id: str, need_bytes: int, budget_bytes: int, used_bytes: int, *, never: bool
    ) -> None:
        mib = 1 << 20
        if never:
            message = (
                f"The model {model_id!r} needs about {need_bytes // mib} MiB to load, more than "
                f"the whole memory budget of {budget_bytes // mib} MiB."
            )
            hint = (
                "raise kernel.memory_budget_bytes, lower memory.kv_cache_bytes or "
                "memory.swap_bytes, or serve a smaller model"
            )
            self.headers = {"x-should-retry": "false"}
        else:
            message = (
                f"The model {model_id!r} needs about {need_bytes // mib} MiB to load; "
                f"{used_bytes // mib} MiB of the {budget_bytes // mib} MiB memory budget are held "
                "by resident models that are busy."
            )
            hint = "retry when they are idle, or raise kernel.memory_budget_bytes"
            self.headers = {"Retry-After": "5"}
        super().__init__(message, param="model", hint=hint)
        self.need_bytes = need_bytes
        self.budget_bytes = budget_bytes


class ProcessKilled(LlmosError):
    """The process behind a request was killed (`llmos kill`, DELETE /os/processes/{pid}, a
    frozen client, shutdown)."""

    status_code = 503
    code = "process_killed"
    error_type = "process_killed"


class ProcessFailed(LlmosError):
    """The kernel failed the process (a failed tick, a stalled engine, an engine rebuilt); the
    server serves on, so a retry can succeed."""

    status_code = 500
    code = "process_failed"
    error_type = "server_error"
    headers: dict[str, str] = {"x-should-retry": "true"}


def process_error(finish_reason: str | None, error: str | None) -> LlmosError | None:
    """The error a client gets for a process that ended this way (None: it has a result)."""
    if finish_reason == "killed":
        return ProcessKilled(
            "The process serving this request was killed.",
            hint="it was killed by an operator, at shutdown, or because its client stopped reading",
        )
    if finish_reason == "error":
        return ProcessFailed(f"Generation failed: {error or 'unknown error'}.")
    return None


class Overloaded(LlmosError):
    status_code = 503
    code = "overloaded"
    error_type = "server_error"


class ModelLoadError(LlmosError):
    """A model file or folder could not be read (missing, corrupt, unsupported)."""

    status_code = 400
    code = "model_load_error"
    error_type = "invalid_request_error"


class InvalidModelFile(ModelLoadError):
    """A file offered for import is not a well-formed GGUF/safetensors model (or is a pickle)."""

    code = "invalid_model_file"


class ModelCorrupted(ModelLoadError):
    """A stored model's blob is missing or no longer matches its sha256; re-import fixes it."""

    status_code = 503
    code = "model_unavailable"
    error_type = "server_error"


class StorageCorrupted(LlmosError):
    """Stored data (a dataset blob, a backup archive) failed its checksum."""

    status_code = 500
    code = "storage_corrupted"


class InsufficientStorage(LlmosError):
    """The disk holding the data dir is full."""

    status_code = 507
    code = "insufficient_storage"


class KernelDead(LlmosError):
    """The engine loop crashed; the server must restart it."""

    status_code = 503
    code = "kernel_dead"
    error_type = "server_error"

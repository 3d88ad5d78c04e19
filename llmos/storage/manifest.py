"""Manifests: what a stored model or dataset is, as plain pydantic data.

The database is the source of truth; these are the shapes the registry returns, the CLI shows and
backups write out as JSON (`manifests/...` in an archive).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmos.errors import InvalidModelFile
from llmos.storage.formats import gguf, hf_folder

ModelFormat = Literal["gguf", "hf"]
FileRole = Literal["weights", "config", "tokenizer", "template", "other"]
DatasetFormat = Literal["chat", "completion"]


class ModelFile(BaseModel):
    """One file of a model, stored as the blob `digest`."""

    path: str = Field(description="File name inside the model (e.g. model.gguf, config.json).")
    role: FileRole
    digest: str = Field(description="sha256 hex of the file's bytes.")
    size_bytes: int


class ModelProfile(BaseModel):
    """A model's own defaults: what a request that omits a field gets (request > profile >
    llmos's chat defaults). Every field is optional; the bounds are the API's."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus cut, in (0, 1].")
    top_k: int | None = Field(None, ge=-1, description="Keep the k likeliest; 0 or -1: off.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Drop below min_p x the top.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="1 is off.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    system: str | None = Field(None, description="System prompt for chats that send none.")
    stop: list[str] | None = Field(None, description="Stop strings.")
    context_length: int | None = Field(
        None,
        ge=16,
        description="Context in tokens, at most the model's own (the server's "
        "kernel.max_model_len still caps it).",
    )
    chat_template: str | None = Field(
        None, min_length=1, description="Jinja chat template used instead of the model's."
    )

    @field_validator("chat_template")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            check_template_syntax(value)
        return value

    def sampling(self) -> dict[str, Any]:
        """The sampling fields set, as SamplingParams keywords."""
        return self.model_dump(exclude_none=True, exclude=NOT_SAMPLING)


# Profile fields that are not SamplingParams keywords.
NOT_SAMPLING = {"system", "context_length", "chat_template"}


def check_template_syntax(source: str) -> None:
    """ValueError naming the line of a Jinja syntax error (the template is not run here)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"not a valid Jinja template: {e.message} (line {e.lineno})") from None


def read_profile(raw: dict[str, Any], where: str) -> ModelProfile | None:
    """The profile `raw` describes (None when empty); InvalidModelFile naming the bad key."""
    if not raw:
        return None
    try:
        return ModelProfile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise InvalidModelFile(
            f"{where}: sampling default {key}={err.get('input')!r} is invalid: {err['msg']}",
            hint="fix or remove that value in the model's files, then import again",
        ) from None


class ModelManifest(BaseModel):
    """A stored model: `name:tag` and everything needed to load and describe it."""

    name: str
    tag: str
    format: ModelFormat
    architecture: str
    parameters: int = Field(description="Number of weight elements.")
    quantization: str | None = Field(description="e.g. Q4_1, Q4_K_M, F32, BF16.")
    size_bytes: int
    parent: str | None = Field(description="The model this one was derived from, if any.")
    config: dict[str, Any] = Field(description="Hyperparameters (GGUF keys or config.json).")
    tokenizer: dict[str, Any] = Field(description="Tokenizer kind, size and special tokens.")
    chat_template: str | None
    source: str = Field(description="Where it was imported from (path or pkg:NAME).")
    created_at: datetime
    files: list[ModelFile]
    profile: ModelProfile | None = Field(
        None, description="The model's sampling defaults; None: llmos's chat defaults."
    )

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def context_length(self) -> int:
        """The trained context, chosen from `config` by the format's reader, as the loader does."""
        reader = gguf if self.format == "gguf" else hf_folder
        return reader.context_length(self.config)

    @property
    def main_file(self) -> ModelFile:
        """The GGUF file, or the first weights file of an HF folder."""
        weights = [f for f in self.files if f.role == "weights"]
        return weights[0] if weights else self.files[0]


class DatasetManifest(BaseModel):
    """A stored dataset: one JSONL blob plus what validation counted."""

    name: str
    format: DatasetFormat
    num_records: int
    num_tokens: int
    token_count_method: str
    digest: str
    size_bytes: int
    source: str
    created_at: datetime

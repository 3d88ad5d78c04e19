"""Manifests: what a stored model or dataset is, as plain pydantic data.

The database is the source of truth; these are the shapes the registry returns, the CLI shows and
backups write out as JSON (`manifests/...` in an archive).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

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

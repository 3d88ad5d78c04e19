"""The settings the CLI's local commands use: `Settings()` plus the short `$LLMOS_DATABASE_URL`.

Kept apart from the command modules so that any of them (and the key lookup every client
command makes) can read settings without importing another command group.
"""

from __future__ import annotations

import os

from llmos.config import Settings, StorageConfig


def storage_config() -> StorageConfig:
    """The storage settings; `$LLMOS_DATABASE_URL` is accepted as a short form of
    `$LLMOS_STORAGE__DATABASE_URL`."""
    config = Settings().storage
    if not config.database_url and os.environ.get("LLMOS_DATABASE_URL"):
        config = config.model_copy(update={"database_url": os.environ["LLMOS_DATABASE_URL"]})
    return config


def cli_settings() -> Settings:
    """Settings, with `$LLMOS_DATABASE_URL` accepted as the storage commands accept it."""
    return Settings().model_copy(update={"storage": storage_config()})

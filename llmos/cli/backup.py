"""`llmos backup ...`: create, verify and restore archives of the data dir."""

from __future__ import annotations

from pathlib import Path

import typer

from llmos.cli.common import console
from llmos.cli.models import StorageGroup, human_bytes, progress_bar
from llmos.cli.settings import storage_config
from llmos.storage.backup import create_backup, restore_backup, verify_backup

app = typer.Typer(
    cls=StorageGroup, no_args_is_help=True, help="Backups of models, data and metadata."
)


@app.command("create")
def create(
    path: Path | None = typer.Argument(
        None, help="Archive path or folder (default: DATA_DIR/backups)."
    ),
    with_blobs: bool = typer.Option(False, "--with-blobs", help="Include model and dataset blobs."),
) -> None:
    """Write a consistent snapshot of the database and manifests (and blobs) to one archive."""
    with progress_bar("backing up") as update:
        out = create_backup(storage_config(), path, with_blobs=with_blobs, on_progress=update)
    console.print(f"backup written to {out} ({human_bytes(out.stat().st_size)})", markup=False)


@app.command("verify")
def verify(path: Path = typer.Argument(..., help="Archive to check.")) -> None:
    """Check every file in an archive against its checksum."""
    with progress_bar("verifying") as update:
        info = verify_backup(path, on_progress=update)
    console.print(
        f"ok: {info.num_models} model(s), {info.num_datasets} dataset(s), {info.backend} "
        f"schema {info.schema_revision}, blobs {'included' if info.with_blobs else 'not included'}",
        markup=False,
    )


@app.command("restore")
def restore(
    path: Path = typer.Argument(..., help="Archive to restore."),
    force: bool = typer.Option(False, "--force", help="Replace a data dir that is not empty."),
) -> None:
    """Verify an archive, then replace the data dir with its contents atomically."""
    with progress_bar("restoring") as update:
        info = restore_backup(path, storage_config(), force=force, on_progress=update)
    console.print(
        f"restored {info.num_models} model(s) and {info.num_datasets} dataset(s) from {path}",
        markup=False,
    )

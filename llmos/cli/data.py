"""`llmos data ...`: import, list, show, rm and export datasets (JSONL chat/completion records)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from llmos.cli.common import console, safe_text
from llmos.cli.models import StorageGroup, human_bytes, open_storage, progress_bar
from llmos.storage.datasets import Datasets

app = typer.Typer(cls=StorageGroup, no_args_is_help=True, help="Stored datasets.")


def _datasets() -> Datasets:
    """Datasets of the data dir, sealed at rest unless security.encrypt_datasets is off."""
    from llmos.cli.credentials import open_cipher, settings

    storage = open_storage()
    s = settings()
    cipher = open_cipher(s, storage.db) if s.security.encrypt_datasets else None
    return Datasets(storage, cipher=cipher)


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="A .jsonl file of chat or completion records."),
    name: str = typer.Option(..., "--name", "-n", help="Name to store it as."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing dataset."),
) -> None:
    """Validate a JSONL file line by line and store it."""
    with progress_bar(f"importing {path.name}") as update:
        m = _datasets().import_file(path, name, replace=replace, on_progress=update)
    console.print(
        f"imported {m.name}: {m.num_records} {m.format} records, ~{m.num_tokens} tokens",
        markup=False,
    )


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List stored datasets."""
    items = _datasets().list()
    if as_json:
        console.print_json(json.dumps([m.model_dump(mode="json") for m in items]))
        return
    table = Table("NAME", "FORMAT", "RECORDS", "TOKENS", "SIZE", "CREATED", box=None)
    for m in items:
        table.add_row(
            m.name,
            m.format,
            str(m.num_records),
            str(m.num_tokens),
            human_bytes(m.size_bytes),
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(...),
    num_records: int = typer.Option(3, "--records", "-r", min=0, help="Records to print."),
) -> None:
    """Show a dataset's manifest and its first records."""
    datasets = _datasets()
    m = datasets.show(name)
    for key, value in m.model_dump(mode="json").items():
        console.print(f"{key:>18}  {value}", markup=False)
    for record in datasets.head(name, num_records):
        console.print(safe_text(json.dumps(record, ensure_ascii=False)), markup=False)


@app.command("rm")
def rm(name: str = typer.Argument(...)) -> None:
    """Remove a dataset (its blob goes at the next `llmos models gc`)."""
    m = _datasets().remove(name)
    console.print(f"removed {m.name}", markup=False)


@app.command("export")
def export(
    name: str = typer.Argument(...),
    dest: Path = typer.Argument(..., help="A .jsonl path or an existing folder."),
) -> None:
    """Write a dataset's JSONL out (verified while copying)."""
    with progress_bar(f"exporting {name}") as update:
        path = _datasets().export(name, dest, on_progress=update)
    console.print(f"exported {name} to {path}", markup=False)

"""`llmos models ...`: import, list, show, tag, rm, verify, export and gc stored models; and,
from `llmos.cli.residency`, ps, pin and unpin on a running server.

Also holds what the storage command groups share: opening the data dir from the settings, the
group that prints `error: ...` for an LlmosError, and a Rich progress bar on stderr.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from llmos.cli import residency
from llmos.cli.common import LlmosGroup, console, err_console, safe_text
from llmos.cli.residency import human_bytes
from llmos.cli.settings import storage_config
from llmos.errors import Conflict, InvalidRequest
from llmos.storage.blobs import ProgressFn
from llmos.storage.manifest import ModelManifest
from llmos.storage.registry import Registry
from llmos.storage.store import Storage


class StorageGroup(LlmosGroup):
    """One-line errors even when the sub-app runs alone; defers to the root under --debug."""

    def invoke(self, ctx: Any) -> Any:
        if ctx.find_root().params.get("debug"):
            return TyperGroup.invoke(self, ctx)
        return super().invoke(ctx)


def open_storage() -> Storage:
    return Storage(storage_config())


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressFn]:
    """A byte progress bar on stderr (when it is a terminal); yields the storage callback."""
    if not err_console.is_terminal:
        yield lambda _done, _total: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


app = typer.Typer(
    cls=StorageGroup,
    no_args_is_help=True,
    help="Stored models (the registry), and what a server holds resident (ps, pin, unpin).",
)
app.command("ps")(residency.ps)
app.command("pin")(residency.pin)
app.command("unpin")(residency.unpin)


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="A GGUF file, an HF safetensors folder, or pkg:NAME."),
    name: str | None = typer.Option(None, "--name", "-n", help="name[:tag] to store it as."),
    parent: str | None = typer.Option(None, "--parent", help="Model it was derived from."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing name:tag."),
) -> None:
    """Import a model into the registry (verified, deduplicated, atomic)."""
    storage = open_storage()
    with progress_bar(f"importing {source}") as update:
        m = Registry(storage).import_model(
            source, name, parent=parent, replace=replace, on_progress=update
        )
    console.print(f"imported {m.ref} ({m.format}, {human_bytes(m.size_bytes)})", markup=False)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List stored models."""
    models = Registry(open_storage()).list()
    if as_json:
        console.print_json(
            json.dumps([m.model_dump(mode="json", exclude={"config"}) for m in models])
        )
        return
    table = Table("NAME", "FORMAT", "ARCH", "PARAMS", "QUANT", "SIZE", "CREATED", box=None)
    for m in models:
        table.add_row(
            m.ref,
            m.format,
            m.architecture,
            f"{m.parameters / 1e6:.0f}M",
            m.quantization or "-",
            human_bytes(m.size_bytes),
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="name[:tag]"),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show a model's manifest."""
    m = Registry(open_storage()).show(name)
    if as_json:
        console.print_json(m.model_dump_json())
        return
    rows = [
        ("name", m.ref),
        ("format", m.format),
        ("architecture", m.architecture),
        ("parameters", f"{m.parameters:,}"),
        ("quantization", m.quantization or "-"),
        ("size", human_bytes(m.size_bytes)),
        ("parent", m.parent or "-"),
        ("source", m.source),
        ("created", m.created_at.isoformat()),
        ("tokenizer", json.dumps(m.tokenizer)),
        ("chat template", f"{len(m.chat_template)} chars" if m.chat_template else "-"),
        ("profile", _profile(m)),
    ]
    rows += [
        (f"file {f.role}", f"{f.path}  sha256:{f.digest}  {human_bytes(f.size_bytes)}")
        for f in m.files
    ]
    for key, value in rows:
        console.print(f"{key:>14}  {safe_text(str(value))}", markup=False)


def _profile(m: ModelManifest) -> str:
    if m.profile is None:
        return "- (llmos defaults)"
    shown = m.profile.model_dump(exclude_none=True)
    if "chat_template" in shown:
        shown["chat_template"] = f"<{len(shown['chat_template'])} characters>"
    return json.dumps(shown)


@app.command("tag")
def tag(
    src: str = typer.Argument(..., help="Existing name[:tag]."),
    dst: str = typer.Argument(..., help="New name[:tag]."),
) -> None:
    """Give a stored model another name (blobs are shared, not copied)."""
    m = Registry(open_storage()).tag(src, dst)
    console.print(f"tagged {m.ref}", markup=False)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="New name[:tag]."),
    src: str | None = typer.Option(
        None, "--from", help="The stored model it shares weights with (or `from` in --file)."
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="A default, KEY=VALUE (temperature=0.2); repeatable."
    ),
    system: str | None = typer.Option(None, "--system", "-s", help="Default system prompt."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="A profile in TOML: profile keys, and `from` (see docs)."
    ),
    template: Path | None = typer.Option(
        None, "--template", help="A file holding a Jinja chat template to use instead."
    ),
) -> None:
    """Make a model that shares another's blobs and differs only in its profile (its sampling
    defaults, system prompt, context length and chat template), like Ollama's `create`.
    Options given on the command line win over the same keys in --file; `--param stop=X` may
    repeat."""
    values = _read_profile_file(file) if file is not None else {}
    src = src or values.pop("from", None)
    values.pop("from", None)
    if not src:
        raise InvalidRequest(
            "say which model it derives from", hint="--from MODEL, or from = MODEL in --file"
        )
    if template is not None:
        values["chat_template"] = _read_text(template, "--template")
    values |= _parse_params(param)
    m = Registry(open_storage()).create(name, src, params=values, system=system)
    console.print(f"created {m.ref} from {src}: {_profile(m)}", markup=False)


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InvalidRequest(f"{option}: cannot read {path}: {reason}") from None


def _read_profile_file(path: Path) -> dict[str, Any]:
    """A TOML profile: profile keys at the top level (and `from`), values typed by TOML."""
    import tomllib

    try:
        values = tomllib.loads(_read_text(path, "--file"))
    except tomllib.TOMLDecodeError as e:
        raise InvalidRequest(f"{path} is not valid TOML: {e}") from None
    for key, value in values.items():
        if isinstance(value, dict):
            raise InvalidRequest(
                f"{path}: [{key}] tables are not profile keys",
                hint="write the keys at the top level",
            )
    if "from" in values and not isinstance(values["from"], str):
        raise InvalidRequest(f"{path}: `from` must be a model name")
    return values


def _parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs: numbers as numbers, `stop` collected into a list."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        key = key.strip()
        if key == "stop":
            out.setdefault("stop", []).append(text)
            continue
        value: Any = text
        for parse in (int, float):
            try:
                value = parse(text)
                break
            except ValueError:
                continue
        out[key] = value
    return out


@app.command("rm")
def rm(name: str = typer.Argument(..., help="name[:tag]")) -> None:
    """Remove a model, then delete blobs no other model or dataset uses."""
    storage = open_storage()
    m = Registry(storage).remove(name)
    freed = ""
    with contextlib.suppress(Conflict):  # another process is writing: its gc will do it
        freed = f", freed {human_bytes(storage.gc(timeout_s=2.0).freed_bytes)}"
    console.print(f"removed {m.ref}{freed}", markup=False)


@app.command("verify")
def verify(name: str | None = typer.Argument(None, help="name[:tag]; default: all")) -> None:
    """Re-hash the blobs of one or all models; exit 1 if any is corrupt."""
    with progress_bar("verifying") as update:
        results = Registry(open_storage()).verify(name, on_progress=update)
    for r in results:
        if r.is_ok:
            console.print(f"ok       {r.ref}", markup=False)
        else:
            console.print(f"CORRUPT  {r.ref}: {', '.join(r.bad_files)}", markup=False)
    bad = [r.ref for r in results if not r.is_ok]
    if bad:
        err_console.print(
            f"error: {len(bad)} model(s) corrupted (hint: re-import them with "
            "`llmos models import SOURCE --name NAME`)",
            markup=False,
        )
        raise typer.Exit(1)


@app.command("export")
def export(
    name: str = typer.Argument(..., help="name[:tag]"),
    dest: Path = typer.Argument(..., help="A .gguf path (GGUF models) or a new folder (HF)."),
) -> None:
    """Write a stored model out as a GGUF file or an HF folder."""
    with progress_bar(f"exporting {name}") as update:
        path = Registry(open_storage()).export(name, dest, on_progress=update)
    console.print(f"exported {name} to {path}", markup=False)


@app.command("gc")
def gc() -> None:
    """Delete blobs that no model or dataset references, and crash leftovers."""
    storage = open_storage()
    before = storage.disk_usage_bytes()
    report = storage.gc()
    console.print(
        f"removed {report.removed_blobs} blob(s), {report.removed_temps} temp file(s), "
        f"{report.removed_cache_dirs} cache folder(s); freed {human_bytes(report.freed_bytes)} "
        f"({human_bytes(before)} -> {human_bytes(storage.disk_usage_bytes())})",
        markup=False,
    )

"""`llmos placement [--inventory FILE] [--demand FILE] [--json]`: which models go on which device.

Without an inventory file the inventory is this machine: one device, `host`, with the memory
budget (`kernel.memory_budget_bytes`, else 80% of RAM), holding the registry's models at the
footprint the server refuses loads by. Files are TOML or JSON (by suffix); the format is in
docs/placement.md. The solve itself is `llmos.kernel.placement.plan_placement`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from llmos.cli.common import console, safe_text
from llmos.errors import InvalidRequest
from llmos.kernel.placement import (
    DEVICE_KINDS,
    Device,
    ModelSpec,
    Plan,
    format_bytes,
    plan_placement,
)

app = typer.Typer()

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


@app.command("placement")
def placement(
    inventory: Path | None = typer.Option(
        None, "--inventory", help="TOML or JSON: devices (and models, current, pinned)."
    ),
    demand: Path | None = typer.Option(
        None, "--demand", help="TOML or JSON: [demand] model = requests per window."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan which models go on which device to serve the most forecast demand (a MILP), and
    say why for each model.

    Without --inventory: this machine's memory budget and the registry's models. Without
    --demand: every model has the same demand.
    """
    spec = read_table(inventory) if inventory else {}
    devices = parse_devices(spec, inventory) if inventory else local_devices()
    models = parse_models(spec, inventory) if "models" in spec else registry_models()
    wanted = read_table(demand).get("demand", None) if demand else spec.get("demand")
    if demand and wanted is None:
        raise InvalidRequest(f"{demand}: no [demand] table (model = number)")
    plan = plan_placement(
        devices,
        models,
        parse_demand(wanted, models, demand or inventory),
        current=_placements(spec, "current", inventory),
        pinned=_placements(spec, "pinned", inventory),
    )
    if as_json:
        console.print(json.dumps(plan.to_dict(), indent=2), markup=False, highlight=False)
    elif not models:
        console.print("placement: no models to place (llmos models import FILE adds one)")
    else:
        show(plan)


# --- reading files ------------------------------------------------------------------------------


def read_table(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or JSON (.json) file's top-level table; one-line errors otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise InvalidRequest(f"{path}: expected a .toml or .json file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: expected a table at the top, got {type(data).__name__}")
    return data


def parse_devices(spec: dict[str, Any], path: Path | None) -> list[Device]:
    rows = _rows(spec, "devices", path)
    if not rows:
        raise InvalidRequest(f"{path}: no devices (add [[devices]] with name and capacity)")
    devices = []
    for n, row in enumerate(rows, 1):
        where = f"{path}: devices #{n}"
        _only(row, {"name", "kind", "capacity", "node"}, where)
        kind = row.get("kind", "host")
        if kind not in DEVICE_KINDS:
            raise InvalidRequest(f"{where}: kind {kind!r} is not one of host, gpu")
        node = row.get("node", "local")
        devices.append(
            Device(
                _text(row, "name", where),
                parse_size(row.get("capacity"), f"{where}: capacity"),
                kind,
                node if isinstance(node, str) else str(node),
            )
        )
    return devices


def parse_models(spec: dict[str, Any], path: Path | None) -> list[ModelSpec]:
    models = []
    for n, row in enumerate(_rows(spec, "models", path), 1):
        where = f"{path}: models #{n}"
        _only(row, {"id", "footprint", "max_replicas", "throughput"}, where)
        replicas = row.get("max_replicas")
        if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool)):
            raise InvalidRequest(f"{where}: max_replicas must be a whole number, got {replicas!r}")
        throughput = row.get("throughput")
        is_table = isinstance(throughput, dict) and all(map(_is_number, throughput.values()))
        if not (throughput is None or _is_number(throughput) or is_table):
            raise InvalidRequest(
                f"{where}: throughput must be a number or a table of device/kind = number"
            )
        models.append(
            ModelSpec(
                _text(row, "id", where),
                parse_size(row.get("footprint"), f"{where}: footprint"),
                max_replicas=replicas,
                throughput=throughput,
            )
        )
    return models


def parse_demand(table: Any, models: list[ModelSpec], path: Path | None) -> dict[str, float]:
    """model id -> demand; every model 1.0 when there is no table."""
    if table is None:
        return {m.model_id: 1.0 for m in models}
    if not isinstance(table, dict):
        raise InvalidRequest(f"{path}: demand must be a table of model = number")
    for model_id, value in table.items():
        if not _is_number(value):
            raise InvalidRequest(f"{path}: demand of {model_id} must be a number, got {value!r}")
    return {str(k): float(v) for k, v in table.items()}


def parse_size(value: Any, where: str) -> int:
    """Bytes from a whole number or a string with a unit: `24 GiB`, `1.5GB`, `512 MiB`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidRequest(
            f"{where} must be bytes or a size like '24 GiB' or '1.5 GB', got {value!r}"
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])


def _placements(spec: dict[str, Any], key: str, path: Path | None) -> dict[str, list[str]]:
    table = spec.get(key, {})
    if not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(d, str) for d in v) for v in table.values()
    ):
        raise InvalidRequest(f"{path}: [{key}] must be a table of model = [device names]")
    return {str(k): list(v) for k, v in table.items()}


def _rows(spec: dict[str, Any], key: str, path: Path | None) -> list[dict[str, Any]]:
    rows = spec.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidRequest(f"{path}: {key} must be a list of tables ([[{key}]] in TOML)")
    return rows


def _only(row: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(row) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- this machine -------------------------------------------------------------------------------


def local_devices() -> list[Device]:
    """This machine: host RAM under the memory budget."""
    from llmos.cli.settings import cli_settings

    return [Device("host", cli_settings().kernel.memory_budget(), "host")]


def registry_models() -> list[ModelSpec]:
    """The registry's models at the footprint the server refuses loads by (the weights' load
    peak, the KV pool and the swap area: `llmos.models.footprint`)."""
    from llmos.cli.settings import cli_settings
    from llmos.models.footprint import load_bytes_for
    from llmos.storage.names import ModelRef, display_id
    from llmos.storage.registry import Registry
    from llmos.storage.store import Storage

    settings = cli_settings()
    memory = settings.memory
    return [
        ModelSpec(
            display_id(ModelRef(m.name, m.tag)),
            load_bytes_for(m.parameters, memory.kv_cache_bytes, memory.swap_bytes),
            max_replicas=1,
        )
        for m in Registry(Storage(settings.storage)).list()
    ]


# --- printing -----------------------------------------------------------------------------------


def show(plan: Plan) -> None:
    """The objective, then one row per model (where, or why not) and one per device."""
    placed = sum(m.is_placed for m in plan.models)
    share = plan.served_demand / plan.total_demand if plan.total_demand else 1.0
    proof = (
        "optimal"
        if plan.is_optimal
        else f"best found in the time limit; no plan serves more than {plan.served_bound:g}"
    )
    console.print(
        f"placement: {placed} of {len(plan.models)} models placed; served demand "
        f"{plan.served_demand:g} of {plan.total_demand:g} ({share:.0%}, {proof}); "
        f"{len(plan.loads)} load(s), {len(plan.unloads)} unload(s)",
        markup=False,
    )
    table = Table("MODEL", "FOOTPRINT", "DEMAND", "SERVED", "DEVICES", "WHY", box=None)
    for m in plan.models:
        table.add_row(
            _cell(m.model_id),
            format_bytes(m.footprint_bytes),
            f"{m.demand:g}",
            f"{m.served:g}",
            _cell(", ".join(m.devices) or "-"),
            _cell(m.reason),
        )
    console.print(table)
    devices = Table("DEVICE", "KIND", "NODE", "CAPACITY", "USED", "FREE", "MODELS", box=None)
    for d in plan.devices:
        devices.add_row(
            _cell(d.name),
            d.kind,
            _cell(d.node),
            format_bytes(d.capacity_bytes),
            format_bytes(d.used_bytes),
            format_bytes(d.free_bytes),
            _cell(", ".join(d.models) or "-"),
        )
    console.print(devices)


def _cell(text: str) -> Text:
    """Names and reasons come from files: printed as they are, never as Rich markup."""
    return Text(safe_text(text))

"""`llmos placement` through Typer's runner: a plan for this machine from a real registry of tiny
models, a plan from an inventory file, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.cli.app import app
from llmos.config import Settings
from llmos.models.footprint import load_bytes_for
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.storage.helpers import write_gguf

runner = CliRunner()
KV_BYTES = 1 << 20


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with three tiny GGUF models: small (16K weights), mid (64K), big (1M)."""
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOS_STORAGE__DATABASE_URL", raising=False)
    monkeypatch.delenv("LLMOS_DATABASE_URL", raising=False)
    monkeypatch.setenv("LLMOS_MEMORY__KV_CACHE_BYTES", str(KV_BYTES))
    monkeypatch.setenv("LLMOS_MEMORY__SWAP_BYTES", "0")
    registry = Registry(Storage(Settings().storage))
    for name, elements in (("small", 4096), ("mid", 16384), ("big", 262144)):
        registry.import_model(write_gguf(tmp_path / f"{name}.gguf", elements=elements), name)
    return tmp_path / "home"


def footprint(num_weights: int) -> int:
    return load_bytes_for(num_weights, KV_BYTES, 0)


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["placement", *args])


def test_this_machine_gets_a_plan_under_its_memory_budget(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = footprint(4 * 4096) + footprint(4 * 16384)  # small and mid fit together, big never
    monkeypatch.setenv("LLMOS_KERNEL__MEMORY_BUDGET_BYTES", str(budget))
    r = run("--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    by_model = {m["model"]: m for m in plan["models"]}
    assert by_model["small"]["devices"] == ["host"] and by_model["mid"]["devices"] == ["host"]
    assert by_model["big"]["devices"] == []
    assert by_model["big"]["reason"].startswith("needs ")
    assert "the largest device, host, has" in by_model["big"]["reason"]
    assert plan["devices"][0]["capacity_bytes"] == budget
    assert plan["devices"][0]["used_bytes"] == budget
    assert plan["served_demand"] == 2 and plan["is_optimal"]

    text = run()
    assert text.exit_code == 0
    assert text.stdout.startswith("placement: 2 of 3 models placed; served demand 2 of 3")
    assert "MODEL" in text.stdout and "DEVICE" in text.stdout


def test_demand_file_decides_what_is_resident(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = footprint(4 * 16384)  # room for one of small and mid
    monkeypatch.setenv("LLMOS_KERNEL__MEMORY_BUDGET_BYTES", str(budget))
    demand = tmp_path / "demand.json"
    demand.write_text(json.dumps({"demand": {"small": 1, "mid": 9}}))
    plan = json.loads(run("--demand", str(demand), "--json").stdout)
    placed = [m["model"] for m in plan["models"] if m["devices"]]
    assert placed == ["mid"] and plan["served_demand"] == 9


def test_inventory_file_with_devices_models_and_current(tmp_path: Path) -> None:
    inventory = tmp_path / "cluster.toml"
    inventory.write_text(
        """
[[devices]]
name = "gpu0"
kind = "gpu"
capacity = "24 GiB"

[[devices]]
name = "host"
capacity = "64 GiB"

[[models]]
id = "llama-8b"
footprint = "18 GiB"
max_replicas = 2
throughput = { gpu = 40, host = 4 }

[[models]]
id = "smollm2"
footprint = "1.2 GiB"

[current]
smollm2 = ["host"]

[demand]
llama-8b = 60
smollm2 = 10
"""
    )
    r = run("--inventory", str(inventory), "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    llama, smol = plan["models"]
    assert llama["devices"] == ["gpu0", "host"] and llama["served"] == 44
    assert llama["reason"].endswith("serves 44 of 60; it may have at most 2 replica(s)")
    assert smol["reason"] == "on host (kept): serves all its demand (10)"
    assert plan["loads"] == [["llama-8b", "gpu0"], ["llama-8b", "host"]]
    assert plan["unloads"] == []


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("inv.yaml", "x", "expected a .toml or .json file"),
        ("inv.toml", "[[devices]\nname=", "not valid TOML"),
        ("inv.json", "[1, 2]", "expected a table at the top, got list"),
        ("inv.toml", "", "no devices"),
        ("inv.toml", '[[devices]]\nname = "g"\ncapacity = "lots"', "capacity must be bytes"),
        ("inv.toml", '[[devices]]\nname = "g"\ncapacity = 1\nkind = "tpu"', "kind 'tpu'"),
        ("inv.toml", '[[devices]]\nname = "g"\ncapacity = 1\nram = 2', "unknown key 'ram'"),
        (
            "inv.toml",
            '[[devices]]\nname = "g"\ncapacity = 10\n[[models]]\nid = "a"\nfootprint = 5\n'
            "[demand]\nb = 3",
            "demand names unknown model 'b' (known: a)",
        ),
        (
            "inv.toml",
            '[[devices]]\nname = "g"\ncapacity = 10\n[[models]]\nid = "a"\nfootprint = 50\n'
            '[pinned]\na = ["g"]',
            "pinned model a needs 50 B; device g has 10 B",
        ),
    ],
)
def test_bad_inventory_files_are_one_line_errors(
    tmp_path: Path, name: str, content: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    r = run("--inventory", str(path))
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_and_bad_demand_files_are_one_line_errors(home: Path, tmp_path: Path) -> None:
    r = run("--demand", str(tmp_path / "nope.json"))
    assert r.exit_code == 1 and "cannot read it" in r.stderr
    bad = tmp_path / "d.toml"
    bad.write_text('[demand]\nsmall = "lots"')
    r = run("--demand", str(bad))
    assert r.exit_code == 1 and "demand of small must be a number" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

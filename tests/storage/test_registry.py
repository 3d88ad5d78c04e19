from __future__ import annotations

import hashlib
import os

import pytest

from llmos.errors import Conflict, InvalidRequest, ModelCorrupted, ModelLoadError, NotFound
from llmos.storage.registry import Registry, ensure_default_model
from tests.required import require_smollm2
from tests.storage.helpers import flip_byte, write_gguf, write_hf_folder


def blob_files(storage) -> list[str]:
    return sorted(os.listdir(storage.layout.blobs))


def test_gguf_import_list_show_verify_rm(registry, storage, tmp_path):
    src = write_gguf(tmp_path / "Tiny Model.gguf")
    m = registry.import_model(src)
    assert m.ref == "tiny-model:latest"
    assert (m.format, m.architecture, m.parameters, m.quantization) == (
        "gguf",
        "llama",
        4 * 4096,
        "F32",
    )
    assert m.chat_template and m.tokenizer["num_tokens"] == 100
    assert m.files[0].digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [x.ref for x in registry.list()] == ["tiny-model:latest"]
    assert registry.show("tiny-model").config["llama.context_length"] == 128
    assert [r.is_ok for r in registry.verify()] == [True]
    registry.remove("tiny-model")
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.show("tiny-model")
    assert storage.gc().removed_blobs == 1 and blob_files(storage) == []


def test_reimport_stores_no_second_copy(registry, storage, tmp_path):
    src = write_gguf(tmp_path / "m.gguf")
    a = registry.import_model(src, "m")
    b = registry.import_model(src, "m")  # same name, same content: a no-op
    c = registry.import_model(src, "other:v2")  # another name: the blob is shared
    assert a.files == b.files == c.files
    assert len(blob_files(storage)) == 1


def test_different_content_under_an_existing_name_needs_replace(registry, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf", seed=1), "m")
    other = write_gguf(tmp_path / "b.gguf", seed=2)
    with pytest.raises(Conflict, match="--replace"):
        registry.import_model(other, "m")
    m = registry.import_model(other, "m", replace=True)
    assert registry.show("m").files == m.files


def test_tag_shares_blobs_and_rm_keeps_them_for_the_other_name(registry, storage, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "a", parent="base:v1")
    t = registry.tag("a", "b:v1")
    assert t.parent == "base:v1"
    registry.remove("a")
    assert storage.gc().removed_blobs == 0
    assert registry.resolve("b:v1").is_file()
    with pytest.raises(Conflict):
        registry.tag("b:v1", "b:v1")


def test_resolve_and_export_gguf(registry, tmp_path):
    src = write_gguf(tmp_path / "a.gguf")
    registry.import_model(src, "a")
    path = registry.resolve("a")
    assert path.read_bytes() == src.read_bytes()
    out = registry.export("a", tmp_path / "out.gguf")
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(Conflict):
        registry.export("a", out)


def test_hf_folder_import_resolve_export(registry, tmp_path):
    src = write_hf_folder(tmp_path / "hf")
    (src / "pytorch_model.bin").write_bytes(b"not opened")  # ignored next to safetensors
    m = registry.import_model(src, "hf-model")
    assert m.format == "hf" and m.architecture == "llama" and m.parameters == 40
    assert m.quantization == "F32" and m.chat_template == "{{ messages }}"
    assert sorted(f.path for f in m.files) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    folder = registry.resolve("hf-model")
    for f in m.files:
        assert (folder / f.path).read_bytes() == (src / f.path).read_bytes()
    assert registry.resolve("hf-model") == folder
    out = registry.export("hf-model", tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == sorted(f.path for f in m.files)


def test_corrupt_blob_is_caught_by_verify_and_resolve_and_others_stay_usable(
    registry, storage, tmp_path
):
    src = write_gguf(tmp_path / "a.gguf", seed=1)
    registry.import_model(src, "a")
    registry.import_model(write_gguf(tmp_path / "b.gguf", seed=2), "b")
    registry.resolve("a")  # verified and cached in this process
    flip_byte(storage.blobs.path(registry.show("a").files[0].digest), offset=-7)
    results = {r.ref: r.is_ok for r in registry.verify()}
    assert results == {"a:latest": False, "b:latest": True}
    with pytest.raises(ModelCorrupted) as e:
        registry.resolve("a")
    assert isinstance(e.value, ModelLoadError)
    assert "a:latest" in e.value.message and "re-import" in (e.value.hint or "")
    fresh = Registry(storage)  # a new process (no cache) refuses it too
    with pytest.raises(ModelCorrupted):
        fresh.resolve("a")
    with pytest.raises(ModelCorrupted):
        registry.export("a", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    assert registry.resolve("b").is_file()
    registry.import_model(src, "a")  # the fix the hint names
    assert registry.resolve("a").is_file()


def test_missing_blob_is_reported(registry, storage, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "a")
    p = storage.blobs.path(registry.show("a").files[0].digest)
    p.unlink()
    with pytest.raises(ModelCorrupted, match="missing"):
        registry.resolve("a")


BAD_NAMES = [
    "../../etc/passwd",
    "a/../../b",
    "/abs",
    "..%2F",
    "C:\\x",
    "a\0b",
    "x" * 10_000,
    "..",
    "a/b",
    "ｓmollm",
    "-lead",
    ".hidden",
    "a:",
    "a:b:c",
    "name:../x",
    " ",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_any_file_is_touched(registry, storage, tmp_path, name):
    src = write_gguf(tmp_path / "a.gguf")
    with pytest.raises(InvalidRequest):
        registry.import_model(src, name)
    with pytest.raises(InvalidRequest):
        registry.show(name)
    with pytest.raises(InvalidRequest):
        registry.remove(name)
    assert blob_files(storage) == [] and registry.list() == []


def test_ensure_default_model_imports_smollm2_once(registry, storage):
    require_smollm2()
    m = ensure_default_model(registry)
    assert m.ref == "smollm2:latest" and m.architecture == "llama" and m.quantization == "Q4_1"
    assert m.parameters == 134_515_008
    again = ensure_default_model(registry)
    assert again.files == m.files and len(blob_files(storage)) == 1
    assert registry.resolve("smollm2").stat().st_size == m.size_bytes


def test_resolve_gives_a_gguf_path_that_is_the_verified_blob(registry, storage, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "a")
    path = registry.resolve("a")
    assert path.suffix == ".gguf"
    assert path.resolve() == storage.blobs.path(registry.show("a").files[0].digest)
    registry.remove("a")
    storage.gc()
    assert not path.is_symlink()


@pytest.mark.slow
def test_the_kernel_loader_reads_a_registry_model_and_a_corrupt_one_is_refused(registry, storage):
    require_smollm2()
    from llmos.models.loader import load_model_files

    ensure_default_model(registry)
    files = load_model_files(registry.resolve("smollm2"))
    assert files.config is not None and len(files.weights) > 0
    flip_byte(storage.blobs.path(registry.show("smollm2").files[0].digest), offset=-100)
    with pytest.raises(ModelCorrupted, match="smollm2:latest"):
        load_model_files(registry.resolve("smollm2"))

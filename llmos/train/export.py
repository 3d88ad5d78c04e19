"""Saving results: a LoRA adapter in PEFT's format, or merged weights as an HF model folder.

An adapter folder is what `peft.PeftModel.from_pretrained` reads: `adapter_config.json` and
`adapter_model.safetensors` with PEFT's key names (`base_model.model.<module>.lora_A.weight`).
A merged folder is what `llmos models import` and the loader read: `config.json`,
`model.safetensors` (HF names), `tokenizer.json`, `tokenizer_config.json` (with the chat
template) and `generation_config.json`. Both are written to a temporary sibling and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.models.config import ModelConfig
from llmos.models.tokenizer import Tokenizer
from llmos.train.lora import TARGET_MODULES, LoraConfig, apply_lora, lora_state_dict

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(
    model: nn.Module, lora: LoraConfig, folder: Path, *, base_model: str | None = None
) -> Path:
    """The LoRA adapter of `model` as a PEFT folder."""
    from safetensors.torch import save_file

    tensors = {PEFT_PREFIX + k: v.contiguous() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise InvalidRequest("the model carries no LoRA adapter")
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(lora.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _write_json(tmp / ADAPTER_CONFIG, config)

    return _write_atomically(folder, write)


def read_adapter_config(folder: Path) -> LoraConfig:
    """The LoraConfig of a PEFT adapter folder; InvalidRequest for what llmos cannot run."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise NotFound(f"{folder} has no {ADAPTER_CONFIG}")
    raw = json.loads(path.read_text())
    if raw.get("peft_type", "LORA") != "LORA":
        raise InvalidRequest(f"{folder}: peft_type {raw.get('peft_type')!r} is not LORA")
    for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if raw.get(key):
            raise InvalidRequest(f"{folder}: adapters with {key} set are not supported")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        raise InvalidRequest(
            f"{folder}: target_modules given as a pattern ({targets!r}) is not supported",
            hint="list the module names: " + ", ".join(TARGET_MODULES),
        )
    cfg = LoraConfig(
        rank=int(raw["r"]),
        alpha=float(raw["lora_alpha"]),
        dropout=float(raw.get("lora_dropout") or 0.0),
        target_modules=list(targets),
    )
    cfg.validate()
    return cfg


def load_adapter(model: nn.Module, folder: Path) -> LoraConfig:
    """Wrap `model`'s target modules in LoRA and load a PEFT adapter's weights into them."""
    from safetensors.torch import load_file

    cfg = read_adapter_config(folder)
    apply_lora(model, cfg)
    tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    wanted = lora_state_dict(model)
    found = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).replace(".default.", ".")
        if name not in wanted:
            raise InvalidRequest(f"{folder}: adapter tensor {key!r} matches no module")
        if value.shape != wanted[name].shape:
            raise InvalidRequest(
                f"{folder}: {key} has shape {list(value.shape)}, "
                f"the model needs {list(wanted[name].shape)}"
            )
        found[name] = value
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise InvalidRequest(f"{folder}: the adapter has no tensor for {missing[0]}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in found:
                p.copy_(found[name])
    return cfg


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json for `config`, as transformers writes it (read back by `config_from_hf`)."""
    c = config
    is_gemma = c.architecture == "gemma3"
    out: dict[str, Any] = {
        "architectures": ["Gemma3ForCausalLM" if is_gemma else "LlamaForCausalLM"],
        "model_type": "gemma3_text" if is_gemma else "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "hidden_act": c.hidden_act,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids[0] if len(c.eos_token_ids) == 1 else c.eos_token_ids,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    }
    if is_gemma:
        out |= {
            "hidden_activation": c.hidden_act,
            "rope_local_base_freq": c.rope_local_theta,
            "sliding_window": c.sliding_window,
            "layer_types": [
                "sliding_attention" if c.is_sliding(i) else "full_attention"
                for i in range(c.num_layers)
            ],
            "query_pre_attn_scalar": c.query_pre_attn_scalar,
            "final_logit_softcapping": c.final_logit_softcapping,
            "attn_logit_softcapping": c.attn_logit_softcapping,
        }
    return out


def save_merged(
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    folder: Path,
    *,
    tokenizer: Tokenizer | None = None,
    chat_template: str | None = None,
) -> Path:
    """Merged float32 weights (HF names) as an HF model folder the registry can import."""
    from safetensors.torch import save_file

    unmerged = [k for k in weights if ".lora_" in k or ".base_layer." in k]
    if unmerged:
        raise InvalidRequest(f"unmerged LoRA tensor {unmerged[0]!r}: pass merged weights")
    tensors = {k: v.detach().float().contiguous() for k, v in weights.items()}
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", hf_config(config))
        eos = config.eos_token_ids
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": config.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos},
        )
        if tokenizer is not None:
            (tmp / "tokenizer.json").write_text(tokenizer.backend.to_str())
            tok_cfg: dict[str, Any] = {
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "add_bos_token": tokenizer.add_bos_token,
            }
            if chat_template:
                tok_cfg["chat_template"] = chat_template
            _write_json(tmp / "tokenizer_config.json", tok_cfg)

    return _write_atomically(folder, write)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_atomically(folder: Path, write: Callable[[Path], None]) -> Path:
    folder = Path(folder)
    if folder.exists():
        raise Conflict(f"{folder} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        for path in tmp.iterdir():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

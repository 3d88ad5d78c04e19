"""Hugging Face model folders: the one reader of a folder's files, configs, chat template and
weight files, and the facts chosen from them.

Only safetensors weights are accepted; pickle checkpoints (`.bin`, `.pt`, ...) are refused and
never opened. The weights are the shards `model.safetensors.index.json` names (plain file names
in the folder; they may be links, as in the registry's folders of blobs), else every
`*.safetensors`; each header is checked (`formats.safetensors`). JSON files are size-capped
before parsing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.errors import InvalidModelFile, ModelLoadError
from llmos.storage.formats.facts import (
    DEFAULT_CONTEXT_LENGTH,
    ModelFacts,
    positive_int_or,
    template_or_none,
)
from llmos.storage.formats.safetensors import SafetensorsHeader, read_header

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")
MAX_JSON_BYTES = 64 << 20
MAX_FILES = 1024
INDEX_FILE = "model.safetensors.index.json"
PICKLE_HINT = "llmos loads only safetensors and GGUF; convert the checkpoint to safetensors or GGUF"


@dataclass(slots=True)
class HfFolder:
    """A checked HF folder: what the registry stores and what the loader reads."""

    path: Path
    files: dict[str, str]  # file name -> role, every file a model keeps
    weight_files: list[Path]  # the safetensors to load, headers checked
    headers: list[SafetensorsHeader]  # one per weight file
    config: dict[str, Any]  # config.json
    tokenizer_config: dict[str, Any]  # tokenizer_config.json, {} if absent
    generation_config: dict[str, Any]  # generation_config.json, {} if absent
    facts: ModelFacts

    @property
    def parameters(self) -> int:
        return sum(h.parameters for h in self.headers)

    @property
    def quantization(self) -> str | None:
        qc = self.config.get("quantization_config")
        if isinstance(qc, dict) and isinstance(qc.get("quant_method"), str):
            return str(qc["quant_method"])[:64]
        by_dtype: dict[str, int] = {}
        for h in self.headers:
            for dtype, n in h.bytes_by_dtype().items():
                by_dtype[dtype] = by_dtype.get(dtype, 0) + n
        return max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else None

    @property
    def tokenizer(self) -> dict[str, Any]:
        """The manifest's tokenizer summary: its files and special tokens."""
        out: dict[str, Any] = {
            "files": sorted(n for n, r in self.files.items() if r == "tokenizer")
        }
        for key in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length"):
            value = self.tokenizer_config.get(key)
            if isinstance(value, str | int | float):
                out[key] = value
        return out


def refuse_pickle(path: Path) -> None:
    """Raise if `path` names a pickle checkpoint (without opening it)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InvalidModelFile(
            f"{path.name} is a pickle checkpoint, which can run code when loaded; refused",
            hint=PICKLE_HINT,
        )


def read_folder(folder: Path) -> HfFolder:
    """Inspect an HF model folder; InvalidModelFile if it cannot be used."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise ModelLoadError(f"cannot read {folder}: {e.strerror or e}") from e
    if len(entries) > MAX_FILES:
        raise InvalidModelFile(f"{folder} holds more than {MAX_FILES} files")
    weight_files = _weight_files(folder, entries)
    pickles = [p.name for p in entries if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        logger.warning("ignoring pickle files next to safetensors: %s", pickles)
    if not (folder / "config.json").is_file():
        raise InvalidModelFile(
            f"{folder} has no config.json", hint="an HF folder needs config.json"
        )
    config = _json_object(folder / "config.json")
    tokenizer_config = _optional_json_object(folder / "tokenizer_config.json")
    return HfFolder(
        path=folder,
        files={p.name: _role(p.name) for p in entries if p.suffix in ALLOWED_SUFFIXES},
        weight_files=weight_files,
        headers=[read_header(p) for p in weight_files],
        config=config,
        tokenizer_config=tokenizer_config,
        generation_config=_optional_json_object(folder / "generation_config.json"),
        facts=ModelFacts(
            architecture(config), context_length(config), chat_template(folder, tokenizer_config)
        ),
    )


def check_json_files(info: HfFolder) -> None:
    """Parse every JSON file of the folder, so a malformed one is refused now (at import)
    rather than when the model is loaded."""
    for name in info.files:
        if name.endswith(".json"):
            read_json(info.path / name)


def read_json(path: Path) -> Any:
    """A JSON file of at most MAX_JSON_BYTES; InvalidModelFile if it is larger or malformed."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidModelFile(f"{path.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelFile(f"{path.name} is not valid JSON: {e}") from None


def _json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path.name} is not a JSON object")
    return data


def _optional_json_object(path: Path) -> dict[str, Any]:
    return _json_object(path) if path.is_file() else {}


def _weight_files(folder: Path, entries: list[Path]) -> list[Path]:
    if (folder / INDEX_FILE).is_file():
        return _shards(folder)
    weights = [p for p in entries if p.suffix == ".safetensors"]
    if weights:
        return weights
    pickles = [p.name for p in entries if p.suffix.lower() in PICKLE_SUFFIXES]
    what = f"only pickle checkpoints ({', '.join(pickles[:3])})" if pickles else "no weights"
    raise InvalidModelFile(
        f"{folder} has {what}; refused: loading a pickle can run arbitrary code",
        hint=f"{PICKLE_HINT} (*.safetensors or *.gguf)",
    )


def _shards(folder: Path) -> list[Path]:
    """The files a sharded folder's index names: plain names of safetensors in the folder."""
    weight_map = _json_object(folder / INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelFile(f"{INDEX_FILE} in {folder} has no weight_map")
    shards = []
    for shard in sorted(set(map(str, weight_map.values()))):
        is_plain = shard == Path(shard).name and shard.endswith(".safetensors")
        if not is_plain or not (folder / shard).is_file():
            raise InvalidModelFile(
                f"{INDEX_FILE} in {folder} names a missing or outside shard {shard!r}",
                hint="every shard must be a *.safetensors file in the same folder",
            )
        shards.append(folder / shard)
    return shards


def _role(name: str) -> str:
    if name.endswith(".safetensors"):
        return "weights"
    if name in ("config.json", "generation_config.json", INDEX_FILE):
        return "config"
    if name.endswith(".jinja") or name == "chat_template.json":
        return "template"
    if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
        return "tokenizer"
    return "other"


# --- facts -----------------------------------------------------------------------------------


def architecture(config: dict[str, Any]) -> str:
    """The architecture a config.json declares: its `model_type` (the name transformers and
    llmos pick the model's code by), else its first `architectures` class, else "unknown"."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type[:128]
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str) and archs[0]:
        return archs[0][:128]
    return "unknown"


def context_length(config: dict[str, Any]) -> int:
    """`max_position_embeddings`, or that of the `text_config` of a multimodal config."""
    text = config.get("text_config")
    if "max_position_embeddings" not in config and isinstance(text, dict):
        config = text
    return positive_int_or(config.get("max_position_embeddings"), DEFAULT_CONTEXT_LENGTH)


def chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The first non-blank of: chat_template.jinja, chat_template.json's `chat_template`,
    tokenizer_config.json's `chat_template` (of a list of named templates, the one named
    "default", as transformers picks; none without it)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        if jinja.stat().st_size > MAX_JSON_BYTES:
            raise InvalidModelFile(f"{jinja.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
        found = template_or_none(jinja.read_bytes().decode("utf-8", errors="replace"))
        if found:
            return found
    if (folder / "chat_template.json").is_file():
        found = template_or_none(_json_object(folder / "chat_template.json").get("chat_template"))
        if found:
            return found
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use"}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template_or_none(template)


# generation_config.json key -> profile field (transformers' names for the sampling defaults).
_GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
    "stop_strings": "stop",
}


def sampling_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults generation_config.json sets, under the profile's field names."""
    out = {
        field: generation_config[key]
        for key, field in _GENERATION_KEYS.items()
        if generation_config.get(key) is not None
    }
    if isinstance(out.get("stop"), str):  # transformers takes one string or a list
        out["stop"] = [out["stop"]]
    return out


def generation_config_with(existing: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """`existing` generation_config.json with the profile's sampling defaults written over it
    (`do_sample` follows the temperature: 0 is greedy). A system prompt and a context length
    have no key there and are not written."""
    out = dict(existing)
    for key, field in _GENERATION_KEYS.items():
        if profile.get(field) is not None:
            out[key] = profile[field]
    if profile.get("temperature") is not None:
        out["do_sample"] = profile["temperature"] > 0
    return out

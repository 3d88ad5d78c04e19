"""Checkpoints: the whole training state in one folder, written atomically.

A checkpoint holds the trainable weights (all of them, or the adapter), AdamW's moments and step
counts, the training RNG, the data position (optimizer steps done; the plan is a pure function of
the data and config) and the config it belongs to. It is written into a temporary sibling,
fsynced, and renamed into place, so a folder under its final name is always complete; one
interrupted mid-write is a `.tmp-*` folder nothing reads. Tensors are safetensors, never pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.train.trainer import Trainer

STATE_FILE = "state.safetensors"
META_FILE = "trainer.json"
FORMAT = 1


def save_checkpoint(trainer: Trainer, folder: Path) -> Path:
    """Write `trainer`'s state to `folder` (which must not exist yet); returns `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise Conflict(f"checkpoint {folder} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        save_file(_tensors(trainer), str(tmp / STATE_FILE))
        meta = {
            "format": FORMAT,
            "step": trainer.step_idx,
            "num_steps": trainer.num_steps,
            "config": trainer.cfg.to_dict(),
            "data_digest": trainer.data_digest,
            "last_eval_loss": trainer.last_eval_loss,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name in (STATE_FILE, META_FILE):
            with (tmp / name).open("rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(trainer: Trainer, folder: Path) -> None:
    """Restore `trainer` (built with the same model, data and config) to `folder`'s state."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / STATE_FILE).is_file():
        raise NotFound(f"{folder} is not a training checkpoint")
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise InvalidRequest(f"{folder}: checkpoint format {meta.get('format')} is not {FORMAT}")
    if _jsonable(trainer.cfg.to_dict()) != meta["config"]:
        raise InvalidRequest(f"{folder} belongs to a different training config")
    if meta.get("data_digest") != trainer.data_digest or meta["num_steps"] != trainer.num_steps:
        raise InvalidRequest(f"{folder} belongs to a different dataset")
    tensors = load_file(str(folder / STATE_FILE))
    with torch.no_grad():
        for name, p in trainer.params.items():
            p.copy_(tensors[f"param.{name}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for idx, name in enumerate(_optimizer_order(trainer)):
        if f"exp_avg.{name}" in tensors:
            state[idx] = {
                "step": tensors[f"adam_step.{name}"],
                "exp_avg": tensors[f"exp_avg.{name}"],
                "exp_avg_sq": tensors[f"exp_avg_sq.{name}"],
            }
    optimizer_state = trainer.optimizer.state_dict()
    optimizer_state["state"] = state
    trainer.optimizer.load_state_dict(optimizer_state)
    trainer.rng_state = tensors["rng"].clone()
    trainer.step_idx = int(meta["step"])
    trainer.last_eval_loss = meta["last_eval_loss"]


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint folder under `root` with the most steps done, if any."""
    best: tuple[int, Path] | None = None
    for meta_path in Path(root).glob(f"*/{META_FILE}"):
        folder = meta_path.parent
        if folder.name.startswith(".tmp-") or not (folder / STATE_FILE).is_file():
            continue
        step = int(json.loads(meta_path.read_text())["step"])
        if best is None or step > best[0]:
            best = (step, folder)
    return None if best is None else best[1]


def _optimizer_order(trainer: Trainer) -> list[str]:
    """Parameter names in the optimizer's index order (its groups, in order)."""
    by_id = {id(p): n for n, p in trainer.params.items()}
    return [by_id[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]]


def _tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"param.{n}": p.detach().contiguous() for n, p in trainer.params.items()}
    opt_state = trainer.optimizer.state
    for name in _optimizer_order(trainer):
        s = opt_state.get(trainer.params[name])
        if s:
            out[f"adam_step.{name}"] = s["step"].reshape(())
            out[f"exp_avg.{name}"] = s["exp_avg"].contiguous()
            out[f"exp_avg_sq.{name}"] = s["exp_avg_sq"].contiguous()
    out["rng"] = trainer.rng_state.clone()
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

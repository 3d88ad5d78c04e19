"""LoRA (arXiv 2106.09685): W x + (alpha / r) B A dropout(x), with W frozen and only A, B trained.

Module and parameter names follow PEFT's (`q_proj.base_layer.weight`, `q_proj.lora_A.weight`,
`q_proj.lora_B.weight`), so an adapter saves as PEFT's `adapter_model.safetensors` by a prefix
and loads back from one. A is drawn as PEFT draws it (Kaiming-uniform, a = sqrt(5)) and B starts
at zero, so a fresh adapter leaves the model's output unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from llmos.errors import InvalidRequest

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(slots=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self) -> None:
        """InvalidRequest naming the bad field and what is allowed."""
        unknown = [m for m in self.target_modules if m not in TARGET_MODULES]
        if unknown:
            raise InvalidRequest(
                f"unknown LoRA target module {unknown[0]!r}",
                hint="valid target modules: " + ", ".join(TARGET_MODULES),
                param="target_modules",
            )
        if not self.target_modules:
            raise InvalidRequest("LoRA needs at least one target module", param="target_modules")
        if self.rank < 1:
            raise InvalidRequest(f"LoRA rank must be >= 1, got {self.rank}", param="rank")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Module):
    """A frozen `base_layer` plus a trainable low-rank update."""

    def __init__(self, base_layer: nn.Linear, cfg: LoraConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base_layer.in_features, cfg.rank, bias=False)
        self.lora_B = nn.Linear(cfg.rank, base_layer.out_features, bias=False)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
            self.lora_B.weight.zero_()
        self.scaling = cfg.scaling
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, [out, in] (detached)."""
        delta = self.lora_B.weight @ self.lora_A.weight
        return (self.base_layer.weight + delta * self.scaling).detach()


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int = 0) -> list[str]:
    """Freeze every parameter of `model` and wrap each `cfg.target_modules` linear in LoRA.

    Returns the wrapped modules' names. A is drawn from a generator seeded with `seed`, in module
    order, so the same seed gives the same adapter."""
    cfg.validate()
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in cfg.target_modules and isinstance(module, nn.Linear)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoraLinear(module, cfg, generator))
    return [name for name, _ in targets]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under their module names (`...q_proj.lora_A.weight`)."""
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if ".lora_A." in name or ".lora_B." in name
    }


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight under its checkpoint name, LoRA updates folded into their base weights."""
    lora_prefixes = {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if ".lora_A" in name or ".lora_B" in name:
            continue
        if module.endswith(".base_layer") and module[: -len(".base_layer")] in lora_prefixes:
            owner = module[: -len(".base_layer")]
            lora = model.get_submodule(owner)
            assert isinstance(lora, LoraLinear)
            out[f"{owner}.{leaf}"] = lora.merged_weight() if leaf == "weight" else tensor
        else:
            out[name] = tensor.detach()
    return out

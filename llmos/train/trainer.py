"""The training loop as bounded steps: one `step()` is one optimizer step (its micro-batches,
clipping, AdamW, schedule), so a job runner can interleave steps with inference ticks.

Invariants: the loss of a step is the mean over its target tokens across all its micro-batches
(gradient accumulation normalises by the step's total target tokens, not per micro-batch); the
training RNG (dropout) is the trainer's own, forked from the process's, so other work on the
thread neither moves it nor is moved by it; `state_dict()` holds everything the next step
depends on, so a restored trainer continues bit for bit (see `llmos.train.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from llmos.errors import InvalidRequest
from llmos.models.config import ModelConfig
from llmos.train.data import Example, StepPlan, collate, pack, plan_steps, split
from llmos.train.lora import LoraConfig, apply_lora, lora_state_dict, merged_state_dict
from llmos.train.model import TrainableLM
from llmos.train.schedule import SCHEDULES, Schedule, lr_factor

logger = logging.getLogger(__name__)

Method = Literal["lora", "full"]


@dataclass(slots=True)
class TrainConfig:
    method: Method = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    learning_rate: float = 2e-4
    weight_decay: float = 0.0  # applied to matrices only (not norms, biases)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    num_epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimizer steps
    seq_len: int = 512  # tokens per packed row
    rows_per_micro_batch: int = 1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0  # None: no clipping
    eval_fraction: float = 0.1  # held-out share of the examples
    seed: int = 0
    loss_chunk_tokens: int = 1024  # LM-head rows materialised at once in the loss

    def validate(self) -> None:
        if self.method not in ("lora", "full"):
            raise InvalidRequest(f"unknown training method {self.method!r}; use lora or full")
        if self.method == "lora":
            self.lora.validate()
        if self.schedule not in SCHEDULES:
            raise InvalidRequest(
                f"unknown schedule {self.schedule!r}", hint="one of " + ", ".join(SCHEDULES)
            )
        for name in ("num_epochs", "seq_len", "rows_per_micro_batch", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InvalidRequest(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.learning_rate <= 0:
            raise InvalidRequest(f"learning_rate must be > 0, got {self.learning_rate}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    num_steps: int
    loss: float  # mean cross entropy over the step's target tokens
    lr: float  # the learning rate this step used
    grad_norm: float  # before clipping
    num_tokens: int  # tokens run (packed, excluding padding)
    num_target_tokens: int
    tokens_per_s: float
    eval_loss: float | None = None  # set on steps that ran an evaluation


ProgressFn = Callable[[StepMetrics], None]


def data_digest(train: list[Example], held_out: list[Example]) -> str:
    """sha256 over the tokens and loss masks of the split, in order (lineage and resume check)."""
    h = hashlib.sha256()
    for part in (train, held_out):
        h.update(b"|split|")
        for ex in part:
            h.update(json.dumps([ex.token_ids, ex.is_target]).encode())
    return h.hexdigest()


class Trainer:
    """LoRA or full fine-tuning of one model on tokenized examples."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        examples: list[Example],
        cfg: TrainConfig,
        *,
        eval_examples: list[Example] | None = None,
        on_step: ProgressFn | None = None,
    ) -> None:
        """`weights`: float HF-named tensors (a quantized model is dequantized to float32 by
        the loader first). `eval_examples` defaults to a seeded `eval_fraction` split."""
        cfg.validate()
        self.cfg, self.on_step = cfg, on_step
        if eval_examples is None:
            examples, eval_examples = split(examples, cfg.eval_fraction, cfg.seed)
        self.eval_examples = eval_examples
        self.data_digest = data_digest(examples, eval_examples)
        self.model = TrainableLM.from_weights(config, weights, copy=cfg.method == "full")
        if cfg.method == "lora":
            apply_lora(self.model, cfg.lora, seed=cfg.seed)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.plan: StepPlan = plan_steps(
            examples,
            seq_len=cfg.seq_len,
            rows_per_micro_batch=cfg.rows_per_micro_batch,
            grad_accum_steps=cfg.grad_accum_steps,
            num_epochs=cfg.num_epochs,
            seed=cfg.seed,
            max_steps=cfg.max_steps,
        )
        decay = [p for p in self.params.values() if p.ndim >= 2]
        no_decay = [p for p in self.params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.learning_rate,
            betas=cfg.betas,
            eps=cfg.adam_eps,
            foreach=False,
        )
        self.step_idx = 0
        self.rng_state = torch.Generator().manual_seed(cfg.seed).get_state()
        self.last_eval_loss: float | None = None

    @property
    def num_steps(self) -> int:
        return len(self.plan.steps)

    @property
    def is_done(self) -> bool:
        return self.step_idx >= self.num_steps

    @property
    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        factor = lr_factor(
            step,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.num_steps,
            schedule=cfg.schedule,
        )
        return cfg.learning_rate * factor

    def step(self, *, evaluate: bool = False) -> StepMetrics:
        """Run the next optimizer step (and an evaluation after it when `evaluate`)."""
        if self.is_done:
            raise InvalidRequest(f"training is done ({self.num_steps} steps)")
        start = time.perf_counter()
        batches = [collate(rows) for rows in self.plan.steps[self.step_idx]]
        num_targets = sum(b.num_loss_tokens for b in batches)
        self.model.train()
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            for batch in batches:
                loss = self.model.loss_sum(batch, self.cfg.loss_chunk_tokens) / max(1, num_targets)
                loss.backward()
                total += float(loss.detach())
            self.rng_state = torch.get_rng_state()
        params = list(self.params.values())
        max_norm = self.cfg.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, max_norm if max_norm is not None else float("inf"), foreach=False
        )
        lr = self.lr_at(self.step_idx)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_idx += 1
        elapsed = time.perf_counter() - start
        num_tokens = sum(b.num_tokens for b in batches)
        metrics = StepMetrics(
            self.step_idx,
            self.num_steps,
            total,
            lr,
            float(grad_norm),
            num_tokens,
            num_targets,
            num_tokens / elapsed if elapsed > 0 else 0.0,
        )
        if evaluate:
            metrics.eval_loss = self.evaluate()
        if self.on_step is not None:
            self.on_step(metrics)
        logger.debug("train step %d/%d loss %.4f", metrics.step, metrics.num_steps, total)
        return metrics

    def run(self, *, eval_every: int | None = None) -> list[StepMetrics]:
        """Every remaining step; evaluates every `eval_every` steps and after the last."""
        out = []
        while not self.is_done:
            n = self.step_idx + 1
            due = n == self.num_steps or bool(eval_every and n % eval_every == 0)
            out.append(self.step(evaluate=due and bool(self.eval_examples)))
        return out

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean cross entropy over the held-out examples' target tokens (None without any)."""
        if not self.eval_examples:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for row in pack(self.eval_examples, self.cfg.seq_len):
            batch = collate([row])
            total += float(self.model.loss_sum(batch, self.cfg.loss_chunk_tokens))
            count += batch.num_loss_tokens
        self.last_eval_loss = total / max(1, count)
        return self.last_eval_loss

    # --- results -------------------------------------------------------------------------

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """All weights under their HF names, a LoRA update folded in."""
        return merged_state_dict(self.model)

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """The LoRA A and B matrices under their module names (LoRA runs only)."""
        if self.cfg.method != "lora":
            raise InvalidRequest("a full fine-tune has no adapter; save merged weights")
        return lora_state_dict(self.model)

"""The memory estimate counts exactly the parameters the training model and LoRA create."""

from __future__ import annotations

import pytest

from llmos.train.footprint import estimate, projection_shapes
from llmos.train.lora import TARGET_MODULES, LoraConfig
from llmos.train.model import TrainableLM
from llmos.train.trainer import TrainConfig, Trainer
from tests.train.oracle import random_examples
from tests.train.test_model import CONFIGS
from tests.train.tiny import tiny_weights


def test_projection_table_covers_every_target_module():
    assert set(projection_shapes(CONFIGS["llama"]())) == set(TARGET_MODULES)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_counts_are_exact(name):
    cfg = CONFIGS[name]()
    weights = tiny_weights(cfg)
    model = TrainableLM.from_weights(cfg, weights)
    lora = LoraConfig(rank=3, target_modules=["k_proj", "o_proj", "up_proj"])
    train_cfg = TrainConfig(method="lora", lora=lora, eval_fraction=0.0, seq_len=32)
    trainer = Trainer(cfg, weights, random_examples(2, cfg.vocab_size, 0), train_cfg)
    got = estimate(cfg, train_cfg)
    assert got.num_params == sum(p.numel() for p in model.parameters())
    assert got.num_trainable == trainer.num_trainable_params
    assert got.optimizer_bytes == 8 * trainer.num_trainable_params
    full = estimate(cfg, TrainConfig(method="full", seq_len=32))
    assert full.grad_bytes == 4 * got.num_params and full.total_bytes > got.total_bytes


def test_smollm2_estimate(smollm2_files):
    full = estimate(smollm2_files.config, TrainConfig(method="full", seq_len=512))
    assert full.num_params == sum(
        t.numel() for k, t in smollm2_files.weights.items() if k != "lm_head.weight"
    )
    assert 2e9 < full.total_bytes < 4e9  # ~16 B per parameter of 135M, plus activations

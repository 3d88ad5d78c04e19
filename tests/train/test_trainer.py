"""The training loop: checkpoints resume bit for bit, held-out loss, errors, full fine-tuning."""

from __future__ import annotations

import os

import pytest
import torch

from llmos.errors import InvalidRequest
from llmos.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llmos.train.lora import LoraConfig
from llmos.train.trainer import TrainConfig, Trainer
from tests.train.oracle import random_examples
from tests.train.tiny import tiny_gemma3_config, tiny_llama_config, tiny_weights


def _cfg(method: str, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        method=method,  # type: ignore[arg-type]
        lora=LoraConfig(rank=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "down_proj"]),
        learning_rate=5e-3,
        weight_decay=0.01,
        warmup_steps=2,
        num_epochs=3,
        seq_len=48,
        rows_per_micro_batch=2,
        grad_accum_steps=2,
        eval_fraction=0.2,
        seed=3,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _make(model_cfg, method: str, **overrides) -> Trainer:
    examples = random_examples(30, model_cfg.vocab_size, seed=2)
    return Trainer(model_cfg, tiny_weights(model_cfg), examples, _cfg(method, **overrides))


@pytest.mark.parametrize(
    ("family", "method"),
    [("llama", "lora"), ("llama", "full"), ("gemma3", "lora")],
)
def test_resume_from_checkpoint_gives_identical_weights(tmp_path, family, method):
    model_cfg = tiny_llama_config() if family == "llama" else tiny_gemma3_config()
    straight = _make(model_cfg, method)
    straight.run(eval_every=2)
    assert straight.num_steps >= 6

    interrupted = _make(model_cfg, method)
    for _ in range(3):
        interrupted.step()
    save_checkpoint(interrupted, tmp_path / "ckpt-3")
    torch.rand(5)  # the process RNG moving elsewhere must not matter
    resumed = _make(model_cfg, method)
    load_checkpoint(resumed, latest_checkpoint(tmp_path))
    assert resumed.step_idx == 3
    resumed.run()
    a, b = straight.merged_weights(), resumed.merged_weights()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_lowers_train_and_eval_loss_and_reports_progress():
    seen = []
    trainer = Trainer(
        tiny_llama_config(),
        tiny_weights(tiny_llama_config()),
        # the same few sequences over and over: held-out copies get easier too
        random_examples(6, 97, seed=5) * 5,
        _cfg("full", num_epochs=4, learning_rate=1e-2, eval_fraction=0.2),
        on_step=seen.append,
    )
    before = trainer.evaluate()
    metrics = trainer.run(eval_every=5)
    assert seen == metrics and [m.step for m in metrics] == list(range(1, trainer.num_steps + 1))
    assert metrics[-1].eval_loss is not None and metrics[-1].eval_loss < before - 0.5
    assert metrics[-1].loss < metrics[0].loss - 0.5
    assert all(m.tokens_per_s > 0 and m.num_target_tokens > 0 for m in metrics)
    # warmup over 2 steps to the peak, then cosine down
    assert [m.lr for m in metrics[:3]] == pytest.approx([0.0, 5e-3, 1e-2])
    assert 0 < metrics[-1].lr < metrics[-2].lr < 1e-2


def test_grad_accumulation_equals_one_big_batch():
    model_cfg = tiny_llama_config()
    accum = _make(model_cfg, "full", rows_per_micro_batch=1, grad_accum_steps=4)
    whole = _make(model_cfg, "full", rows_per_micro_batch=4, grad_accum_steps=1)
    for _ in range(3):
        a, w = accum.step(), whole.step()
        assert a.loss == pytest.approx(w.loss, abs=1e-5)
        assert a.num_target_tokens == w.num_target_tokens


def test_unknown_target_module_names_the_valid_ones():
    model_cfg = tiny_llama_config()
    with pytest.raises(InvalidRequest, match="unknown LoRA target module 'qkv'") as info:
        _make(model_cfg, "lora", lora=LoraConfig(target_modules=["q_proj", "qkv"]))
    assert "gate_proj" in str(info.value) and "o_proj" in str(info.value)


def test_lora_trains_only_the_adapter():
    trainer = _make(tiny_llama_config(), "lora")
    assert set(trainer.params) == {n for n in trainer.params if ".lora_" in n}
    assert len(trainer.params) == 2 * 2 * 2  # A and B, two targets, two layers
    base = tiny_weights(tiny_llama_config())
    trainer.run()
    merged = trainer.merged_weights()
    assert torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"]
    )
    assert not torch.equal(
        merged["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"]
    )


def test_interrupted_checkpoint_is_never_used(tmp_path):
    trainer = _make(tiny_llama_config(), "lora")
    trainer.step()
    save_checkpoint(trainer, tmp_path / "ckpt-1")
    trainer.step()
    # a write cut short leaves only a temporary sibling
    partial = tmp_path / ".tmp-ckpt-2-x"
    partial.mkdir()
    (partial / "trainer.json").write_text('{"step": 2}')
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-1"
    with pytest.raises(Exception, match="already exists"):
        save_checkpoint(trainer, tmp_path / "ckpt-1")
    assert sorted(os.listdir(tmp_path)) == [".tmp-ckpt-2-x", "ckpt-1"]


def test_a_checkpoint_of_other_data_or_config_is_refused(tmp_path):
    model_cfg = tiny_llama_config()
    trainer = _make(model_cfg, "lora")
    trainer.step()
    save_checkpoint(trainer, tmp_path / "ckpt")
    other_data = Trainer(
        model_cfg, tiny_weights(model_cfg), random_examples(30, 97, seed=9), _cfg("lora")
    )
    with pytest.raises(InvalidRequest, match="different dataset"):
        load_checkpoint(other_data, tmp_path / "ckpt")
    with pytest.raises(InvalidRequest, match="different training config"):
        load_checkpoint(_make(model_cfg, "lora", seed=4), tmp_path / "ckpt")
    assert other_data.step_idx == 0

"""Saved results: a merged full fine-tune imports into the registry as a derived model."""

from __future__ import annotations

import pytest

from llmos.config import StorageConfig
from llmos.errors import Conflict, InvalidRequest
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from llmos.train.export import save_adapter, save_merged
from llmos.train.trainer import TrainConfig, Trainer
from tests.train.oracle import random_examples
from tests.train.tiny import tiny_gemma3_config, tiny_tokenizer, tiny_weights


def test_merged_full_fine_tune_imports_into_the_registry(tmp_path):
    cfg = tiny_gemma3_config()
    trainer = Trainer(
        cfg,
        tiny_weights(cfg),
        random_examples(8, cfg.vocab_size, seed=0),
        TrainConfig(method="full", max_steps=2, seq_len=64, eval_fraction=0.0),
    )
    trainer.run()
    template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    folder = save_merged(
        trainer.merged_weights(),
        cfg,
        tmp_path / "tuned",
        tokenizer=tiny_tokenizer(cfg.vocab_size),
        chat_template=template,
    )
    storage = Storage(StorageConfig(data_dir=tmp_path / "home"))
    try:
        manifest = Registry(storage).import_model(folder, "tuned:v1")
    finally:
        storage.close()
    assert manifest.ref == "tuned:v1" and manifest.architecture in ("gemma3", "gemma3_text")
    assert manifest.chat_template == template
    assert manifest.parameters == sum(t.numel() for t in trainer.merged_weights().values())
    with pytest.raises(Conflict):
        save_merged(trainer.merged_weights(), cfg, folder)
    with pytest.raises(InvalidRequest, match="no LoRA adapter"):
        save_adapter(trainer.model, trainer.cfg.lora, tmp_path / "adapter")

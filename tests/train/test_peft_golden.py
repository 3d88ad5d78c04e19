"""Golden: LoRA training equals peft + transformers step for step; adapters load in peft."""

from __future__ import annotations

import torch

from llmos.models.loader import load_model_files
from llmos.models.registry import build_model
from llmos.train.export import load_adapter, save_adapter, save_merged
from llmos.train.lora import TARGET_MODULES, LoraConfig
from llmos.train.model import TrainableLM, single_row
from llmos.train.trainer import TrainConfig, Trainer
from tests.golden.tiny import llmos_logprobs
from tests.required import require_module
from tests.train.oracle import example_loss_sum, hf_model, random_examples
from tests.train.tiny import tiny_llama_config, tiny_tokenizer, tiny_weights

peft = require_module("peft", "pip install peft (a dev extra)")
transformers = require_module("transformers", "pip install transformers (a dev extra)")

NUM_STEPS = 20


def _trainer(cfg, weights, **overrides) -> Trainer:
    train_cfg = TrainConfig(
        method="lora",
        lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=list(TARGET_MODULES)),
        learning_rate=1e-2,
        weight_decay=0.01,
        schedule="cosine",
        warmup_steps=3,
        num_epochs=10,
        max_steps=NUM_STEPS,
        seq_len=64,
        rows_per_micro_batch=2,
        grad_accum_steps=2,
        max_grad_norm=1.0,
        eval_fraction=0.0,
        seed=7,
    )
    for k, v in overrides.items():
        setattr(train_cfg, k, v)
    examples = random_examples(24, cfg.vocab_size, seed=1)
    return Trainer(cfg, weights, examples, train_cfg)


def _peft_model(cfg, weights, trainer: Trainer):
    hf = hf_model(cfg, weights)
    lora = trainer.cfg.lora
    peft_cfg = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    model = peft.get_peft_model(hf, peft_cfg)
    ours = trainer.adapter_weights()
    with torch.no_grad():  # start from llmos's initial adapter (B is zero in both)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(ours[name.removeprefix("base_model.model.").replace(".default", "")])
    return model


def test_first_20_lora_steps_match_peft():
    cfg = tiny_llama_config()
    weights = tiny_weights(cfg)
    trainer = _trainer(cfg, weights)
    model = _peft_model(cfg, weights, trainer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, 3, trainer.num_steps)
    model.train()
    theirs = []
    for step in trainer.plan.steps[:NUM_STEPS]:
        examples = [ex for micro in step for row in micro for ex in row]
        n = sum(ex.num_target_tokens for ex in examples)
        total = 0.0
        for ex in examples:
            loss = example_loss_sum(model, ex) / n
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        theirs.append(total)
    ours = [trainer.step().loss for _ in range(NUM_STEPS)]
    assert ours[-1] < ours[0] - 0.1  # it learns, so matching is not matching a flat line
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), atol=1e-4, rtol=0)


def test_saved_adapter_loads_in_peft_and_merges(tmp_path):
    cfg = tiny_llama_config()
    weights = tiny_weights(cfg)
    trainer = _trainer(cfg, weights, max_steps=5)
    trainer.run()
    folder = save_adapter(trainer.model, trainer.cfg.lora, tmp_path / "adapter")
    ids = list(range(3, 40))
    with torch.no_grad():
        ours = trainer.model.logits(trainer.model(single_row(ids))[0])
        peft_model = peft.PeftModel.from_pretrained(hf_model(cfg, weights), str(folder)).eval()
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    reloaded = TrainableLM.from_weights(cfg, weights)
    load_adapter(reloaded, folder)
    with torch.no_grad():
        again = reloaded.logits(reloaded(single_row(ids))[0])
    torch.testing.assert_close(again, ours, atol=0, rtol=0)
    # merged: an HF folder the loader reads; its paged forward equals the adapted model
    merged = save_merged(
        trainer.merged_weights(), cfg, tmp_path / "merged", tokenizer=tiny_tokenizer()
    )
    files = load_model_files(merged)
    paged = llmos_logprobs(build_model(files.config, files.weights), ids)
    torch.testing.assert_close(paged, torch.log_softmax(ours, -1), atol=1e-4, rtol=0)

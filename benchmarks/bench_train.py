"""Training throughput and memory: llmos's trainer against transformers (+ peft) on SmolLM2.

One invocation runs each side in its own child process (so peak RSS is its own): the same
examples (random token sequences of 64-256 tokens, loss on the second half), the same AdamW
settings and number of optimizer steps. llmos packs examples into rows of --seq-len tokens; the
transformers side runs the usual padded batches of --batch examples. It prints target tokens/s
and peak RSS growth for each, and the llmos/HF ratios.

    python benchmarks/bench_train.py [--method lora|full] [--steps 4] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _examples(vocab: int, n: int, seed: int) -> list[tuple[list[int], int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(64, 257, (1,), generator=g))
        out.append((torch.randint(10, vocab, (length,), generator=g).tolist(), length // 2))
    return out


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples RSS every 10 ms from start(); `growth_mib` is the peak above the starting RSS
    (ru_maxrss would include the model load's own peak)."""

    def __init__(self) -> None:
        self.base = _rss_mib()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mib())

    def growth_mib(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mib()) - self.base


def run_llmos(args: argparse.Namespace, queue: mp.Queue) -> None:
    from llmos.models.loader import load_model_files
    from llmos.train.data import Example
    from llmos.train.lora import LoraConfig
    from llmos.train.trainer import TrainConfig, Trainer

    files = load_model_files("smollm2")
    rss = PeakRss()
    raw = _examples(files.config.vocab_size, args.examples, 0)
    examples = [Example(ids, [i >= p for i in range(len(ids))]) for ids, p in raw]
    cfg = TrainConfig(
        method=args.method,
        lora=LoraConfig(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]),
        learning_rate=1e-4,
        seq_len=args.seq_len,
        max_steps=args.steps,
        eval_fraction=0.0,
    )
    trainer = Trainer(files.config, files.weights, examples, cfg)
    trainer.step()  # warm-up step, not timed
    start, targets = time.perf_counter(), 0
    while not trainer.is_done:
        targets += trainer.step().num_target_tokens
    queue.put(("llmos", targets / (time.perf_counter() - start), rss.growth_mib()))


def run_hf(args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch
    import transformers

    from llmos.models.loader import load_model_files
    from llmos.train.export import hf_config

    files = load_model_files("smollm2")
    raw_cfg = {k: v for k, v in hf_config(files.config).items() if k != "architectures"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**raw_cfg)).float()
    state = dict(files.weights)
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=False)
    del files, state
    rss = PeakRss()
    if args.method == "lora":
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    raw = _examples(model.config.vocab_size, args.examples, 0)
    # as many examples per step as llmos packs into one row, on average
    per_step = max(1, args.seq_len // 160)
    batches = [raw[i : i + per_step] for i in range(0, len(raw), per_step)][: args.steps]
    start, targets = None, 0
    for idx, batch in enumerate(batches):
        if idx == 1:
            start, targets = time.perf_counter(), 0
        T = max(len(ids) for ids, _ in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        labels = torch.full((len(batch), T), -100)
        for b, (seq, prompt) in enumerate(batch):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            labels[b, prompt : len(seq)] = torch.tensor(seq[prompt:])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        targets += int((labels[:, 1:] != -100).sum())
    assert start is not None
    queue.put(("hf", targets / (time.perf_counter() - start), rss.growth_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for fn in (run_llmos, run_hf):
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=fn, args=(args, queue))
        proc.start()
        name, tok_s, rss = queue.get()
        proc.join()
        results[name] = (tok_s, rss)
        print(f"{name:6s} {args.method}: {tok_s:8.1f} target tokens/s, peak RSS +{rss:7.0f} MiB")
    (a, ra), (b, rb) = results["llmos"], results["hf"]
    print(f"llmos/hf: tokens/s x{a / b:.2f}, peak RSS x{ra / max(rb, 1):.2f}")


if __name__ == "__main__":
    main()

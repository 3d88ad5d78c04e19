"""Where a tick's time goes: GEMMs + row-wise ops, attention, sampling, Python bookkeeping.

Runs a decode-heavy workload (N processes, prompts of P tokens, T output tokens each) and splits
wall time per tick into: batch preparation (Python -> tensors), attention (the paged kernel,
including the K/V write), the rest of the model forward (GEMMs, norms, RoPE, MLP), sampling, and
the engine's own bookkeeping (scheduling, detokenization, stop checks). The scheduler's own share
of tick time is measured inside the kernel (`schedule_s / tick_s`) for `--policy` (default llmos,
which also predicts each process's length at submission: that cost is printed too).

    python benchmarks/profile_tick.py [--model smollm2] [--batch 64] [--prompt 200] [--out 64]
                                      [--policy llmos]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see llmos/__init__.py)

from llmos.config import KernelConfig, Settings  # noqa: E402
from llmos.kernel.params import SamplingParams  # noqa: E402
from llmos.llm import LLM  # noqa: E402
from llmos.system import load_engine  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--out", type=int, default=64)
    ap.add_argument("--policy", default="llmos", choices=("fcfs", "priority", "fair", "llmos"))
    args = ap.parse_args()

    engine = load_engine(args.model, Settings(kernel=KernelConfig(policy=args.policy)))
    llm = LLM(engine=engine)
    rng = random.Random(0)
    vocab = engine.model.config.vocab_size
    prompts = [[rng.randrange(100, vocab) for _ in range(args.prompt)] for _ in range(args.batch)]
    params = SamplingParams(max_tokens=args.out, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    if args.policy == "llmos":  # a fitted length model, so submission pays for a prediction
        from llmos.kernel.predict import HistoryRecord

        for i in range(8):
            rec = _record(engine, prompts[i % len(prompts)], 4 + 40 * (i % 2))
            engine.predictor.record(rec)
        engine.predictor.fit_now()
        assert isinstance(rec, HistoryRecord) and engine.predictor.model is not None
    engine.submit = timed("submit (features + prediction)", engine.submit)  # type: ignore[method-assign]

    import llmos.models.gemma3 as gemma3_mod
    import llmos.models.llama as llama_mod

    for mod in (llama_mod, gemma3_mod):
        mod.paged_attention = timed("attention", mod.paged_attention)  # type: ignore[attr-defined]
    runner = engine.runner
    runner._prepare = timed("prepare", runner._prepare)  # type: ignore[method-assign]
    engine.model.forward = timed("forward", engine.model.forward)  # type: ignore[method-assign]
    engine.model.compute_logits = timed("lm_head", engine.model.compute_logits)  # type: ignore[method-assign]
    engine.sampler.sample = timed("sample", engine.sampler.sample)  # type: ignore[method-assign]
    before = engine.stats()
    ticks0 = before.num_ticks
    engine.pool.reset_prefix_cache()
    t = time.perf_counter()
    llm.generate(prompts, params)
    total = time.perf_counter() - t
    ticks = engine.stats().num_ticks - ticks0

    gemm = TIMES["forward"] - TIMES["attention"]
    rows = [
        ("model forward: GEMMs, norms, RoPE, MLP", gemm),
        ("attention (paged kernel + K/V write)", TIMES["attention"]),
        ("LM head", TIMES["lm_head"]),
        ("sampling", TIMES["sample"]),
        ("batch preparation", TIMES["prepare"]),
    ]
    accounted = sum(v for _, v in rows)
    rows.append(("engine bookkeeping (schedule, detokenize, stops)", total - accounted))
    out_tokens = args.batch * args.out
    print(
        f"{args.batch} processes x ({args.prompt} prompt + {args.out} output tokens), "
        f"{ticks} ticks, {total:.1f} s, {out_tokens / total:.1f} output tok/s"
    )
    for name, v in rows:
        print(f"  {name:50} {v:7.2f} s {v / total:6.1%}  {v / ticks * 1e3:7.1f} ms/tick")
    after = engine.stats()
    sched_s = after.schedule_s - before.schedule_s
    tick_s = after.tick_s - before.tick_s
    print(
        f"  scheduler, policy {args.policy} (inside the tick) {sched_s:11.3f} s "
        f"{sched_s / tick_s:6.2%} of tick time  {sched_s / ticks * 1e3:7.2f} ms/tick"
    )
    sub = TIMES["submit (features + prediction)"]
    print(
        f"  submit: features + prediction (caller's thread) {sub:8.3f} s "
        f"{sub / args.batch * 1e3:7.2f} ms/process"
    )


def _record(engine: Any, prompt: list[int], num_output: int) -> Any:
    from llmos.kernel.predict import HistoryRecord, features_of

    params = SamplingParams(max_tokens=64)
    f = features_of(
        prompt, params, tokenizer=engine.tokenizer, max_tokens=64, model="m", owner="local"
    )
    return HistoryRecord(f, num_output, "stop")


if __name__ == "__main__":
    main()

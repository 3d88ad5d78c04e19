"""Where a tick's time goes: GEMMs + row-wise ops, attention, sampling, Python bookkeeping.

Runs a decode-heavy workload (N processes, prompts of P tokens, T output tokens each) and splits
wall time per tick into: batch preparation (Python -> tensors), attention (the paged kernel,
including the K/V write), the rest of the model forward (GEMMs, norms, RoPE, MLP), sampling, and
the engine's own bookkeeping (scheduling, detokenization, stop checks).

    python benchmarks/profile_tick.py [--model smollm2] [--batch 64] [--prompt 200] [--out 64]
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
    args = ap.parse_args()

    engine = load_engine(args.model)
    llm = LLM(engine=engine)
    rng = random.Random(0)
    vocab = engine.model.config.vocab_size
    prompts = [[rng.randrange(100, vocab) for _ in range(args.prompt)] for _ in range(args.batch)]
    params = SamplingParams(max_tokens=args.out, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up

    import llmos.models.gemma3 as gemma3_mod
    import llmos.models.llama as llama_mod

    for mod in (llama_mod, gemma3_mod):
        mod.paged_attention = timed("attention", mod.paged_attention)  # type: ignore[attr-defined]
    runner = engine.runner
    runner._prepare = timed("prepare", runner._prepare)  # type: ignore[method-assign]
    engine.model.forward = timed("forward", engine.model.forward)  # type: ignore[method-assign]
    engine.model.compute_logits = timed("lm_head", engine.model.compute_logits)  # type: ignore[method-assign]
    engine.sampler.sample = timed("sample", engine.sampler.sample)  # type: ignore[method-assign]
    ticks0 = engine.stats().num_ticks
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


if __name__ == "__main__":
    main()

"""Reservations on a real engine (SmolLM2): a flood by A uses the whole pool while B is idle, and
B's first token arrives within one tick plus the prefill of B's own prompt when B holds 25 %.

One invocation, one engine, the tick driven here (no server, so no HTTP noise):
  1. B's prompt alone on the idle engine: its prefill time (time to first token), median of 3;
  2. A floods (N streams, long outputs) with B reserving 25 % of the pool and 1 slot: the peak
     share of the pool A's processes hold while B is idle, and the median tick under the flood;
     then B submits and we time its first token (and count ticks);
  3. the same flood without the reservation, for comparison (B's TTFT, capped).
It prints B's TTFT against one flood tick + B's prefill alone, and A's pool use while B idles.

    flock /tmp/llmos-heavy.lock python benchmarks/bench_reserve.py [--streams 24] [--pool-blocks 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see llmos/__init__.py)

from llmos.config import Settings  # noqa: E402
from llmos.kernel.engine import Engine  # noqa: E402
from llmos.kernel.params import SamplingParams  # noqa: E402
from llmos.kernel.reservation import Reservation  # noqa: E402
from llmos.models.loader import load_model_files  # noqa: E402
from llmos.models.registry import build_model  # noqa: E402
from llmos.ops.cpu import KVCache  # noqa: E402

A_PROMPT = "Write a long story about a lighthouse keeper and the sea, chapter by chapter. "
B_PROMPT = (
    "You are a careful assistant. Summarise in one sentence why the sky looks blue in the "
    "daytime and red at sunset, mentioning Rayleigh scattering and the path of light. "
)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def drain(engine: Engine) -> None:
    for p in engine.processes():
        engine.kill(p.pid)
    while engine.has_work():
        engine.step()


def time_to_first_token(engine: Engine, ids: list[int], max_ticks: int) -> tuple[float, int]:
    """Submit B's prompt, tick until its first token: (seconds, ticks); inf if not in time."""
    t0 = time.perf_counter()
    pid = engine.submit(ids, greedy(1), owner="b")
    for tick in range(1, max_ticks + 1):
        if any(o.pid == pid and o.new_token_ids for o in engine.step()):
            return time.perf_counter() - t0, tick
    return float("inf"), max_ticks


def a_blocks(engine: Engine) -> int:
    return sum(len(p.block_table) for p in engine.scheduler.running if p.owner == "a")


def flood(engine: Engine, a_ids: list[int], streams: int, warm_ticks: int) -> tuple[float, float]:
    """A keeps `streams` long processes live; returns (peak share of the pool A holds, median
    tick seconds over the last ticks)."""
    for _ in range(streams):
        engine.submit(a_ids, greedy(480), owner="a")
    peak, ticks = 0.0, [0.0]
    for _ in range(warm_ticks):
        t = time.perf_counter()
        for out in engine.step():
            if out.finished:  # keep the flood going
                engine.submit(a_ids, greedy(480), owner="a")
        ticks.append(time.perf_counter() - t)
        peak = max(peak, a_blocks(engine) / engine.pool.num_blocks)
    return peak, statistics.median(ticks[-10:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=24, help="A's concurrent streams")
    ap.add_argument("--pool-blocks", type=int, default=96, help="KV pool size in blocks")
    ap.add_argument("--warm-ticks", type=int, default=60, help="flood ticks before B arrives")
    args = ap.parse_args()

    files = load_model_files("smollm2")
    c = files.config
    block_bytes = KVCache.bytes_per_block(c.num_layers, 16, c.num_kv_heads, c.head_dim)
    settings = Settings(
        kernel={"policy": "fair", "max_num_seqs": args.streams + 2},
        memory={
            "block_size": 16,
            "kv_cache_bytes": block_bytes * args.pool_blocks,
            "swap_bytes": block_bytes * args.pool_blocks * 2,
            "enable_prefix_caching": False,  # B's prompt is computed every time
        },
    )
    model = build_model(c, files.weights, quantized=files.quantized)
    engine = Engine(
        model, files.tokenizer, model_name="smollm2", kernel=settings.kernel, memory=settings.memory
    )
    tok = engine.tokenizer
    a_ids, b_ids = tok.encode(A_PROMPT * 2), tok.encode(B_PROMPT)
    n = engine.pool.num_blocks
    print(f"SmolLM2, pool {n} blocks of {engine.pool.block_size} tokens, A {args.streams} streams,"
          f" B prompt {len(b_ids)} tokens")  # fmt: skip

    time_to_first_token(engine, b_ids, 10)  # warm-up
    alone = statistics.median(time_to_first_token(engine, b_ids, 10)[0] for _ in range(3))
    print(f"B's prefill alone (TTFT on the idle engine): {alone * 1000:.0f} ms")

    results = {}
    for reserved in (True, False):
        drain(engine)
        reservations = {"b": Reservation(fraction=0.25, slots=1)} if reserved else {}
        engine.set_allotments({}, reservations)
        peak, tick_s = flood(engine, a_ids, args.streams, args.warm_ticks)
        arrivals = []  # B arrives 3 times, idle (its 1-token process done) in between
        for _ in range(3):
            ttft, ticks = time_to_first_token(engine, b_ids, 400)
            _, recent_tick_s = flood(engine, a_ids, 0, 10)
            arrivals.append((ttft, ticks, recent_tick_s))
        ttft = statistics.median(t for t, _, _ in arrivals)
        ticks = max(n for _, n, _ in arrivals)
        tick_s = statistics.median([tick_s] + [r for _, _, r in arrivals])
        results[reserved] = (peak, tick_s, ttft, ticks)
        name = "B reserves 25%" if reserved else "no reservation"
        print(f"{name:>15}: A held up to {peak:.0%} of the pool while B was idle; flood tick "
              f"{tick_s * 1000:.0f} ms; B's TTFT median of 3 {ttft * 1000:.0f} ms "
              f"(at most {ticks} tick(s))")  # fmt: skip
    drain(engine)

    peak, tick_s, ttft, ticks = results[True]
    bound = tick_s + alone
    print(f"\nwith the reservation: B's TTFT / (one flood tick + B's prefill alone) = "
          f"{ttft * 1000:.0f} / {bound * 1000:.0f} ms = {ttft / bound:.2f} "
          f"({'within' if ttft <= bound else 'ABOVE'} the bound), admitted in {ticks} tick(s)")  # fmt: skip
    print(f"A's pool use while B idle: {peak:.0%} (without reservations: {results[False][0]:.0%})")
    other = results[False][2]
    print(f"B's TTFT without the reservation: {other * 1000:.0f} ms = {other / ttft:.1f}x")


if __name__ == "__main__":
    main()

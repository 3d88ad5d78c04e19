"""Cold loads under a daily demand pattern: LRU alone vs. eviction and preloading by forecast.

A replay drives the real residency manager (`llmos.kernel.residency.Residency`, real tiny llama
engines joining a real engine loop) through compressed "days" with an injected clock: a day is 24
demand windows (the clock's "hours"), each request of the trace arrives at its simulated time,
and the policy's decisions are all that matter, so a simulated hour passes in milliseconds. A
request is a *cold load* when its model is not resident when it arrives (it must wait for a load).

Both runs see the same trace. LRU: no demand history, no preloading (what llmos did before).
Forecast: each request is counted in the demand history; four times per window the planner runs
(`Residency.plan`, as the server's planner thread does every `kernel.preload_interval_s`), and
evictions go by predicted demand.

Scenarios (requests per hour drawn from a Poisson law, seeded):
  two-models   one slot (max_resident=1): `chat` 08-17 h, `code` 19-06 h.
  three-models two slots: `chat` 08-21 h, `code` 09-16 h, `batch` 01-04 h.

    python benchmarks/bench_preload.py [--days 10] [--rate 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from llmos.config import KernelConfig, MemoryConfig  # noqa: E402
from llmos.kernel.demand import DemandHistory  # noqa: E402
from llmos.kernel.engine import Engine  # noqa: E402
from llmos.kernel.loop import EngineLoop  # noqa: E402
from llmos.kernel.residency import Residency  # noqa: E402
from llmos.models.config import ModelConfig  # noqa: E402
from llmos.models.registry import build_model  # noqa: E402

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
PLANS_PER_HOUR = 4

# scenario -> (max_resident, {model: hours of the day it is used})
SCENARIOS: dict[str, tuple[int, dict[str, list[int]]]] = {
    "two-models": (1, {"chat": list(range(8, 18)), "code": [*range(19, 24), *range(0, 7)]}),
    "three-models": (
        2,
        {"chat": list(range(8, 22)), "code": list(range(9, 17)), "batch": list(range(1, 5))},
    ),
}


class SimClock:
    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> float:
        return self.t_s


def tiny_model(seed: int, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    D, F, H = 32, 64, 16
    w = {"model.embed_tokens.weight": torch.randn(vocab_size, D) * 0.05}
    w["model.norm.weight"] = torch.ones(D)
    p = "model.layers.0."
    w[p + "input_layernorm.weight"] = torch.ones(D)
    w[p + "post_attention_layernorm.weight"] = torch.ones(D)
    for name, shape in [("q", (2 * H, D)), ("k", (H, D)), ("v", (H, D)), ("o", (D, 2 * H))]:
        w[p + f"self_attn.{name}_proj.weight"] = torch.randn(shape) * 0.1
    w[p + "mlp.gate_proj.weight"] = torch.randn(F, D) * 0.1
    w[p + "mlp.up_proj.weight"] = torch.randn(F, D) * 0.1
    w[p + "mlp.down_proj.weight"] = torch.randn(D, F) * 0.1
    cfg = ModelConfig(
        architecture="llama",
        vocab_size=vocab_size,
        hidden_size=D,
        intermediate_size=F,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=H,
        max_position_embeddings=256,
        eos_token_ids=[2],
    )
    return build_model(cfg, w)


class TinySource:
    """A model source of tiny random llamas (one per name), counting loads."""

    def __init__(self, names: list[str], tokenizer: object) -> None:
        self.names = set(names)
        self.tokenizer = tokenizer
        self.num_loads = 0

    def find(self, name: str) -> str | None:
        return name if name in self.names else None

    def check(self, model_id: str) -> None:
        return None

    def load_bytes(self, model_id: str) -> int:
        return 0

    def load(self, model_id: str, pids: Iterator[int]) -> Engine:
        self.num_loads += 1
        vocab = self.tokenizer.vocab_size  # type: ignore[attr-defined]
        return Engine(
            tiny_model(len(model_id), vocab),
            self.tokenizer,
            model_name=model_id,
            kernel=KernelConfig(max_model_len=256),
            memory=MemoryConfig(kv_cache_bytes=1 << 18, swap_bytes=0),
            pids=pids,
        )


def trace(
    hours: dict[str, list[int]], days: int, rate: float, seed: int
) -> list[tuple[float, str]]:
    """(time s, model) of every request: a Poisson number per active hour, uniform inside it."""
    rng = random.Random(seed)
    out = []
    for day in range(days):
        for model, active in hours.items():
            for hour in active:
                n = _poisson(rng, rate)
                start = day * DAY_S + hour * HOUR_S
                out += [(start + rng.random() * HOUR_S, model) for _ in range(n)]
    return sorted(out)


def _poisson(rng: random.Random, mean: float) -> int:
    n, p, limit = 0, 1.0, pow(2.718281828459045, -mean)
    while True:
        p *= rng.random()
        if p < limit:
            return n
        n += 1


@dataclass
class Outcome:
    num_requests: int
    num_cold: int
    num_cold_after_day1: int
    num_loads: int
    num_preloads: int


def replay(
    requests: list[tuple[float, str]],
    models: list[str],
    max_resident: int,
    *,
    forecast: bool,
    tokenizer: object,
) -> Outcome:
    clock = SimClock()
    loop = EngineLoop(max_running=8, max_waiting=8)
    loop.start()
    source = TinySource(models, tokenizer)
    demand = DemandHistory(window_s=HOUR_S, day_s=DAY_S, clock=clock)
    residency = Residency(
        loop,
        source,
        max_resident=max_resident,
        demand=demand,
        is_preloading=forecast,
        clock=clock,
    )
    num_cold = num_cold_late = 0
    plan_every_s = HOUR_S / PLANS_PER_HOUR
    next_plan_s = plan_every_s
    try:
        for t_s, model in requests:
            while forecast and next_plan_s <= t_s:
                clock.t_s = next_plan_s
                preload = residency.plan()
                if preload is not None:
                    preload.result(60)
                next_plan_s += plan_every_s
            clock.t_s = t_s
            if forecast:
                residency.note_request(model)
            engine = residency.pin(model)
            if engine is None:
                num_cold += 1
                num_cold_late += t_s >= DAY_S
                residency.load(model)
                engine = residency.pin(model)
                assert engine is not None
            residency.release(model)
    finally:
        residency.close()
        loop.stop()
    return Outcome(len(requests), num_cold, num_cold_late, source.num_loads, residency.num_preloads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rate", type=float, default=12.0, help="mean requests per active hour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from llmos.models.loader import load_model_files

    tokenizer = load_model_files("smollm2").tokenizer
    print(
        f"{args.days} compressed days of 24 one-hour demand windows, ~{args.rate:g} requests per active hour"
    )
    print(
        f"{'scenario':<14}{'requests':>9}{'LRU cold':>10}{'forecast cold':>15}{'(after day 1)':>15}"
        f"{'preloads':>10}{'fewer':>8}"
    )
    ok = True
    for name, (max_resident, hours) in SCENARIOS.items():
        requests = trace(hours, args.days, args.rate, args.seed)
        models = sorted(hours)
        lru = replay(requests, models, max_resident, forecast=False, tokenizer=tokenizer)
        fc = replay(requests, models, max_resident, forecast=True, tokenizer=tokenizer)
        fewer = 1 - fc.num_cold / lru.num_cold if lru.num_cold else 0.0
        print(
            f"{name:<14}{len(requests):>9}{lru.num_cold:>10}{fc.num_cold:>15}"
            f"{fc.num_cold_after_day1:>15}{fc.num_preloads:>10}{fewer:>8.0%}"
        )
        ok = ok and fewer >= 0.8
    print("target: >= 80% fewer cold loads than LRU:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

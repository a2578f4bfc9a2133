"""Mixed precision from the nuclear norm of attention maps and output features.

Following "Post-Training Quantization for Vision Transformer" (Liu et al., 2021), all
GEMM operands of one MSA module (W_Q, W_K, W_V, W_O and their inputs) share one bit
width, and so do those of one MLP module (W_1, W_2 and their inputs). A module's
sensitivity at width b is the paper's second-order perturbation metric with the
nuclear norm standing in for the Hessian trace:

    Ω_i(b) = ||Y_i||_* · Σ_{W ∈ module i} ||Ŵ_b − W||²_F

where ``||Y_i||_*`` (sum of singular values) is measured on the calibration images:
for an MSA module, Y_i are its attention maps (per image, the nuclear norms of the
heads' [N, N] probability matrices are summed; then averaged over images), for an MLP
module, Y_i is its output feature (the fc2 output [N, D] per image, averaged over
images). Ŵ_b is the per-output-channel symmetric MinMax quantization at b bits.

The bit widths are the point of the Pareto frontier (total Ω vs. weight bits) with the
least Ω whose parameter-weighted average weight bits — over *every* weight layer,
patch embedding and head included at their fixed 8 bits, exactly as
:func:`calib.report.bits_record` counts them — do not exceed the budget. The frontier
is built exactly by a dynamic program over modules that keeps only non-dominated
(cost, Ω) partial assignments.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from calib.fqvit import ATTN_AUTO_COSINE_GAIN, BitConfig, RecordingPolicy, calibrate_fqvit, layer_module, layer_weights
from calib.forward import vit_forward
from calib.plan import SUPPORTED_BITS, BitsError, QuantPlan, quantize_weight

__all__ = ["DEFAULT_BUDGET", "ModuleCost", "Allocation", "check_budget", "feature_nuclear_norms",
           "weight_perturbation", "module_costs", "pareto_frontier", "allocate", "calibrate_mixed"]

DEFAULT_BUDGET = 6.0
#: width of the patch embedding and the head (not allocated; counted in the average)
EDGE_BITS = 8


@dataclass(frozen=True)
class ModuleCost:
    """One allocatable module: its weight parameter count and Ω at each candidate width."""

    name: str
    params: int
    sensitivity: dict  # bits → Ω


@dataclass(frozen=True)
class Allocation:
    """The chosen widths, their total Ω, average weight bits, and the frontier they came from."""

    module_bits: dict
    sensitivity: float
    avg_weight_bits: float
    budget: float
    #: (average weight bits, Ω) of every Pareto-optimal assignment, cheapest first
    frontier: list = field(default_factory=list)


def check_budget(budget) -> float:
    """A finite budget in [min(SUPPORTED_BITS), max(SUPPORTED_BITS)] average weight bits."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise BitsError(f"--budget must be a number of average weight bits (got {budget!r})") from None
    lo, hi = min(SUPPORTED_BITS), max(SUPPORTED_BITS)
    if not math.isfinite(b) or not lo <= b <= hi:
        raise BitsError(f"--budget must be between {lo} and {hi} average weight bits (got {budget!r})")
    return b


class _NuclearNormPolicy(RecordingPolicy):
    """Float inference that accumulates nuclear norms of attention maps and MLP outputs."""

    def __init__(self, depth: int):
        super().__init__(self._record)
        self.sums = {f"blocks.{i}.{m}": 0.0 for i in range(depth) for m in ("attn", "mlp")}
        self.images = 0

    def _record(self, name, x):
        if name.endswith(".mlp.fc2.out"):  # output feature [B, N, D]
            self.sums[name[: -len(".fc2.out")]] += float(torch.linalg.svdvals(x.double()).sum())

    def softmax(self, name, s):
        p = super().softmax(name, s)  # attention maps [B, H, N, N]
        self.sums[name.rsplit(".", 1)[0]] += float(torch.linalg.svdvals(p.double()).sum())
        return p


@torch.no_grad()
def feature_nuclear_norms(model, spec, pixels: np.ndarray, batch: int = 8, progress: bool = True) -> dict:
    """Module → mean over images of the nuclear norm of its attention maps (MSA, summed over
    heads) or output feature (MLP)."""
    pol = _NuclearNormPolicy(len(model.blocks))
    starts = range(0, len(pixels), batch)
    for i in tqdm(starts, desc="mixed: nuclear norms", file=sys.stderr, disable=not progress, leave=False):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))
        vit_forward(model, spec, x, pol, dtype=torch.float32)
    n = max(len(pixels), 1)
    return {k: v / n for k, v in pol.sums.items()}


def weight_perturbation(w: np.ndarray, bits: int) -> float:
    """||Ŵ − W||²_F of the per-output-channel symmetric MinMax quantization at ``bits``."""
    return float(((quantize_weight(w, bits).dequant() - np.asarray(w, np.float64)) ** 2).sum())


def module_costs(weights: dict, norms: dict, widths: Sequence[int] = SUPPORTED_BITS) -> list[ModuleCost]:
    """Ω_i(b) = nuclear norm · Σ weight perturbation, for every module in ``norms``."""
    groups: dict[str, list[np.ndarray]] = {m: [] for m in norms}
    for name, (w, _) in weights.items():
        mod = layer_module(name)
        if mod is not None:
            groups[mod].append(w)
    return [ModuleCost(m, int(sum(w.size for w in ws)),
                       {b: norms[m] * sum(weight_perturbation(w, b) for w in ws) for b in widths})
            for m, ws in groups.items()]


def pareto_frontier(modules: Sequence[ModuleCost]) -> list[tuple[int, float, tuple[int, ...]]]:
    """Every non-dominated assignment as (total module weight bits, total Ω, widths per module).

    Exact: a partial assignment dominated in both cost and Ω by another over the same
    modules can be replaced by it in any completion, so dropping it loses no optimum.
    """
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for mod in modules:
        cand = [(c + mod.params * b, s + float(mod.sensitivity[b]), bits + (b,))
                for c, s, bits in front for b in sorted(mod.sensitivity)]
        cand.sort(key=lambda t: (t[0], t[1]))
        front = []
        for c, s, bits in cand:
            if not front or s < front[-1][1]:
                if front and front[-1][0] == c:  # same cost, strictly better Ω: replace
                    front[-1] = (c, s, bits)
                else:
                    front.append((c, s, bits))
    return front


def allocate(modules: Sequence[ModuleCost], budget: float, fixed_params: int = 0,
             fixed_bits: int = EDGE_BITS) -> Allocation:
    """Least-Ω widths whose average weight bits over all parameters (``fixed_params`` at
    ``fixed_bits`` included) stay within ``budget``."""
    budget = check_budget(budget)
    total = fixed_params + sum(m.params for m in modules)
    fixed = fixed_params * fixed_bits
    _check_feasible(budget, total - fixed_params, fixed_params, min(min(m.sensitivity) for m in modules),
                    fixed_bits)
    # tolerance: a budget typed as the exact minimum must not fail on float rounding
    limit = budget * total * (1 + 1e-12) - fixed
    front = pareto_frontier(modules)
    feasible = [p for p in front if p[0] <= limit]
    cost, sens, bits = min(feasible, key=lambda p: (p[1], p[0]))
    return Allocation({m.name: b for m, b in zip(modules, bits)}, sens, (fixed + cost) / total, budget,
                      [((fixed + c) / total, s) for c, s, _ in front])


def _check_feasible(budget: float, module_params: int, fixed_params: int, low: int = min(SUPPORTED_BITS),
                    fixed_bits: int = EDGE_BITS) -> None:
    lo = (fixed_params * fixed_bits + module_params * low) / (fixed_params + module_params)
    if lo > budget * (1 + 1e-12):
        raise BitsError(f"--budget {budget:g} is below this model's minimum of {lo:.3f} average weight "
                        f"bits (every block module at {low} bits, patch embedding and head at {fixed_bits})")


@torch.no_grad()
def calibrate_mixed(model, spec, pixels: np.ndarray, budget: float | None = None, act_observer: str = "minmax",
                    progress: bool = True, attn: str = "auto", method: str = "mixed",
                    act_bits: int | None = None, refine: Callable[..., QuantPlan] | None = None,
                    attn_gain: float = ATTN_AUTO_COSINE_GAIN) -> QuantPlan:
    """Allocate module widths under ``budget`` and calibrate the FQ-ViT baseline quantizers at
    those widths. ``act_bits`` None: a module's GEMM inputs take its weight width (the
    paper's W = A); an integer fixes every module's activation width instead. ``refine``
    (plan → plan, e.g. a similarity search) is applied to the calibrated plan. ``attn_gain``:
    the logit-cosine gain uniform attention needs over log2 codes under ``attn="auto"``."""
    budget = check_budget(DEFAULT_BUDGET if budget is None else budget)
    weights = layer_weights(model, spec)
    fixed_params = sum(w.size for n, (w, _) in weights.items() if layer_module(n) is None)
    # an infeasible budget fails before the calibration passes
    _check_feasible(budget, sum(w.size for w, _ in weights.values()) - fixed_params, fixed_params)
    norms = feature_nuclear_norms(model, spec, pixels, progress=progress)
    modules = module_costs(weights, norms)
    alloc = allocate(modules, budget, fixed_params)
    cfg = BitConfig({m: (b, b if act_bits is None else act_bits) for m, b in alloc.module_bits.items()},
                    res_bits=8, edge_bits=EDGE_BITS)
    plan = calibrate_fqvit(model, spec, pixels, cfg, act_observer, progress=progress, method=method, attn=attn,
                           attn_gain=attn_gain)
    plan.notes.update({"budget": alloc.budget, "mixed_sensitivity": alloc.sensitivity,
                       "mixed_frontier_points": len(alloc.frontier),
                       "nuclear_norms": dict(norms),
                       "module_sensitivity": {m.name: dict(m.sensitivity) for m in modules}})
    if refine is not None:
        plan = refine(plan)
    return plan

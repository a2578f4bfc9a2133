"""Bit-width bookkeeping of a plan: averages, per-module widths, model size."""

from __future__ import annotations

import numpy as np

from calib.plan import QuantPlan

__all__ = ["bits_record", "bits_summary"]


def bits_record(plan: QuantPlan, model, spec) -> dict:
    """``avg_weight_bits`` (parameter-weighted over every weight layer), ``avg_act_bits``
    (mean over the block modules' GEMM inputs), per-module widths and the integer model size."""
    params = {n: int(w.q.size) for n, w in plan.weights.items()}
    total = sum(params.values())
    wbits = sum(plan.weights[n].bits * p for n, p in params.items())
    abits = [a for _, a in plan.module_bits.values()]
    return {
        "avg_weight_bits": float(wbits / total),
        "avg_act_bits": float(np.mean(abits)) if abits else 8.0,
        "module_bits": {k: {"w": int(v[0]), "a": int(v[1])} for k, v in plan.module_bits.items()},
        "model_size_bytes": int(np.ceil(wbits / 8)),
        "weight_params": int(total),
    }


def bits_summary(plan: QuantPlan, model, spec) -> str:
    """One line per block: W/A widths of its MSA and MLP modules."""
    rec = bits_record(plan, model, spec)
    lines = [f"average weight bits {rec['avg_weight_bits']:.2f}, activation bits {rec['avg_act_bits']:.2f}, "
             f"weights {rec['model_size_bytes'] / 1024:.1f} KiB"]
    for i in range(len(model.blocks)):
        a = plan.module_bits.get(f"blocks.{i}.attn")
        m = plan.module_bits.get(f"blocks.{i}.mlp")
        if a and m:
            lines.append(f"  block {i:2d}: MSA W{a[0]}A{a[1]}  MLP W{m[0]}A{m[1]}")
    return "\n".join(lines)

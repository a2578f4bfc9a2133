"""Activation observers: range statistics and the PTF factor search, from float activations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from calib.plan import ActQuant
from vit2hw import intops as I

__all__ = ["RangeObserver", "asymmetric_quant", "symmetric_quant", "ptf_quant", "PTFErrorAccumulator"]


@dataclass
class RangeObserver:
    """Per-channel running min/max, plus the mean per-batch percentile range."""

    percentile: float | None = None
    cmin: np.ndarray | None = None
    cmax: np.ndarray | None = None
    plo: list = field(default_factory=list)
    phi: list = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        mn, mx = flat.min(0).values.numpy(), flat.max(0).values.numpy()
        self.cmin = mn if self.cmin is None else np.minimum(self.cmin, mn)
        self.cmax = mx if self.cmax is None else np.maximum(self.cmax, mx)
        if self.percentile is None:
            return
        v = flat.reshape(-1)
        if v.numel() > 2_000_000:  # quantile on a deterministic strided subsample
            v = v[:: v.numel() // 2_000_000 + 1]
        q = torch.quantile(v, torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=v.dtype))
        self.plo.append(float(q[0]))
        self.phi.append(float(q[1]))

    def range(self, mode: str = "minmax") -> tuple[float, float]:
        if mode == "percentile":
            if not self.plo:
                raise ValueError("percentile range requested from an observer that did not record it")
            return float(np.mean(self.plo)), float(np.mean(self.phi))
        return float(self.cmin.min()), float(self.cmax.max())


def asymmetric_quant(lo: float, hi: float, bits: int) -> ActQuant:
    """Uniform quantizer covering [lo, hi] (always including 0) with signed codes and a zero point."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qlo, qhi = I.int_range(bits, True)
    scale = max(hi - lo, 1e-8) / (qhi - qlo)
    zp = int(np.clip(qlo - round(lo / scale), qlo, qhi))
    return ActQuant(bits, np.array([scale]), zp, "int")


def symmetric_quant(amax, bits: int) -> ActQuant:
    """Symmetric quantizer with max magnitude ``amax`` (scalar: per tensor; array: per channel)."""
    qmax = (1 << (bits - 1)) - 1
    amax = np.maximum(np.atleast_1d(np.asarray(amax, np.float64)), 1e-8)
    return ActQuant(bits, amax / qmax, 0, "int")


class PTFErrorAccumulator:
    """FQ-ViT's Power-of-Two Factor search, symmetric variant.

    The base scale is max|x| / (2**(b−1)−1) / 8 over all channels; each channel then
    takes the factor 2**alpha (alpha in 0..3) whose quantization error (L2, summed
    over the calibration set) is smallest.
    """

    def __init__(self, amax: float, bits: int):
        self.bits = bits
        self.base = max(amax, 1e-8) / ((1 << (bits - 1)) - 1) / 8.0
        self.err = None

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        lo, hi = I.int_range(self.bits, True)
        errs = []
        for a in range(4):
            s = self.base * 2.0 ** a
            q = torch.clamp(torch.round(flat / s), lo, hi) * s
            errs.append(((q - flat) ** 2).sum(0).numpy())
        e = np.stack(errs)
        self.err = e if self.err is None else self.err + e

    def result(self) -> ActQuant:
        alpha = np.argmin(self.err, axis=0).astype(np.int64)
        return ActQuant(self.bits, np.array([self.base]), 0, "ptf", alpha)


def ptf_quant(amax: float, bits: int, batches) -> ActQuant:
    acc = PTFErrorAccumulator(amax, bits)
    for x in batches:
        acc.update(x)
    return acc.result()

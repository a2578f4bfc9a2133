"""QuantPlan: every quantizer a calibration method chose, before lowering to integers.

A plan names one :class:`ActQuant` per activation point and one :class:`WeightQuant`
per weight layer (see :func:`calib.forward.activation_points` / ``linear_layers``),
plus the (possibly bias-corrected) float biases. The fake-quant model simulates a
plan in float; :mod:`calib.lower` turns it into a QuantizedGraph of integer ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vit2hw import intops as I

__all__ = ["ActQuant", "WeightQuant", "QuantPlan", "quantize_weight", "BitsError", "SUPPORTED_BITS"]

SUPPORTED_BITS = (4, 6, 8)


class BitsError(ValueError):
    """An unsupported or impossible bit-width request."""


@dataclass
class ActQuant:
    """An activation quantizer.

    ``kind``: ``"int"`` — uniform, real = (q − zero_point)·scale (scale per tensor or per
    channel); ``"ptf"`` — symmetric with per-channel power-of-two factors, real =
    q·base·2**alpha_c; ``"log2"`` — Shift-Log2 codes (code k ↦ 2**-k·scale − shift,
    code 2**bits − 1 ↦ −shift); ``"fixed"`` — not a calibrated quantizer (attention
    scores and probabilities, whose encoding the integer spec fixes).
    """

    bits: int
    scale: np.ndarray
    zero_point: int = 0
    kind: str = "int"
    alpha: np.ndarray | None = None
    shift: float = 0.0

    @property
    def lo_hi(self) -> tuple[int, int]:
        return I.int_range(self.bits, True)

    def channel_scale(self) -> np.ndarray:
        if self.kind == "ptf":
            return self.scale * np.exp2(self.alpha.astype(np.float64))
        return np.asarray(self.scale, np.float64)

    def quantize_np(self, x: np.ndarray) -> np.ndarray:
        """Integer codes of real ``x`` (compile time: constants such as the class-token row)."""
        lo, hi = self.lo_hi
        q = np.rint(np.asarray(x, np.float64) / self.channel_scale()) + self.zero_point
        return np.clip(q, lo, hi).astype(np.int64)

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` (last axis = channels)."""
        if self.kind == "log2":
            from calib.adfq import shift_log2_fake
            return shift_log2_fake(x, self)
        lo, hi = self.lo_hi
        s = torch.as_tensor(self.channel_scale(), dtype=x.dtype)
        q = torch.clamp(torch.round(x / s) + self.zero_point, lo, hi)
        return (q - self.zero_point) * s


@dataclass
class WeightQuant:
    """Symmetric per-output-channel weight quantizer with its integer codes ([out, in])."""

    bits: int
    scale: np.ndarray
    q: np.ndarray

    def dequant(self) -> np.ndarray:
        return self.q.astype(np.float64) * self.scale[:, None]


def quantize_weight(w: np.ndarray, bits: int, scale: np.ndarray | None = None) -> WeightQuant:
    """Per-output-channel symmetric quantization; ``scale`` defaults to max|w|/(2**(b−1)−1)."""
    w = np.asarray(w, np.float64)
    qmax = (1 << (bits - 1)) - 1
    if scale is None:
        scale = np.abs(w).max(axis=1) / qmax
    scale = np.where(scale > 0, scale, 1e-12).astype(np.float64)
    q = np.clip(np.rint(w / scale[:, None]), -qmax, qmax).astype(np.int64)
    return WeightQuant(bits, scale, q)


@dataclass
class QuantPlan:
    """All quantization decisions for one model."""

    model: str
    method: str
    res_bits: int
    #: module name ("blocks.3.attn" / "blocks.3.mlp") → (weight bits, activation bits)
    module_bits: dict[str, tuple[int, int]]
    acts: dict[str, ActQuant] = field(default_factory=dict)
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    #: attention-probability encoding per block ("blocks.3.attn" → "log2" | "uniform")
    attn_modes: dict[str, str] = field(default_factory=dict)
    #: float bias per weight layer (after any bias correction)
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

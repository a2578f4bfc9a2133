"""The fake-quant model: a QuantPlan simulated in float.

It quantizes and dequantizes at every point the integer graph does, with the same
scales, zero points, integer weights, 16-bit score grid and 4-bit log2 attention
codes. The attention codes come from the integer Log-Int-Softmax itself (the scores
are integers on their grid, so this is exact, and a 4-bit log code is so sensitive to
the exponential's rounding that a float softmax would flip codes the hardware does
not); what stays float is the arithmetic between quantization points (GEMM rescaling,
LayerNorm statistics, the residual rescale). The integer reference
must agree with it (same top-1 on ≥ 99 % of images, bounded logit error).
"""

from __future__ import annotations

import numpy as np
import torch

from calib.forward import FloatPolicy, vit_forward
from calib.plan import QuantPlan
from vit2hw import intops as I

__all__ = ["FakeQuantPolicy", "fakequant_logits", "log2_code_probs", "lis_probs", "quantize_scores"]

_LOG2E = 1.4426950408889634


def quantize_scores(s: torch.Tensor) -> torch.Tensor:
    """Attention scores on the integer grid: score·log2(e) at 2**-SCORE_FRAC, int16-saturated."""
    g = _LOG2E * (1 << I.SCORE_FRAC)
    return torch.clamp(torch.round(s * g), -32768, 32767) / g


def log2_code_probs(p: torch.Tensor) -> torch.Tensor:
    """Probabilities rounded to 2**-k with FQ-ViT's rule (k = #{i : 1/p ≥ 1.5·2**i}); k = 15 → 0."""
    inv = 1.0 / torch.clamp(p, min=1e-30)
    k = torch.zeros_like(p)
    for i in range(I.LOG2_ZERO_CODE):
        k = k + (inv >= 1.5 * 2.0 ** i).to(p.dtype)
    return torch.where(k >= I.LOG2_ZERO_CODE, torch.zeros_like(p), torch.exp2(-k))


def lis_probs(s: torch.Tensor) -> torch.Tensor:
    """Probabilities 2**-k from the integer Log-Int-Softmax of grid scores ``s``."""
    g = _LOG2E * (1 << I.SCORE_FRAC)
    t = torch.round(s.detach() * g).to(torch.int64).numpy()
    k = torch.from_numpy(I.log_int_softmax(t, I.SCORE_FRAC)).to(s.dtype)
    return torch.where(k >= I.LOG2_ZERO_CODE, torch.zeros_like(k), torch.exp2(-k))


def uniform_probs(s: torch.Tensor) -> torch.Tensor:
    """Probabilities p/127 from the integer uniform softmax of grid scores ``s``."""
    g = _LOG2E * (1 << I.SCORE_FRAC)
    t = torch.round(s.detach() * g).to(torch.int64).numpy()
    return torch.from_numpy(I.uniform_softmax(t, I.SCORE_FRAC)).to(s.dtype) / I.PROB_MAX


class FakeQuantPolicy(FloatPolicy):
    """Quantize-dequantize at every point of ``plan``."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan
        self._w: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def act(self, name, x):
        q = self.plan.acts.get(name)
        return x if q is None else q.fake(x)

    def weight(self, name, w):
        key = (name, w.dtype)
        if key not in self._w:
            self._w[key] = torch.from_numpy(self.plan.weights[name].dequant()).to(w.dtype)
        return self._w[key]

    def bias(self, name, b):
        return torch.from_numpy(np.asarray(self.plan.biases[name], np.float64)).to(b.dtype)

    def scores(self, name, s, head_dim):
        # q·kᵀ of dequantized codes is an exact multiple of s_q·s_k/sqrt(d): recover the integer
        # accumulator and requantize it with the very multiplier the graph uses
        from calib.lower import score_multiplier
        blk = name.rsplit(".", 1)[0]
        sq = float(self.plan.acts[f"{blk}.q"].scale[0])
        sk = float(self.plan.acts[f"{blk}.k"].scale[0])
        hd = head_dim
        step = sq * sk * hd ** -0.5
        acc = torch.round(s.detach() / step).to(torch.int64).numpy()
        m, sh = score_multiplier(sq, sk, hd)
        t = I.requantize(acc, m, sh, 16, True)
        return torch.from_numpy(t).to(s.dtype) / (_LOG2E * (1 << I.SCORE_FRAC))

    def softmax(self, name, s):
        # scores are already on the integer grid, so the integer Log-Int-Softmax applies
        # exactly; its 4-bit codes are what the hardware produces
        mode = self.plan.attn_modes.get(name.rsplit(".", 1)[0], "log2")
        return uniform_probs(s) if mode == "uniform" else lis_probs(s)


@torch.no_grad()
def fakequant_logits(model, spec, plan: QuantPlan, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    """Fake-quant logits [N, classes] for uint8 ``pixels`` [N, C, H, W]."""
    policy = FakeQuantPolicy(plan)
    outs = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))
        outs.append(vit_forward(model, spec, x, policy, dtype=torch.float64).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))

"""The fake-quant model: a QuantPlan simulated in float.

It quantizes and dequantizes at every point the integer graph does, with the same
scales, zero points, integer weights, 16-bit score grid and 4-bit log2 attention
codes. GEMMs run in float on dequantized codes: in float64 the product is the integer
accumulator times its scale to far below half a step, so the accumulator can be
recovered by rounding (in the float32 statistics passes of the calibration methods it
is approximate, which is all those passes need).

What happens *between* quantization points can follow one of two models
(:class:`IntegerOps`):

* **integer sub-operations** (the default, ``IntegerOps()``): the fixed-point steps the
  integer contract defines are applied to the codes the model already holds, with the
  constants the lowering derives (:mod:`calib.lower`) and the functions of
  :mod:`vit2hw.intops`:

  - ``requant``: a GEMM output (Linear, attention × V) is taken back to its integer
    accumulator (the float product divided by the accumulator scale, rounded) and
    requantized with the graph's 16-bit dyadic multiplier and round-half-up shift
    (``intops.requantize``), not with the exact float ratio and round-half-even;
  - ``layernorm``: ``intops.ptf_layernorm`` on the PTF input codes (integer mean and
    variance, floor ``isqrt``, 16-bit reciprocal, per-channel dyadic γ), not float
    statistics;
  - ``residual``: ``intops.residual_add`` of the two operands' codes with the graph's
    dyadic multipliers, not a float sum re-rounded;
  - ``gelu``: the graph's GELU table on the fc1-output codes (uniform output codes;
    Shift-Log2 codes already come from one shared function).

  FQ-ViT and I-ViT model their integer LayerNorm/softmax in their fake-quant graphs the
  same way. The reason is measured (``python -m calib.agreement``, docs/results.md,
  "Fake-quant vs integer reference"): with float arithmetic between the points, the
  first GEMM output alone (patch embedding: exact float ratio vs 16-bit multiplier)
  already differs in 0.56 % of its codes, and the one-code differences compound through
  the blocks until vit_digits W4A4 agrees on only 94.7 % of top-1 decisions. Leaving one
  sub-operation in float while modelling the others: requantization 94.7 %, LayerNorm
  97.3 %, residual 99.6 %, GELU 100 % (its table is the float GELU already); all modelled:
  100 %, and every code at every point equals the integer reference's (the GEMM
  products themselves stay float64, exact to far below half an accumulator step).
  The values are exact; gradients pass straight through them as if the float operation
  had run (a value-exact, straight-through model).

* **float arithmetic** (``IntegerOps.none()``): rescaling with exact float ratios, float
  LayerNorm statistics, float residual sums, float GELU — the textbook fake-quant,
  fully differentiable through torch (what a scale search that back-propagates into
  the between-point arithmetic would use).

The attention codes always come from the integer Log-Int-Softmax itself (the scores
are integers on their grid, so this is exact, and a 4-bit log code is so sensitive to
the exponential's rounding that a float softmax would flip codes the hardware does
not). Score requantization uses the graph's multiplier in both models. The integer
reference must agree with this model (same top-1 on ≥ 99 % of images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from calib.forward import FloatPolicy, float_layernorm, vit_forward
from calib.plan import ActQuant, QuantPlan, WeightQuant
from vit2hw import intops as I

__all__ = ["FakeQuantPolicy", "IntegerOps", "gemm_source", "fakequant_logits", "log2_code_probs", "lis_probs", "quantize_scores"]

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


@dataclass(frozen=True)
class IntegerOps:
    """Which integer sub-operations of the graph the fake-quant model reproduces (see the module doc)."""

    requant: bool = True
    layernorm: bool = True
    residual: bool = True
    gelu: bool = True

    @classmethod
    def none(cls) -> "IntegerOps":
        """Float arithmetic between quantization points."""
        return cls(False, False, False, False)


def _straight_through(x: torch.Tensor, exact: np.ndarray) -> torch.Tensor:
    """``exact`` as a tensor like ``x``; where ``x`` needs a gradient it passes straight through."""
    y = torch.from_numpy(np.asarray(exact, np.float64)).to(x.dtype)
    return x + (y - x).detach() if x.requires_grad else y


def _codes(x: torch.Tensor, q: ActQuant) -> np.ndarray:
    """Integer codes of an already quantized (dequantized-valued) ``x`` under ``q``."""
    s = np.broadcast_to(q.channel_scale(), (x.shape[-1],))
    return (np.rint(x.detach().double().numpy() / s) + q.zero_point).astype(np.int64)


def _dequant(codes: np.ndarray, q: ActQuant) -> np.ndarray:
    return (codes - q.zero_point) * np.broadcast_to(q.channel_scale(), (codes.shape[-1],))


def _key(*quants) -> tuple:
    """Cache key of quantizers' parameters (plans are edited in place by calibration passes)."""
    out = []
    for q in quants:
        if isinstance(q, ActQuant):
            out.append((q.kind, q.bits, q.zero_point, float(q.shift), np.asarray(q.scale, np.float64).tobytes(),
                        None if q.alpha is None else np.asarray(q.alpha).tobytes()))
        elif isinstance(q, WeightQuant):
            out.append((q.bits, q.scale.tobytes()))
        else:
            out.append(q)
    return tuple(out)


def gemm_source(point: str) -> tuple[str, str | None] | None:
    """(producing layer or ``"attn_v"``, its input point) of a GEMM-output activation point, else None."""
    if point == "head.out":
        return "head", "norm.out"
    if point == "blocks.0.norm1.in":
        return "patch_embed", None
    parts = point.split(".")
    if parts[0] != "blocks" or len(parts) < 4:
        return None
    blk, rest = ".".join(parts[:2]), ".".join(parts[2:])
    return {"attn.q": (f"{blk}.attn.q", f"{blk}.norm1.out"), "attn.k": (f"{blk}.attn.k", f"{blk}.norm1.out"),
            "attn.v": (f"{blk}.attn.v", f"{blk}.norm1.out"), "attn.out": ("attn_v", f"{blk}.attn.v"),
            "attn.proj.out": (f"{blk}.attn.proj", f"{blk}.attn.out"),
            "mlp.fc1.out": (f"{blk}.mlp.fc1", f"{blk}.norm2.out"),
            "mlp.fc2.out": (f"{blk}.mlp.fc2", f"{blk}.mlp.gelu.out")}.get(rest)


class FakeQuantPolicy(FloatPolicy):
    """Quantize-dequantize at every point of ``plan``; ``integer`` selects which of the graph's
    integer sub-operations are modelled between the points (default: all)."""

    def __init__(self, plan: QuantPlan, integer: IntegerOps = IntegerOps()):
        self.plan = plan
        self.integer = integer
        self._w: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._consts: dict[tuple, object] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        """Called with the float activation at ``name`` just before its quantizer (a hook point)."""

    def _const(self, key: tuple, make):
        if key not in self._consts:
            self._consts[key] = make()
        return self._consts[key]

    def _spec(self, point: str, channels: int):
        from calib.lower import spec_of
        return spec_of(point, (1, channels), self.plan.acts[point])

    def act(self, name, x):
        self.observe(name, x)
        q = self.plan.acts.get(name)
        if q is None:
            return x
        src = gemm_source(name) if self.integer.requant and q.kind in ("int", "ptf") else None
        if src is None or not self._integer_input(src[1]):
            return q.fake(x)
        if name == "blocks.0.norm1.in":  # row 0 is the class-token constant, the rest the patch GEMM
            return torch.cat([q.fake(x[:, :1]), self._requant(name, src, x[:, 1:])], dim=1)
        return self._requant(name, src, x)

    def _integer_input(self, point: str | None) -> bool:
        """Whether a GEMM's input is integer codes (a quantizer kind without an integer form,
        e.g. float outliers, leaves no accumulator to requantize: the float model applies)."""
        q = self.plan.acts.get(point) if point else None
        return point is None or q is not None and q.kind in ("int", "log2")

    def _requant(self, name: str, src: tuple[str, str | None], y: torch.Tensor) -> torch.Tensor:
        """The graph's requantization of the integer accumulator behind the float GEMM output ``y``."""
        from calib.lower import attn_v_terms, linear_acc_terms, requant_multiplier
        from vit2hw.graph import TensorSpec
        layer, inp = src
        q, c = self.plan.acts[name], y.shape[-1]
        if layer == "attn_v":
            blk = name.rsplit(".", 2)[0]
            mode = self.plan.attn_modes.get(f"{blk}.attn", "log2")
            qv = self.plan.acts[inp]
            acc_scale, m, s = self._const(("av", name, mode, _key(qv, q)), lambda: attn_v_terms(
                float(qv.scale[0]), mode, self._spec(name, c), c))
        else:
            qi = self.plan.acts.get(inp) if inp else None
            wq = self.plan.weights[layer]

            def make():
                if qi is None:  # patch embedding: raw pixels, codes p − 128 at scale 1
                    xin = TensorSpec("image", (1,), 8, True, (1.0,), -128)
                else:
                    xin = self._spec(inp, 1)
                acc_scale, _ = linear_acc_terms(self.plan, layer, xin, None, qi if qi is not None and
                                                qi.kind == "log2" else None)
                return (acc_scale, *requant_multiplier(acc_scale, self._spec(name, c), c))
            acc_scale, m, s = self._const(("lin", name, layer, _key(qi, wq, q)), make)
        acc = np.rint(y.detach().double().numpy() / acc_scale).astype(np.int64)
        codes = I.requantize(acc, m, s, q.bits, True, q.zero_point)
        return _straight_through(y, _dequant(codes, q))

    def layernorm(self, name, x, ln):
        out = f"{name}.out"
        qi, qo = self.plan.acts.get(f"{name}.in"), self.plan.acts.get(out)
        if not self.integer.layernorm or qo is None or qi is None or qi.kind != "ptf" or qo.kind != "int":
            return super().layernorm(name, x, ln)
        y = float_layernorm(x, ln)
        self.observe(out, y)
        from calib.lower import layernorm_consts
        c = x.shape[-1]
        k = self._const(("ln", name, _key(qi, qo)), lambda: layernorm_consts(
            ln, self._spec(f"{name}.in", c), self._spec(out, c)))
        codes = I.ptf_layernorm(_codes(x, qi), k["alpha"], k["gm"], k["gs"], k["bb"], qo.bits, qo.zero_point,
                                in_bits=qi.bits)
        return _straight_through(y, _dequant(codes, qo))

    def residual(self, name, a, b, a_point, b_point):
        qa, qb, qo = (self.plan.acts.get(p) for p in (a_point, b_point, name))
        if not self.integer.residual or None in (qa, qb, qo) or "log2" in (qa.kind, qb.kind, qo.kind):
            return super().residual(name, a, b, a_point, b_point)
        y = a + b
        self.observe(name, y)
        from calib.lower import residual_consts
        c = y.shape[-1]
        k = self._const(("res", name, _key(qa, qb, qo)), lambda: residual_consts(
            self._spec(a_point, c), self._spec(b_point, c), self._spec(name, c)))
        codes = I.residual_add(_codes(a, qa), _codes(b, qb), k["ma"], k["mb"], k["bias"], k["s"], qo.bits,
                               qo.zero_point, a_bits=qa.bits, b_bits=qb.bits)
        return _straight_through(y, _dequant(codes, qo))

    def gelu(self, name, x):
        out, inp = f"{name}.out", name.rsplit(".", 1)[0] + ".fc1.out"
        qi, qo = self.plan.acts.get(inp), self.plan.acts.get(out)
        if not self.integer.gelu or qo is None or qi is None or qi.kind != "int" or qo.kind != "int":
            return super().gelu(name, x)
        y = F.gelu(x)
        self.observe(out, y)
        from calib.lower import gelu_table
        table = self._const(("gelu", name, _key(qi, qo)), lambda: gelu_table(self._spec(inp, 1), qo))
        codes = I.apply_lut(_codes(x, qi), table, qi.bits)
        return _straight_through(y, _dequant(codes, qo))

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
def fakequant_logits(model, spec, plan: QuantPlan, pixels: np.ndarray, batch: int = 16,
                     integer: IntegerOps = IntegerOps()) -> np.ndarray:
    """Fake-quant logits [N, classes] for uint8 ``pixels`` [N, C, H, W]."""
    policy = FakeQuantPolicy(plan, integer)
    outs = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))
        outs.append(vit_forward(model, spec, x, policy, dtype=torch.float64).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))

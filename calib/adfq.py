"""ADFQ-ViT calibration: Shift-Log2 GELU outputs, per-patch outlier-aware LayerNorm
outputs, and attention-score-enhanced module-wise reconstruction.

Starting from the FQ-ViT baseline plan (:func:`calib.fqvit.calibrate_fqvit`):

* **Shift-Log2** (post-GELU, kind ``"log2"``): ``y = x + shift`` is made non-negative by a
  calibrated constant and coded as 4-bit ``k`` with value ``2**-k·scale`` (code 15: zero),
  so the real value is ``2**-k·scale − shift``. The fc2 that consumes the codes runs in the
  array's shift mode (:func:`vit2hw.intops.shift_log2_linear`); ``−shift·colsum(W)`` folds
  into its bias. GELU and the coding together are one lookup table from the fc1-output
  codes. A block keeps the uniform quantizer where that has the smaller calibration error
  (at 6/8-bit activations a uniform code is often finer than 4-bit log2 codes).
* **Per-patch outlier-aware** (post-LayerNorm, ``adfq-outlier`` only): a per-token
  min/max scale computed at run time, and values above a calibrated threshold kept in
  floating point. Neither exists in the integer contract (the LayerNorm unit's output
  scale is a per-channel compile-time constant, and the array has no float path), so
  lowering refuses such a plan; it is there to measure the quantizer's fake-quant accuracy.
* **Module-wise reconstruction**: per block, the MSA and then the MLP module's
  quantizer parameters (activation scales, the Shift-Log2 scale and shift, per-output-
  channel weight scale multipliers) are tuned with Adam through a straight-through
  fake-quant of the module, to reproduce the float module's output; the MSA loss adds
  the (normalized) MSE between float and quantized attention scores before softmax.
  Only scales change, so the plan lowers as before. A module keeps its tuned
  parameters only if they lower its loss on the whole calibration set.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calib.fakequant import FakeQuantPolicy, log2_code_probs
from calib.forward import FloatPolicy, block_forward, mlp_forward, msa_forward, vit_forward
from calib.fqvit import BitConfig, RecordingPolicy, calibrate_fqvit, layer_weights
from calib.plan import ActQuant, QuantPlan, quantize_weight
from vit2hw import intops as I
from vit2hw.graph import TensorSpec

__all__ = ["LOG2_BITS", "shift_log2_codes", "shift_log2_fake", "shift_log2_lut", "log2_linear_terms",
           "fit_shift_log2", "PerPatchOutlierQuant", "OUTLIER_REFUSAL", "ReconConfig", "msa_forward",
           "mlp_forward", "block_forward", "reconstruct_plan", "module_loss", "calibrate_adfq"]

#: Shift-Log2 codes are 4 bits: the array's shift mode takes codes 0..14 and 15 = zero
LOG2_BITS = I.LOG2_CODE_BITS
_ZERO = (1 << LOG2_BITS) - 1
#: strided sample of tokens (rows) of each activation used to fit its quantizer
_FIT_ROWS = 512
#: default fraction of post-LayerNorm values the outlier-aware quantizer keeps in float
OUTLIER_FRACTION = 0.005

OUTLIER_REFUSAL = ("per-patch outlier-aware quantizer keeps outliers in floating point and computes per-token "
                   "scales at run time, which the integer accelerator cannot execute; use --method adfq "
                   "(no outlier path) to build hardware")


# ------------------------------------------------------------------ Shift-Log2

def _log2_thresholds(scale: float) -> list[float]:
    """Decision points: code ``i → i+1`` below ``0.75·2**-i·scale`` (the linear midpoint of
    the two values), last code → zero below ``0.5·2**-14·scale``."""
    t = [0.75 * scale * 2.0 ** -i for i in range(_ZERO - 1)]
    return t + [0.5 * scale * 2.0 ** -(_ZERO - 1)]


def shift_log2_codes(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """4-bit codes (as a float tensor) of real ``x``: the count of decision points above ``x + shift``.

    Both the fake-quant model and the GELU table call this one function, so they agree
    on every input bit for bit.
    """
    y = x + shift
    k = torch.zeros_like(y)
    for t in _log2_thresholds(scale):
        k = k + (y < t).to(y.dtype)
    return k


def _codes_value(k: torch.Tensor, scale, shift) -> torch.Tensor:
    return torch.where(k >= _ZERO, torch.zeros_like(k), scale * torch.exp2(-k)) - shift


def shift_log2_fake(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """Quantize-dequantize ``x`` with Shift-Log2 quantizer ``q`` (``ActQuant.fake`` of kind log2)."""
    scale = float(np.atleast_1d(q.scale)[0])
    return _codes_value(shift_log2_codes(x, scale, float(q.shift)), scale, float(q.shift))


def shift_log2_lut(in_spec: TensorSpec, q: ActQuant) -> np.ndarray:
    """GELU table from every fc1-output code straight to Shift-Log2 codes.

    The input values are formed exactly as the fake-quant model forms them
    (``(code − zp)·scale`` in float64 torch) and pass through the same GELU and
    :func:`shift_log2_codes`, so table and fake-quant agree on every code.
    """
    if in_spec.kind != "int" or len(in_spec.scale) != 1:
        raise ValueError(f"{in_spec.name}: the Shift-Log2 GELU table needs a per-tensor uniform input")
    lo, hi = I.int_range(in_spec.bits, True)
    codes = torch.arange(lo, hi + 1, dtype=torch.float64)
    s_in = torch.as_tensor(in_spec.scale_array, dtype=torch.float64)
    x = (codes - in_spec.zero_point) * s_in
    scale = float(np.atleast_1d(q.scale)[0])
    k = shift_log2_codes(F.gelu(x), scale, float(q.shift))
    return k.numpy().astype(np.int64)


def log2_linear_terms(q: ActQuant, w_int: np.ndarray, s_w: np.ndarray, bias: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Accumulator scale [M] and int bias of a Linear fed Shift-Log2 codes.

    ``shift_log2_linear`` sums ``w << (14 − k)``, i.e. ``w·2**-k·2**14``, so with real input
    ``2**-k·scale − shift`` the product is ``acc·s_w·scale·2**-14 − shift·s_w·Σ_k w``:
    the second term is a per-column constant folded into the bias.
    """
    top = (1 << q.bits) - 2
    scale = float(np.atleast_1d(q.scale)[0])
    acc_scale = np.asarray(s_w, np.float64) * scale * 2.0 ** -top
    b = np.asarray(bias, np.float64) - float(q.shift) * s_w * w_int.sum(axis=0)
    return acc_scale, np.rint(b / acc_scale)


def output_error(x: torch.Tensor, xq: torch.Tensor, w: torch.Tensor | None) -> float:
    """Mean squared error that quantizing ``x`` [T, K] causes in ``x @ w.T`` (``w=None``: in ``x``)."""
    d = xq - x
    return float(((d if w is None else d @ w.T) ** 2).mean())


def fit_shift_log2(x: torch.Tensor, w: torch.Tensor | None = None) -> tuple[ActQuant, float]:
    """Shift-Log2 quantizer of the sample ``x`` [T, K] minimizing :func:`output_error`
    through the consuming layer's float weight ``w`` [M, K], and that error.

    Shifts around ``−min(x)`` (GELU's minimum, about −0.17, moved to zero) and scales
    on an eighth-octave grid below ``max(x) + shift``, plus scales ``shift·2**n`` that
    make real zero exactly representable.
    """
    x = x.detach().double()
    lo, hi = float(x.min()), float(x.max())
    base = max(-lo, 1e-3 * max(hi, 1e-6))
    best = (math.inf, 1.0, 0.0)
    for f in (0.5, 0.75, 1.0, 1.25, 1.5):
        shift = base * f
        top = max(hi + shift, 1e-6)
        scales = [top * 2.0 ** (-j / 8) for j in range(16)]
        scales += [shift * 2.0 ** n for n in range(1, 20) if top / 4 <= shift * 2.0 ** n <= top * 1.5]
        for scale in scales:
            e = output_error(x, _codes_value(shift_log2_codes(x, scale, shift), scale, shift), w)
            if e < best[0]:
                best = (e, scale, shift)
    e, scale, shift = best
    return ActQuant(LOG2_BITS, np.array([scale]), 0, "log2", shift=shift), e


# ------------------------------------------------------------------ per-patch outliers

@dataclass
class PerPatchOutlierQuant(ActQuant):
    """Per-token (per-patch) asymmetric quantizer with float outliers above ``threshold``.

    Each token's range is its own min/max over its non-outlier values (computed at run
    time); values with ``|x| > threshold`` pass through unquantized. Not lowerable.
    """

    threshold: float = math.inf
    refusal: str = OUTLIER_REFUSAL

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        out = x.abs() > self.threshold
        inf = torch.full_like(x, math.inf)
        lo = torch.where(out, inf, x).amin(-1, keepdim=True).clamp(max=0.0)
        hi = torch.where(out, -inf, x).amax(-1, keepdim=True).clamp(min=0.0)
        levels = (1 << self.bits) - 1
        s = ((hi - lo) / levels).clamp(min=1e-8)
        zp = torch.round(-lo / s)
        q = torch.clamp(torch.round(x / s) + zp, 0, levels)
        return torch.where(out, x, (q - zp) * s)


def outlier_quant(x: torch.Tensor, bits: int, fraction: float = OUTLIER_FRACTION) -> PerPatchOutlierQuant:
    """Outlier-aware quantizer whose threshold leaves ``fraction`` of the sample ``x`` in float."""
    a = x.detach().double().abs().reshape(-1)
    thr = float(torch.quantile(a, 1.0 - fraction)) if fraction > 0 else math.inf
    return PerPatchOutlierQuant(bits, np.array([1.0]), 0, "patch_outlier", threshold=thr)


class _Stop(Exception):
    pass


class _StopAtFirstBlock:
    """Delegates to ``policy`` and aborts the forward once the first block's input exists."""

    def __init__(self, policy):
        self.policy = policy

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def act(self, name, x):
        x = self.policy.act(name, x)
        if name == "blocks.0.norm1.in":
            raise _Stop(x)
        return x


@torch.no_grad()
def embed_stream(model, spec, pixels: np.ndarray, policy, dtype=torch.float32, batch: int = 16) -> torch.Tensor:
    """The residual stream entering block 0 (patch embedding, class token, position) under ``policy``."""
    outs = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))
        try:
            vit_forward(model, spec, x, _StopAtFirstBlock(policy), dtype=dtype)
        except _Stop as stop:
            outs.append(stop.args[0])
    return torch.cat(outs)


# ------------------------------------------------------------------ reconstruction

def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    return x + (xq - x).detach()


@dataclass(frozen=True)
class ReconConfig:
    """Module-wise reconstruction: Adam steps per module, learning rate (of log-scales),
    mini-batch (whole images for MSA; tokens for the token-wise MLP), score-loss weight."""

    steps: int = 100
    lr: float = 5e-3
    batch_images: int = 4
    batch_tokens: int = 1024
    score_weight: float = 1.0
    seed: int = 0


class ReconPolicy(FloatPolicy):
    """Differentiable fake-quant of ``plan`` with learnable log-scale offsets.

    Activations in ``act_theta`` and weights in ``w_theta`` use ``scale·exp(theta)``
    (Shift-Log2 also ``shift·exp(theta_shift)``) with straight-through rounding; every
    other quantizer of the plan applies as is with a straight-through gradient. Scores
    stay float and the softmax rounds to the plan's probability encoding (straight
    through): the integer spec fixes those encodings, so they carry no parameters.
    """

    def __init__(self, plan: QuantPlan, wfloat: dict, act_theta: dict, w_theta: dict):
        self.plan, self.wfloat, self.act_theta, self.w_theta = plan, wfloat, act_theta, w_theta

    def act_scale(self, name):
        q, th = self.plan.acts[name], self.act_theta[name]
        return torch.as_tensor(np.atleast_1d(q.scale), dtype=th[0].dtype) * torch.exp(th[0])

    def act(self, name, x):
        q = self.plan.acts.get(name)
        if q is None:
            return x
        if name not in self.act_theta:
            return _ste(x, q.fake(x.detach()).to(x.dtype))
        s = self.act_scale(name).to(x.dtype)
        if q.kind == "log2":
            shift = (q.shift * torch.exp(self.act_theta[name][1])).to(x.dtype)
            y = x + shift
            k = shift_log2_codes(x.detach(), float(s.detach()[0]), float(shift.detach()))
            live = ((y > 0) & (y <= s)).detach()
            return _codes_value(k, s, shift) + torch.where(live, x - x.detach(), torch.zeros_like(x))
        lo, hi = q.lo_hi
        qi = torch.clamp(_ste_round(x / s) + q.zero_point, lo, hi)
        return (qi - q.zero_point) * s

    def weight_scale(self, name):
        th = self.w_theta[name]
        return torch.as_tensor(self.plan.weights[name].scale, dtype=th.dtype) * torch.exp(th)

    def weight(self, name, w):
        wq = self.plan.weights[name]
        if name not in self.w_theta:
            return torch.from_numpy(wq.dequant()).to(w.dtype)
        s = self.weight_scale(name).to(w.dtype)[:, None]
        qmax = (1 << (wq.bits - 1)) - 1
        wf = torch.as_tensor(self.wfloat[name], dtype=w.dtype)
        return torch.clamp(_ste_round(wf / s), -qmax, qmax) * s

    def bias(self, name, b):
        return torch.from_numpy(np.asarray(self.plan.biases[name], np.float64)).to(b.dtype)

    def softmax(self, name, s):
        p = torch.softmax(s, dim=-1)
        if self.plan.attn_modes.get(name.rsplit(".", 1)[0], "log2") == "uniform":
            return _ste(p, torch.round(p.detach() * I.PROB_MAX) / I.PROB_MAX)
        return _ste(p, log2_code_probs(p.detach()))


_MSA_ACTS = ("norm1.out", "attn.q", "attn.k", "attn.v", "attn.out", "attn.proj.out")
_MSA_LAYERS = ("attn.q", "attn.k", "attn.v", "attn.proj")
_MLP_ACTS = ("norm2.out", "mlp.fc1.out", "mlp.gelu.out", "mlp.fc2.out")
_MLP_LAYERS = ("mlp.fc1", "mlp.fc2")


def _params(plan: QuantPlan, b: str, acts, layers, dtype):
    act_theta = {}
    for a in acts:
        q = plan.acts[f"{b}.{a}"]
        if q.kind in ("int", "log2"):
            act_theta[f"{b}.{a}"] = [torch.zeros(np.atleast_1d(q.scale).shape, dtype=dtype, requires_grad=True),
                                     torch.zeros((), dtype=dtype, requires_grad=True)]
    w_theta = {f"{b}.{n}": torch.zeros(plan.weights[f"{b}.{n}"].scale.shape, dtype=dtype, requires_grad=True)
               for n in layers}
    return act_theta, w_theta


def _apply(plan: QuantPlan, wfloat: dict, act_theta: dict, w_theta: dict) -> None:
    """Write tuned scales back into ``plan`` (float64, integer weights re-rounded)."""
    for name, (th, th_shift) in act_theta.items():
        q = plan.acts[name]
        scale = np.atleast_1d(q.scale) * np.exp(th.detach().double().numpy())
        shift = q.shift * math.exp(float(th_shift.detach())) if q.kind == "log2" else q.shift
        plan.acts[name] = ActQuant(q.bits, scale, q.zero_point, q.kind, q.alpha, shift)
    for name, th in w_theta.items():
        wq = plan.weights[name]
        plan.weights[name] = quantize_weight(wfloat[name], wq.bits, wq.scale * np.exp(th.detach().double().numpy()))


def _nmse(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((a - ref) ** 2).mean() / (ref ** 2).mean().clamp(min=1e-12)


def module_loss(kind: str, blk, b: str, x: torch.Tensor, target, policy, score_weight: float = 1.0,
                chunk: int = 8) -> float:
    """The reconstruction objective of one module on all of ``x`` (``target``: float output
    [and float scores for MSA]), accumulated in chunks of ``chunk`` images."""
    num = den = snum = sden = 0.0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            sl = slice(i, i + chunk)
            if kind == "msa":
                y, s = msa_forward(blk, b, x[sl], policy)
                snum += float(((s - target[1][sl]) ** 2).sum())
                sden += float((target[1][sl] ** 2).sum())
                ref = target[0][sl]
            else:
                y, ref = mlp_forward(blk, b, x[sl], policy), target[sl]
            num += float(((y - ref) ** 2).sum())
            den += float((ref ** 2).sum())
    loss = num / max(den, 1e-12)
    return loss + score_weight * snum / max(sden, 1e-12) if kind == "msa" else loss


def _tune_module(kind: str, blk, b: str, plan: QuantPlan, wfloat: dict, x: torch.Tensor, target,
                 cfg: ReconConfig, gen: torch.Generator) -> dict:
    acts, layers = (_MSA_ACTS, _MSA_LAYERS) if kind == "msa" else (_MLP_ACTS, _MLP_LAYERS)
    act_theta, w_theta = _params(plan, b, acts, layers, x.dtype)
    policy = ReconPolicy(plan, wfloat, act_theta, w_theta)
    before = module_loss(kind, blk, b, x, target, policy, cfg.score_weight)
    params = [t for pair in act_theta.values() for t in pair] + list(w_theta.values())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    if kind == "mlp":  # tokens are independent in the MLP: sample tokens, not images
        xt, tt = x.reshape(-1, x.shape[-1]), target.reshape(-1, target.shape[-1])
    for _ in range(cfg.steps):
        opt.zero_grad()
        if kind == "msa":
            idx = torch.randperm(len(x), generator=gen)[:cfg.batch_images]
            y, s = msa_forward(blk, b, x[idx], policy)
            loss = _nmse(y, target[0][idx]) + cfg.score_weight * _nmse(s, target[1][idx])
        else:
            idx = torch.randperm(len(xt), generator=gen)[:cfg.batch_tokens]
            loss = _nmse(mlp_forward(blk, b, xt[idx][None], policy), tt[idx][None])
        loss.backward()
        opt.step()
    after = module_loss(kind, blk, b, x, target, policy, cfg.score_weight)
    kept = after < before
    if kept:
        _apply(plan, wfloat, act_theta, w_theta)
    return {"before": before, "after": after, "kept": kept}


def reconstruct_plan(model, spec, plan: QuantPlan, pixels: np.ndarray, cfg: ReconConfig = ReconConfig(),
                     progress: bool = True) -> dict:
    """Tune ``plan`` in place, block by block (MSA then MLP), on the calibration ``pixels``.

    Each module's input is the quantized residual stream of the already tuned plan (exact
    fake-quant, integer attention); its target is the float module on the float stream.
    Returns the per-module loss before/after.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    wfloat = layer_weights(model, spec)
    wfloat = {k: v[0] for k, v in wfloat.items()}
    depth = len(model.blocks)
    fp = FloatPolicy()
    xq = embed_stream(model, spec, pixels, FakeQuantPolicy(plan), torch.float64).float()
    xf = embed_stream(model, spec, pixels, fp, torch.float32)
    log = {}
    for i, blk in enumerate(tqdm(model.blocks, desc="adfq: reconstruction", file=sys.stderr,
                                 disable=not progress, leave=False)):
        b = f"blocks.{i}"
        with torch.no_grad():
            yf, sf = msa_forward(blk, b, xf, fp)
            midf = xf + yf
        log[f"{b}.attn"] = _tune_module("msa", blk, b, plan, wfloat, xq, (yf, sf), cfg, gen)
        with torch.no_grad():
            yq, _ = msa_forward(blk, b, xq.double(), FakeQuantPolicy(plan))
            midq = FakeQuantPolicy(plan).residual(f"{b}.norm2.in", xq.double(), yq, f"{b}.norm1.in",
                                                  f"{b}.attn.proj.out")
            outf = midf + mlp_forward(blk, b, midf, fp)
        log[f"{b}.mlp"] = _tune_module("mlp", blk, b, plan, wfloat, midq.float(), outf - midf, cfg, gen)
        with torch.no_grad():
            _, xq = block_forward(blk, i, depth, xq.double(), FakeQuantPolicy(plan))
            xq, xf = xq.float(), outf
    return log


# ------------------------------------------------------------------ the method

def layer_weights_fc2(model, gelu_point: str) -> np.ndarray:
    """Float fc2 weight [D, hidden] of the block whose GELU output is ``gelu_point``."""
    return model.blocks[int(gelu_point.split(".")[1])].mlp.fc2.weight.detach().double().numpy()


@torch.no_grad()
def _record(model, spec, pixels: np.ndarray, points: set[str], batch: int = 8) -> dict[str, torch.Tensor]:
    """Strided samples (at most ``_FIT_ROWS`` tokens per point) of float activations at ``points``."""
    got: dict[str, list[torch.Tensor]] = {p: [] for p in points}

    def cb(name, x):
        if name in got:
            got[name].append(x.detach().double().reshape(-1, x.shape[-1]))

    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))
        vit_forward(model, spec, x, RecordingPolicy(cb), dtype=torch.float32)
    out = {}
    for p, parts in got.items():
        v = torch.cat(parts)
        out[p] = v[:: max(1, len(v) // _FIT_ROWS)]
    return out


def calibrate_adfq(model, spec, pixels: np.ndarray, cfg: BitConfig, act_observer: str = "minmax",
                   progress: bool = True, attn: str = "auto", outliers: bool = False,
                   outlier_fraction: float = OUTLIER_FRACTION, recon: ReconConfig | None = ReconConfig(),
                   gelu: str = "auto", method: str | None = None) -> QuantPlan:
    """ADFQ-ViT plan: FQ-ViT baseline, Shift-Log2 GELU outputs, optional per-patch
    outlier-aware LayerNorm outputs (not lowerable), then module-wise reconstruction
    (``recon=None`` skips it).

    ``gelu``: ``"auto"`` takes Shift-Log2 in the blocks where it causes a smaller fc2-output
    error on the calibration set than the baseline's uniform quantizer; ``"log2"`` everywhere;
    ``"uniform"`` nowhere.
    """
    if gelu not in ("auto", "log2", "uniform"):
        raise ValueError(f"unknown GELU quantizer choice {gelu!r} (auto | log2 | uniform)")
    method = method or ("adfq-outlier" if outliers else "adfq")
    plan = calibrate_fqvit(model, spec, pixels, cfg, act_observer, progress=progress, method=method, attn=attn)
    depth = len(model.blocks)
    gelu_pts = {f"blocks.{i}.mlp.gelu.out" for i in range(depth)}
    ln_pts = {f"blocks.{i}.{n}.out" for i in range(depth) for n in ("norm1", "norm2")} if outliers else set()
    samples = _record(model, spec, pixels, gelu_pts | ln_pts)
    chosen = []
    for p in sorted(gelu_pts):
        w = torch.from_numpy(layer_weights_fc2(model, p))
        cand, err = fit_shift_log2(samples[p], w)
        uni = output_error(samples[p], plan.acts[p].fake(samples[p]), w)
        if gelu == "log2" or gelu == "auto" and err <= uni:
            plan.acts[p] = cand
            chosen.append(p)
    plan.notes["shift_log2_points"] = len(chosen)
    for p in sorted(ln_pts):
        plan.acts[p] = outlier_quant(samples[p], plan.acts[p].bits, outlier_fraction)
    if outliers:
        plan.notes["outlier_fraction"] = float(outlier_fraction)
        plan.notes["unmappable"] = OUTLIER_REFUSAL
    if recon is not None and recon.steps > 0:
        log = reconstruct_plan(model, spec, plan, pixels, recon, progress)
        plan.notes["recon_steps"] = recon.steps
        plan.notes["recon_modules_kept"] = sum(v["kept"] for v in log.values())
        plan.notes["recon_loss_before"] = float(np.mean([v["before"] for v in log.values()]))
        plan.notes["recon_loss_after"] = float(np.mean([min(v["before"], v["after"]) for v in log.values()]))
    return plan

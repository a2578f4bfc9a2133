"""FQ-ViT baseline calibration: MinMax/percentile ranges, PTF LayerNorm inputs, LIS attention.

Weights are symmetric per output channel. Activation roles (see :func:`act_role`):
LayerNorm inputs (the residual stream) get Power-of-Two-Factor quantizers at the
residual width; inputs of Linear layers are asymmetric per tensor (their zero point
folds into the bias); Q, K, V are symmetric (they are operands of activation ×
activation products); the outputs of proj / fc2 are symmetric per channel at the
residual width (their per-channel scales cost nothing: the requantizer is per column);
logits are 16-bit. Attention scores and probabilities have the fixed encodings of the
integer spec (score·log2 e at 2**-8, 4-bit log2 codes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from calib.forward import FloatPolicy, activation_points, folded_patch_embed, linear_layers, vit_forward
from calib.observers import PTFErrorAccumulator, RangeObserver, asymmetric_quant, symmetric_quant
from calib.plan import SUPPORTED_BITS, BitsError, QuantPlan, quantize_weight

__all__ = ["BitConfig", "act_role", "layer_module", "collect_ranges", "calibrate_fqvit",
           "layer_weights", "RecordingPolicy"]

LOGIT_BITS = 16
#: ``--attn auto`` keeps 4-bit log2 attention unless uniform 8-bit probabilities raise the
#: calibration-set logit cosine to the float model by more than this
ATTN_AUTO_COSINE_GAIN = 0.02
#: percentile of the "percentile" activation observer (FQ-ViT uses 99.99 at the top)
PERCENTILE = 99.99


@dataclass(frozen=True)
class BitConfig:
    """Bit widths: per block module (weights, activations), the residual stream, and the edges."""

    module_bits: dict = field(default_factory=dict)
    res_bits: int = 8
    edge_bits: int = 8

    @classmethod
    def uniform(cls, depth: int, w_bits: int, a_bits: int | None = None, res_bits: int = 8) -> "BitConfig":
        a_bits = w_bits if a_bits is None else a_bits
        for b in (w_bits, a_bits):
            if b not in SUPPORTED_BITS:
                raise BitsError(f"unsupported bit width {b}: choose from {', '.join(map(str, SUPPORTED_BITS))}")
        mb = {}
        for i in range(depth):
            mb[f"blocks.{i}.attn"] = (w_bits, a_bits)
            mb[f"blocks.{i}.mlp"] = (w_bits, a_bits)
        return cls(mb, max(res_bits, a_bits), 8)


def layer_module(name: str) -> str | None:
    """The mixed-precision module a weight layer or activation point belongs to (None: edge)."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return None
    blk = f"blocks.{parts[1]}"
    if parts[2] == "attn" or parts[2] == "norm1" and parts[3] == "out":
        return f"{blk}.attn"
    if parts[2] == "mlp" or parts[2] == "norm2" and parts[3] == "out":
        return f"{blk}.mlp"
    return None


def act_role(point: str) -> str:
    """How an activation point is quantized: ptf | asym | sym | sym_channel | logits."""
    if point.endswith("norm1.in") or point.endswith("norm2.in") or point == "norm.in":
        return "ptf"
    if point.endswith((".attn.q", ".attn.k", ".attn.v")):
        return "sym"
    if point.endswith(("attn.proj.out", "mlp.fc2.out")):
        return "sym_channel"
    if point == "head.out":
        return "logits"
    return "asym"


def point_bits(point: str, cfg: BitConfig) -> int:
    role = act_role(point)
    if role in ("ptf", "sym_channel"):
        return cfg.res_bits
    if role == "logits":
        return LOGIT_BITS
    mod = layer_module(point)
    return cfg.edge_bits if mod is None else cfg.module_bits[mod][1]


def layer_weights(model, spec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Float (weight [out, in], bias [out]) of every weight layer, patch embedding folded."""
    out = {}
    w, b = folded_patch_embed(model, spec)
    out["patch_embed"] = (w.numpy(), b.numpy())
    for i, blk in enumerate(model.blocks):
        d = blk.attn.qkv.weight.shape[1]
        qw, qb = blk.attn.qkv.weight.detach().double().numpy(), blk.attn.qkv.bias.detach().double().numpy()
        for j, t in enumerate("qkv"):
            out[f"blocks.{i}.attn.{t}"] = (qw[j * d:(j + 1) * d], qb[j * d:(j + 1) * d])
        for n, mod in (("attn.proj", blk.attn.proj), ("mlp.fc1", blk.mlp.fc1), ("mlp.fc2", blk.mlp.fc2)):
            out[f"blocks.{i}.{n}"] = (mod.weight.detach().double().numpy(), mod.bias.detach().double().numpy())
    out["head"] = (model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy())
    return out


class RecordingPolicy(FloatPolicy):
    """Float inference that hands every activation point to a callback."""

    def __init__(self, callback):
        self.callback = callback

    def act(self, name, x):
        self.callback(name, x)
        return x


def _batches(pixels: np.ndarray, batch: int):
    for i in range(0, len(pixels), batch):
        yield torch.from_numpy(np.asarray(pixels[i:i + batch], np.float64))


@torch.no_grad()
def collect_ranges(model, spec, pixels, batch: int = 8, progress: bool = True, desc: str = "ranges",
                   percentile: float | None = None):
    """Pass over the calibration images: a :class:`RangeObserver` per activation point."""
    obs: dict[str, RangeObserver] = {}

    def cb(name, x):
        obs.setdefault(name, RangeObserver(percentile)).update(x)

    for x in tqdm(list(_batches(pixels, batch)), desc=desc, file=sys.stderr, disable=not progress, leave=False):
        vit_forward(model, spec, x, RecordingPolicy(cb), dtype=torch.float32)
    return obs


def logit_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    return float((num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)).mean())


def choose_attention(model, spec, plan: QuantPlan, pixels: np.ndarray, attn: str,
                     min_gain: float = ATTN_AUTO_COSINE_GAIN) -> dict:
    """Set ``plan.attn_modes``: the requested encoding, or for ``auto`` the cheaper 4-bit
    log2 codes unless 8-bit uniform probabilities bring the calibration logits closer to
    the float model's by more than ``min_gain`` (logit cosine)."""
    from calib.fakequant import fakequant_logits
    from vit2hw.pipeline import fp_logits

    depth = len(model.blocks)
    if attn not in ("auto", "log2", "uniform"):
        raise ValueError(f"unknown attention encoding {attn!r} (auto | log2 | uniform)")
    if attn != "auto":
        plan.attn_modes = {f"blocks.{i}.attn": attn for i in range(depth)}
        return {"attn": attn}
    fp = fp_logits(model, spec, pixels, progress=False)
    cos = {}
    for mode in ("log2", "uniform"):
        plan.attn_modes = {f"blocks.{i}.attn": mode for i in range(depth)}
        cos[mode] = logit_cosine(fakequant_logits(model, spec, plan, pixels), fp)
    chosen = "uniform" if cos["uniform"] - cos["log2"] > min_gain else "log2"
    plan.attn_modes = {f"blocks.{i}.attn": chosen for i in range(depth)}
    return {"attn": chosen, "attn_cosine_log2": cos["log2"], "attn_cosine_uniform": cos["uniform"]}


@torch.no_grad()
def calibrate_fqvit(model, spec, pixels: np.ndarray, cfg: BitConfig, act_observer: str = "minmax",
                    batch: int = 8, progress: bool = True, method: str = "fqvit",
                    attn: str = "auto", attn_gain: float = ATTN_AUTO_COSINE_GAIN) -> QuantPlan:
    """FQ-ViT baseline plan from float activations on the calibration ``pixels``."""
    if act_observer not in ("minmax", "percentile"):
        raise ValueError(f"unknown activation observer {act_observer!r} (minmax | percentile)")
    depth = len(model.blocks)
    obs = collect_ranges(model, spec, pixels, batch, progress, desc=f"calibrate {method}: ranges",
                         percentile=PERCENTILE if act_observer == "percentile" else None)
    ptf_points = [p for p in activation_points(depth) if act_role(p) == "ptf"]
    ptf = {p: PTFErrorAccumulator(float(np.abs(obs[p].range()).max()), cfg.res_bits) for p in ptf_points}

    def cb(name, x):
        if name in ptf:
            ptf[name].update(x)

    for x in tqdm(list(_batches(pixels, batch)), desc=f"calibrate {method}: PTF", file=sys.stderr,
                  disable=not progress, leave=False):
        vit_forward(model, spec, x, RecordingPolicy(cb), dtype=torch.float32)

    plan = QuantPlan(spec.name, method, cfg.res_bits, dict(cfg.module_bits))
    for p in activation_points(depth):
        role, bits, o = act_role(p), point_bits(p, cfg), obs[p]
        if role == "ptf":
            plan.acts[p] = ptf[p].result()
        elif role == "sym":
            lo, hi = o.range(act_observer)
            plan.acts[p] = symmetric_quant(max(abs(lo), abs(hi)), bits)
        elif role == "sym_channel":
            plan.acts[p] = symmetric_quant(np.maximum(np.abs(o.cmin), np.abs(o.cmax)), bits)
        elif role == "logits":
            plan.acts[p] = symmetric_quant(1.25 * max(abs(o.cmin.min()), abs(o.cmax.max())), bits)
        else:
            plan.acts[p] = asymmetric_quant(*o.range(act_observer), bits)
    for name, (w, b) in layer_weights(model, spec).items():
        mod = layer_module(name)
        wb = cfg.edge_bits if mod is None else cfg.module_bits[mod][0]
        plan.weights[name] = quantize_weight(w, wb)
        plan.biases[name] = b.copy()
    plan.notes["act_observer"] = act_observer
    plan.notes["calib_images"] = int(len(pixels))
    plan.notes.update(choose_attention(model, spec, plan, pixels, attn, attn_gain))
    return plan

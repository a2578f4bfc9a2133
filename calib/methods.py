"""Calibration methods by name: what each does, whether it maps to the integer hardware."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from calib.fqvit import ATTN_AUTO_COSINE_GAIN, BitConfig, calibrate_fqvit
from calib.plan import SUPPORTED_BITS, BitsError, QuantPlan

__all__ = ["Method", "METHODS", "get_method", "run_method", "parse_bits", "UnknownMethodError",
           "default_method", "validate_bits", "format_method_table"]


class UnknownMethodError(ValueError):
    """No calibration method of that name."""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    hardware_mappable: bool
    run: Callable[..., QuantPlan]
    mixed: bool = False
    #: whether the method also takes one uniform width (8, w4a8, ...)
    uniform: bool = True


def parse_bits(text: str, depth: int) -> BitConfig:
    """``8`` / ``6`` / ``4`` (weights and activations) or ``w4a8`` → a uniform :class:`BitConfig`."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+)", t) or re.fullmatch(r"w(\d+)a(\d+)", t)
    if not m:
        raise BitsError(f"cannot parse bit widths {text!r}: use 8, 6, 4, wXaY (e.g. w4a8) or mixed")
    w = int(m.group(1))
    a = int(m.group(2)) if m.lastindex == 2 else w
    for b in (w, a):
        if b not in SUPPORTED_BITS:
            raise BitsError(f"unsupported bit width {b} in {text!r}: weights and activations take "
                            f"{', '.join(map(str, SUPPORTED_BITS))} bits")
    return BitConfig.uniform(depth, w, a)


def _fqvit(model, spec, pixels, bits: str, act_observer="minmax", progress=True, attn="auto", **_):
    if str(bits).lower() == "mixed":
        raise BitsError("method fqvit uses one uniform width; --bits mixed needs a mixed-precision method")
    return calibrate_fqvit(model, spec, pixels, parse_bits(bits, len(model.blocks)), act_observer,
                           progress=progress, method="fqvit", attn=attn)


def _mixed(model, spec, pixels, bits: str, act_observer="minmax", progress=True, attn="auto", budget=None,
           refine=None, act_bits=8, name="mixed", bias_correction=False, attn_gain=0.0, **_):
    from calib.mixed import calibrate_mixed
    if str(bits).strip().lower() != "mixed":
        raise BitsError(f"method {name} only allocates mixed widths (--bits mixed); uniform widths are fqvit's")
    if refine is None and bias_correction:
        from calib.bias_correction import correct_biases

        def refine(plan):
            return correct_biases(model, spec, pixels, plan)
    return calibrate_mixed(model, spec, pixels, budget, act_observer, progress=progress, attn=attn,
                           method=name, act_bits=act_bits, refine=refine, attn_gain=attn_gain)


def _mixed_wa(*args, **opts):
    return _mixed(*args, **{"attn_gain": ATTN_AUTO_COSINE_GAIN, **opts, "act_bits": None, "name": "mixed-wa"})


def _adfq(model, spec, pixels, bits: str, act_observer="minmax", progress=True, attn="auto", outliers=False,
          recon_steps=None, **_):
    from calib.adfq import ReconConfig, calibrate_adfq
    name = "adfq-outlier" if outliers else "adfq"
    if str(bits).lower() == "mixed":
        raise BitsError(f"method {name} uses one uniform width; --bits mixed needs a mixed-precision method")
    return calibrate_adfq(model, spec, pixels, parse_bits(bits, len(model.blocks)), act_observer,
                          progress=progress, attn=attn, outliers=outliers, method=name,
                          recon=ReconConfig() if recon_steps is None else ReconConfig(steps=recon_steps))


def _adfq_outlier(*args, **opts):
    return _adfq(*args, **{**opts, "outliers": True})


def _ptq4vit(model, spec, pixels, bits: str, act_observer="minmax", progress=True, attn="auto", budget=None,
             **opts):
    from calib.similarity import calibrate_ptq4vit
    if str(bits).strip().lower() == "mixed":
        raise BitsError("method ptq4vit uses one uniform width; --bits mixed needs a mixed-precision method")
    return calibrate_ptq4vit(model, spec, pixels, parse_bits(bits, len(model.blocks)), act_observer,
                             progress=progress, attn=attn, **opts)


METHODS: dict[str, Method] = {
    "fqvit": Method("fqvit", "FQ-ViT baseline: MinMax (or percentile) ranges, per-channel weights, "
                    "PTF LayerNorm inputs, 4-bit Log-Int-Softmax, GELU lookup table", True, _fqvit),
    "mixed": Method("mixed", "FQ-ViT baseline quantizers; --bits mixed: per-block MSA/MLP weight widths "
                    "from {4,6,8} by nuclear-norm sensitivity, least-sensitivity Pareto point within --budget "
                    "average weight bits; activations 8-bit; --attn auto takes whichever probability encoding "
                    "has the higher calibration logit cosine", True, _mixed, mixed=True, uniform=False),
    "mixed-wa": Method("mixed-wa", "as mixed, but each module's GEMM inputs take its weight width (W = A "
                       "per module, as in Liu et al. 2021); --attn auto as fqvit", True, _mixed_wa, mixed=True,
                       uniform=False),
    "adfq": Method("adfq", "ADFQ-ViT, hardware-mappable part: Shift-Log2 post-GELU codes (shift-mode fc2) "
                   "where they beat uniform, module-wise reconstruction of scales with attention-score loss",
                   True, _adfq),
    "adfq-outlier": Method("adfq-outlier", "adfq plus per-patch outlier-aware post-LayerNorm quantizer (float "
                           "outliers, run-time per-token scales): fake-quant accuracy only, cannot be lowered",
                           False, _adfq_outlier),
    "ptq4vit": Method("ptq4vit", "fqvit baseline, then per-layer similarity-aware search of weight/input "
                      "intervals, ranking-aware q/k search, bias correction (Liu et al. 2021)", True, _ptq4vit),
}


def default_method(bits: str) -> str:
    """The method used when ``--method`` is not given."""
    return "mixed" if str(bits).strip().lower() == "mixed" else "fqvit"


def validate_bits(bits: str, depth: int, method: str, **opts) -> None:
    """Reject impossible bit requests before any work is done."""
    if str(bits).strip().lower() == "mixed":
        if not get_method(method).mixed:
            raise BitsError(f"method {method} does not do mixed precision; drop --bits mixed or choose "
                            f"one of: {', '.join(m.name for m in METHODS.values() if m.mixed) or 'none yet'}")
        if opts.get("budget") is not None:
            from calib.mixed import check_budget
            check_budget(opts["budget"])
        return
    if opts.get("budget") is not None:
        raise BitsError("--budget applies only to --bits mixed")
    if not get_method(method).uniform:
        raise BitsError(f"method {method} only does --bits mixed; for uniform widths choose one of: "
                        f"{', '.join(m.name for m in METHODS.values() if m.uniform)}")
    parse_bits(bits, depth)


def format_method_table() -> str:
    rows = [("method", "hardware", "mixed", "what it does")]
    for m in METHODS.values():
        rows.append((m.name, "yes" if m.hardware_mappable else "no", "yes" if m.mixed else "no", m.summary))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}") from None


def run_method(name: str, model, spec, pixels, bits: str, **opts) -> QuantPlan:
    return get_method(name).run(model, spec, pixels, bits, **opts)

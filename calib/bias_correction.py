"""Bias correction (seed paper, after Nagel et al.): remove each Linear layer's mean output error.

Quantizing a layer's weights and input shifts the mean of its outputs:
E[W_q·x_q] ≠ E[W·x]. That per-output-channel shift is measured on the calibration
images (over every token of every image) and subtracted from the layer's float bias,
which lowering turns into the int32 bias, so the correction costs nothing at run time.

The pass is sequential: ``x`` is the layer's input as the quantized network (with
every earlier layer already corrected) produces it, ``x_q`` that input after its
quantizer, and the reference is the float layer on the same ``x`` with its float
bias. After correction the per-channel mean of ``(W_q·x_q + b') − (W·x + b)`` is zero
on the calibration set.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from calib.fqvit import layer_weights
from calib.plan import QuantPlan
from calib.sequential import Hook, linear_inputs, patch_input, run_sequential

__all__ = ["output_error", "correction_hooks", "correct_patch_embed", "correct_biases", "mean_output_errors"]


def output_error(x: torch.Tensor, x_q: torch.Tensor, w: np.ndarray, b: np.ndarray, plan: QuantPlan,
                 layer: str) -> np.ndarray:
    """Per-output-channel mean of (quantized layer on ``x_q``) − (float layer on ``x``).

    A Linear layer commutes with the mean, so E[W_q·x_q − W·x] = W_q·E[x_q] − W·E[x]:
    two matrix-vector products instead of two full GEMMs over every token."""
    mx = x.reshape(-1, x.shape[-1]).double().mean(0).numpy()
    mxq = x_q.reshape(-1, x_q.shape[-1]).double().mean(0).numpy()
    diff = plan.weights[layer].dequant() @ mxq - np.asarray(w, np.float64) @ mx
    return diff + np.asarray(plan.biases[layer], np.float64) - b


def _correct(plan: QuantPlan, fp: dict, layers: list[str], x: torch.Tensor, x_q: torch.Tensor) -> None:
    for layer in layers:
        w, b = fp[layer]
        plan.biases[layer] = np.asarray(plan.biases[layer], np.float64) - output_error(x, x_q, w, b, plan, layer)


def correction_hooks(plan: QuantPlan, fp: dict, depth: int) -> dict[str, list[Hook]]:
    """Hooks (for :func:`calib.sequential.run_sequential`) correcting every layer after the
    patch embedding, each with the plan's quantizers as they are when its input arrives."""
    def hook(point, x):
        _correct(plan, fp, linear_inputs(depth)[point], x, plan.acts[point].fake(x))
    return {p: [hook] for p in linear_inputs(depth)}


def correct_patch_embed(spec, pixels: np.ndarray, plan: QuantPlan, fp: dict) -> None:
    """The patch embedding reads exact pixels: its error is the weight quantization alone."""
    x = patch_input(spec, pixels)
    _correct(plan, fp, ["patch_embed"], x, x)


def correct_biases(model, spec, pixels: np.ndarray, plan: QuantPlan) -> QuantPlan:
    """A copy of ``plan`` with every Linear layer's bias corrected on the calibration ``pixels``."""
    plan = copy.deepcopy(plan)
    fp = layer_weights(model, spec)
    correct_patch_embed(spec, pixels, plan, fp)
    run_sequential(model, spec, pixels, plan, correction_hooks(plan, fp, len(model.blocks)))
    plan.notes["bias_correction"] = "on"
    return plan


def mean_output_errors(model, spec, pixels: np.ndarray, plan: QuantPlan) -> dict[str, np.ndarray]:
    """Layer → per-channel mean output error of ``plan`` in its own sequential pass (no edits)."""
    fp = layer_weights(model, spec)
    errs = {}
    x = patch_input(spec, pixels)
    w, b = fp["patch_embed"]
    errs["patch_embed"] = output_error(x, x, w, b, plan, "patch_embed")

    def hook(point, x):
        x_q = plan.acts[point].fake(x)
        for layer in linear_inputs(len(model.blocks))[point]:
            w, b = fp[layer]
            errs[layer] = output_error(x, x_q, w, b, plan, layer)

    run_sequential(model, spec, pixels, plan, {p: [hook] for p in linear_inputs(len(model.blocks))})
    return errs

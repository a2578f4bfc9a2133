"""The driver's steps: load a model, calibrate it into a QuantizedGraph, evaluate it.

Each step consumes the artifact of the one before (model → plan → graph → metrics);
the CLI strings them together. This module is the one place in ``vit2hw`` that
imports ``calib``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vit2hw.graph import QuantizedGraph
from vit2hw.reference import run_graph

__all__ = ["QuantResult", "graph_input", "quantize_model", "evaluate", "top1"]


@dataclass
class QuantResult:
    plan: object
    #: None for a method that is not hardware-mappable (fake-quant only); ``unavailable`` says why
    graph: QuantizedGraph | None
    unavailable: str | None = None


def graph_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels → the graph's signed input codes (zero point −128)."""
    return np.asarray(images, np.int64) - 128


def quantize_model(model, spec, calib_images: np.ndarray, bits: str, method: str = "fqvit",
                   act_observer: str = "minmax", progress: bool = True, **method_opts) -> QuantResult:
    """Calibrate ``model`` on ``calib_images`` with ``method`` and lower it to integers
    (a method that is not hardware-mappable gets no graph, and the lowering's refusal)."""
    from calib.lower import LoweringError, lower_plan
    from calib.methods import get_method, run_method

    plan = run_method(method, model, spec, calib_images, bits, act_observer=act_observer,
                      progress=progress, **method_opts)
    try:
        return QuantResult(plan, lower_plan(plan, model, spec))
    except LoweringError as exc:
        if get_method(method).hardware_mappable:
            raise
        return QuantResult(plan, None, str(exc))


def _batched(n: int, batch: int, desc: str, progress: bool):
    starts = range(0, n, batch)
    return tqdm(starts, desc=desc, file=sys.stderr, disable=not progress, leave=False,
                total=len(starts), unit="batch")


@torch.no_grad()
def fp_logits(model, spec, images: np.ndarray, batch: int = 25, progress: bool = True) -> np.ndarray:
    from calib.forward import vit_forward
    out = [vit_forward(model, spec, torch.from_numpy(images[i:i + batch].astype(np.float32)),
                       dtype=torch.float32).numpy()
           for i in _batched(len(images), batch, "float model", progress)]
    return np.concatenate(out).astype(np.float64)


def integer_logits(graph: QuantizedGraph, images: np.ndarray, batch: int = 25,
                   progress: bool = True) -> np.ndarray:
    """Integer reference logits (dequantized) [N, classes]."""
    out_name = graph.outputs[0]
    scale = graph.tensors[out_name].scale_array
    codes = [run_graph(graph, graph_input(images[i:i + batch]))[out_name][:, 0]
             for i in _batched(len(images), batch, "integer reference", progress)]
    return np.concatenate(codes).astype(np.float64) * scale


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)


def evaluate(model, spec, result: QuantResult, images: np.ndarray, labels: np.ndarray,
             batch: int = 25, progress: bool = True) -> dict:
    """FP, fake-quant and integer top-1 (percent), their agreement and logit cosine
    (integer metrics None, with ``integer_unavailable``, when the result has no graph)."""
    from calib.fakequant import fakequant_logits

    fp = fp_logits(model, spec, images, batch, progress)
    fq = fakequant_logits(model, spec, result.plan, images, batch)
    if result.graph is None:
        return {"n_images": int(len(images)), "fp_top1": top1(fp, labels), "fakequant_top1": top1(fq, labels),
                "integer_top1": None, "agreement": None, "logit_cosine": None, "fakequant_logit_cosine": None,
                "integer_unavailable": result.unavailable}
    it = integer_logits(result.graph, images, batch, progress)
    return {
        "n_images": int(len(images)),
        "fp_top1": top1(fp, labels),
        "fakequant_top1": top1(fq, labels),
        "integer_top1": top1(it, labels),
        "agreement": float((it.argmax(1) == fq.argmax(1)).mean()),
        "logit_cosine": float(_cosine(it, fp).mean()),
        "fakequant_logit_cosine": float(_cosine(it, fq).mean()),
    }

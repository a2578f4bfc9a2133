"""One sequential pass of the fake-quant model whose hooks may edit the plan on the way.

Layer-wise calibration (similarity search, bias correction) wants every layer's input
as the *quantized* network produces it, with all earlier layers already refined. A
single fake-quant forward gives exactly that if the policy lets a hook look at each
activation point just before it is quantized and change the plan there: everything
downstream of the hook then runs with the edited quantizers. One pass over the
calibration batch replaces the depth-many forwards a layer-by-layer loop would need.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from calib.fakequant import FakeQuantPolicy
from calib.forward import patchify, vit_forward

__all__ = ["SequentialPolicy", "run_sequential", "linear_inputs", "patch_input", "Hook"]

#: hook(point, x): ``x`` is the float activation at ``point`` before its quantizer
Hook = Callable[[str, torch.Tensor], None]


def linear_inputs(depth: int) -> dict[str, list[str]]:
    """Activation point → the Linear layers it feeds (patch_embed reads raw pixels)."""
    out = {}
    for i in range(depth):
        b = f"blocks.{i}"
        out[f"{b}.norm1.out"] = [f"{b}.attn.q", f"{b}.attn.k", f"{b}.attn.v"]
        out[f"{b}.attn.out"] = [f"{b}.attn.proj"]
        out[f"{b}.norm2.out"] = [f"{b}.mlp.fc1"]
        out[f"{b}.mlp.gelu.out"] = [f"{b}.mlp.fc2"]
    out["norm.out"] = ["head"]
    return out


def patch_input(spec, pixels: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """The patch embedding's exact input: raw pixels as patches [N, tokens, C·p·p]."""
    return patchify(torch.from_numpy(np.asarray(pixels, np.float64)).to(dtype), spec.patch_size)


class SequentialPolicy(FakeQuantPolicy):
    """Fake quantization that first hands each hooked point's float activation to its hooks."""

    def __init__(self, plan, hooks: dict[str, list[Hook]]):
        super().__init__(plan)
        self.hooks = hooks

    def observe(self, name, x):
        for hook in self.hooks.get(name, ()):
            hook(name, x)

    def weight(self, name, w):
        # no cache: a hook may have replaced the layer's quantizer since the last call
        return torch.from_numpy(self.plan.weights[name].dequant()).to(w.dtype)


@torch.no_grad()
def run_sequential(model, spec, pixels: np.ndarray, plan, hooks: dict[str, list[Hook]],
                   dtype=torch.float32) -> np.ndarray:
    """One fake-quant forward of all ``pixels`` as one batch (statistics see every image
    at once); hooks edit ``plan`` in place. Returns the logits. float32 by default: the pass
    only feeds statistics, and it halves the cost of the calibration's largest step."""
    x = torch.from_numpy(np.asarray(pixels, np.float64))
    return vit_forward(model, spec, x, SequentialPolicy(plan, hooks), dtype=dtype).numpy()

"""One ViT forward pass with a pluggable quantization policy.

The float model, the activation observers and the fake-quant model all run this
single function, so the three can never differ in structure: only the policy
decides what happens at each named quantization point. Names follow the state-dict
(``blocks.3.attn.q``, ``blocks.3.mlp.fc1.out``, ...) and are the keys of a
:class:`calib.plan.QuantPlan`. LayerNorm, GELU and the residual adds own their output
point (the policy's ``layernorm``/``gelu``/``residual`` quantize it, by default through
``act``), so a policy can compute them from codes the way the integer graph does.

The patch embedding folds DeiT's input normalization into its weights, so the
forward consumes raw pixels: ``(p·pixel_scale − mean_c)/std_c`` is affine per input
channel and becomes part of the (quantized) linear layer. That is what makes the
integer graph start from uint8 pixels with no float preprocessing at run time.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FloatPolicy", "float_layernorm", "vit_forward", "msa_forward", "mlp_forward", "block_forward", "folded_patch_embed", "activation_points", "linear_layers"]


class FloatPolicy:
    """The identity policy: plain float inference (optionally recording activations)."""

    def act(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        return w

    def bias(self, name: str, b: torch.Tensor) -> torch.Tensor:
        return b

    def scores(self, name: str, s: torch.Tensor, head_dim: int) -> torch.Tensor:
        return s

    def softmax(self, name: str, s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s, dim=-1)

    def layernorm(self, name: str, x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        """LayerNorm ``name`` of ``x``, passed through its output point ``name.out``."""
        return self.act(f"{name}.out", float_layernorm(x, ln))

    def gelu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """GELU ``name`` of ``x``, passed through its output point ``name.out``."""
        return self.act(f"{name}.out", F.gelu(x))

    def residual(self, name: str, a: torch.Tensor, b: torch.Tensor, a_point: str, b_point: str) -> torch.Tensor:
        """The residual add ``a + b`` (``a``/``b`` come from points ``a_point``/``b_point``) at point ``name``."""
        return self.act(name, a + b)


def float_layernorm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight.detach().to(x.dtype), ln.bias.detach().to(x.dtype), ln.eps)


def folded_patch_embed(model, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-embedding weight [D, C·p·p] and bias [D] acting on raw pixels (normalization folded in)."""
    w = model.patch_embed.proj.weight.detach().double()  # [D, C, p, p]
    b = model.patch_embed.proj.bias.detach().double()
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, -1, 1, 1)
    w_fold = w * spec.pixel_scale / std
    b_fold = b - (w * mean / std).sum(dim=(1, 2, 3))
    return w_fold.reshape(w.shape[0], -1), b_fold


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def linear_layers(model) -> list[str]:
    """Names of every weight layer of the quantized graph, in execution order."""
    names = ["patch_embed"]
    for i in range(len(model.blocks)):
        names += [f"blocks.{i}.attn.q", f"blocks.{i}.attn.k", f"blocks.{i}.attn.v",
                  f"blocks.{i}.attn.proj", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return names + ["head"]


def activation_points(depth: int) -> list[str]:
    """Names of every activation quantization point, in execution order."""
    pts = ["blocks.0.norm1.in"]
    for i in range(depth):
        b = f"blocks.{i}"
        pts += [f"{b}.norm1.out", f"{b}.attn.q", f"{b}.attn.k", f"{b}.attn.v", f"{b}.attn.out",
                f"{b}.attn.proj.out", f"{b}.norm2.in", f"{b}.norm2.out", f"{b}.mlp.fc1.out",
                f"{b}.mlp.gelu.out", f"{b}.mlp.fc2.out",
                f"blocks.{i + 1}.norm1.in" if i + 1 < depth else "norm.in"]
    return pts + ["norm.out", "head.out"]


def _split_qkv_weights(attn):
    d = attn.qkv.weight.shape[1]
    w, b = attn.qkv.weight, attn.qkv.bias
    return (w[:d], b[:d]), (w[d:2 * d], b[d:2 * d]), (w[2 * d:], b[2 * d:])


def msa_forward(blk, b: str, x: torch.Tensor, policy) -> tuple[torch.Tensor, torch.Tensor]:
    """MSA module of block ``b`` on its (already quantized) residual input: (proj output, scores)."""
    attn, dt = blk.attn, x.dtype
    h = policy.layernorm(f"{b}.norm1", x, blk.norm1)
    outs = []
    for tag, (w, bias) in zip("qkv", _split_qkv_weights(attn)):
        name = f"{b}.attn.{tag}"
        y = F.linear(h, policy.weight(name, w.detach().to(dt)), policy.bias(name, bias.detach().to(dt)))
        outs.append(policy.act(name, y))
    q, k, v = outs
    bsz, n, d = q.shape
    heads = attn.num_heads
    hd = d // heads
    qh, kh, vh = (t.reshape(bsz, n, heads, hd).transpose(1, 2) for t in (q, k, v))
    s = policy.scores(f"{b}.attn.scores", (qh @ kh.transpose(-2, -1)) * (hd ** -0.5), hd)
    p = policy.softmax(f"{b}.attn.probs", s)
    o = policy.act(f"{b}.attn.out", (p @ vh).transpose(1, 2).reshape(bsz, n, d))
    name = f"{b}.attn.proj"
    y = F.linear(o, policy.weight(name, attn.proj.weight.detach().to(dt)),
                 policy.bias(name, attn.proj.bias.detach().to(dt)))
    return policy.act(f"{b}.attn.proj.out", y), s


def mlp_forward(blk, b: str, x: torch.Tensor, policy) -> torch.Tensor:
    """MLP module of block ``b`` on its (already quantized) residual input: the fc2 output."""
    dt = x.dtype
    h = policy.layernorm(f"{b}.norm2", x, blk.norm2)
    y = F.linear(h, policy.weight(f"{b}.mlp.fc1", blk.mlp.fc1.weight.detach().to(dt)),
                 policy.bias(f"{b}.mlp.fc1", blk.mlp.fc1.bias.detach().to(dt)))
    y = policy.gelu(f"{b}.mlp.gelu", policy.act(f"{b}.mlp.fc1.out", y))
    y = F.linear(y, policy.weight(f"{b}.mlp.fc2", blk.mlp.fc2.weight.detach().to(dt)),
                 policy.bias(f"{b}.mlp.fc2", blk.mlp.fc2.bias.detach().to(dt)))
    return policy.act(f"{b}.mlp.fc2.out", y)


def block_forward(blk, i: int, depth: int, x: torch.Tensor, policy) -> tuple[torch.Tensor, torch.Tensor]:
    """One block as :func:`vit_forward` runs it: (MLP input, block output)."""
    b = f"blocks.{i}"
    y, _ = msa_forward(blk, b, x, policy)
    mid = policy.residual(f"{b}.norm2.in", x, y, f"{b}.norm1.in", f"{b}.attn.proj.out")
    nxt = f"blocks.{i + 1}.norm1.in" if i + 1 < depth else "norm.in"
    return mid, policy.residual(nxt, mid, mlp_forward(blk, b, mid, policy), f"{b}.norm2.in", f"{b}.mlp.fc2.out")



def vit_forward(model, spec, pixels: torch.Tensor, policy=None, dtype=torch.float64) -> torch.Tensor:
    """Logits of ``model`` on uint8-valued ``pixels`` [B, C, H, W] under ``policy``."""
    policy = policy or FloatPolicy()
    x = pixels.to(dtype)
    w_pe, b_pe = folded_patch_embed(model, spec)
    x = patchify(x, spec.patch_size)
    x = F.linear(x, policy.weight("patch_embed", w_pe.to(dtype)), policy.bias("patch_embed", b_pe.to(dtype)))
    cls = model.cls_token.detach().to(dtype).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + model.pos_embed.detach().to(dtype)
    depth = len(model.blocks)
    x = policy.act("blocks.0.norm1.in", x)
    for i, blk in enumerate(model.blocks):
        _, x = block_forward(blk, i, depth, x, policy)
    cls_tok = x[:, :1]
    h = policy.layernorm("norm", cls_tok, model.norm)
    logits = F.linear(h, policy.weight("head", model.head.weight.detach().to(dtype)),
                      policy.bias("head", model.head.bias.detach().to(dtype)))
    return policy.act("head.out", logits)[:, 0]


LOG2E = 1.0 / math.log(2.0)


def np_to_torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))

"""The float Vision Transformer (DeiT / timm architecture and state-dict keys).

This module is the float model that calibration observes and the integer graph is
built from, so its forward pass is written out operation by operation, in the order
the quantized graph will execute them:

* patch embedding: ``Conv2d(kernel = stride = patch)`` then flatten to tokens;
* prepend the class token, add the learned position embedding;
* ``depth`` pre-norm blocks: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``;
* final ``norm``, class-token readout, linear ``head``.

Attention: ``qkv`` Linear (with bias) -> split into q, k, v per head ->
``softmax(q @ k^T * head_dim**-0.5) @ v`` -> merge heads -> ``proj`` Linear.
LayerNorm uses ``eps = 1e-6`` and GELU is the exact (erf) form, as in DeiT, so the
official DeiT checkpoints load with ``strict=True`` and reproduce their accuracy.
No dropout or stochastic depth: this module is used for inference only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LN_EPS", "PatchEmbed", "Attention", "Mlp", "Block", "VisionTransformer"]

#: LayerNorm epsilon of DeiT / timm ViTs (the torch default 1e-5 would shift accuracy).
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens ``[B, num_patches, embed_dim]``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, H/p, W/p]
        return x.flatten(2).transpose(1, 2)  # [B, N, D], row-major patch order


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)  # [B, N, 3*C]; output channels ordered (q|k|v, head, head_dim)
        qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each [B, H, N, head_dim]
        scores = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, N, N]
        probs = scores.softmax(dim=-1)
        out = probs @ v  # [B, H, N, head_dim]
        out = out.transpose(1, 2).reshape(B, N, C)  # merge heads: channel = head*head_dim + d
        return self.proj(out)


class Mlp(nn.Module):
    """``fc1 -> GELU(erf) -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="none")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """DeiT-style ViT classifier.

    Parameters
    ----------
    img_size, patch_size, in_chans:
        Input geometry; the input is the normalized float image ``[B, in_chans, img, img]``.
    embed_dim, depth, num_heads, mlp_ratio:
        Transformer width, number of blocks, attention heads, MLP hidden = dim * ratio.
    num_classes:
        Width of the classification head.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized image -> final-norm token features ``[B, num_tokens, D]``."""
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized image ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.forward_features(x)[:, 0])

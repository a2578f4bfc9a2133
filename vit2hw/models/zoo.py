"""The model zoo: named ViT specifications and how to build them with weights.

A :class:`ModelSpec` is everything downstream stages need to know about a model
besides its weights: geometry, widths, the input normalization and the dataset it
classifies. :func:`create_model` builds the float :class:`VisionTransformer` and
loads weights:

* ``vit_digits`` ships a trained checkpoint in ``vit2hw/assets`` (produced by
  ``scripts/train_vit_digits.py``), used when no weights are given;
* the DeiT models use a checkpoint file given by the caller (the official DeiT
  ``.pth`` files load as they are). Without one they get a deterministic synthetic
  initialisation, fine for compiling and hardware checks but not for accuracy;
  ``allow_download=True`` first tries the official URL.
"""

from __future__ import annotations

import math
import socket
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vit2hw.checkpoint import extract_state_dict, load_weights
from vit2hw.models.vit import VisionTransformer

__all__ = [
    "ModelSpec",
    "UnknownModelError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_SEED",
    "DOWNLOAD_TIMEOUT_S",
    "list_models",
    "get_spec",
    "count_params",
    "build_model",
    "init_synthetic",
    "asset_path",
    "create_model",
    "format_model_table",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seed of the synthetic initialisation; a fixed seed makes synthetic models reproducible.
SYNTHETIC_SEED = 0
#: Socket timeout for weight downloads: machines without internet must fail fast, not hang.
DOWNLOAD_TIMEOUT_S = 10.0


class UnknownModelError(ValueError):
    """A model name that is not in the zoo."""


@dataclass(frozen=True)
class ModelSpec:
    """A ViT variant: architecture, input convention and where its weights come from.

    Parameters
    ----------
    name:
        Zoo name (``deit_tiny``, ``vit_digits``, ...).
    img_size, patch_size, in_chans:
        Square input of ``in_chans`` channels, cut into ``patch_size`` patches.
    embed_dim, depth, num_heads, mlp_ratio, num_classes:
        Transformer width, blocks, heads, MLP expansion and classifier width.
    mean, std, pixel_scale:
        Input normalization, per channel: ``(pixel * pixel_scale - mean) / std``
        where ``pixel`` is the raw stored integer (0..255 for photos, 0..16 for digits).
    dataset:
        What the classes are: ``"imagenet"`` (1000 ImageNet-1k classes) or ``"digits"``.
    description:
        One line for listings.
    default_weights:
        File name of a packaged checkpoint in ``vit2hw/assets``, or ``None``.
    download_url:
        URL of the official checkpoint, or ``None``.
    """

    name: str
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float
    dataset: Literal["imagenet", "digits"]
    description: str
    default_weights: str | None = None
    download_url: str | None = None

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def _deit(name: str, dim: int, heads: int, url: str, label: str) -> ModelSpec:
    return ModelSpec(
        name=name, img_size=224, patch_size=16, in_chans=3, embed_dim=dim, depth=12, num_heads=heads,
        mlp_ratio=4.0, num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD, pixel_scale=1 / 255,
        dataset="imagenet", description=f"{label} (patch 16, 224x224, ImageNet-1k)", download_url=url,
    )


_DEIT_URL = "https://dl.fbaipublicfiles.com/deit/"
_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _deit("deit_tiny", 192, 3, _DEIT_URL + "deit_tiny_patch16_224-a1311bcf.pth", "DeiT-Tiny"),
        _deit("deit_small", 384, 6, _DEIT_URL + "deit_small_patch16_224-cd65a155.pth", "DeiT-Small"),
        _deit("deit_base", 768, 12, _DEIT_URL + "deit_base_patch16_224-b5f2ef4d.pth", "DeiT-Base"),
        ModelSpec(
            # Digits are stored as 0..16; /16 maps them to [0, 1], then (x - 0.5) / 0.5 to [-1, 1].
            name="vit_digits", img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=3, num_heads=4,
            mlp_ratio=2.0, num_classes=10, mean=(0.5,), std=(0.5,), pixel_scale=1 / 16, dataset="digits",
            description="small ViT for scikit-learn's 8x8 digits (patch 2, 17 tokens), trained, packaged",
            default_weights="vit_digits.pth",
        ),
    )
}


def list_models() -> list[str]:
    """Names of all zoo models, in registry order (smallest DeiT first, then the rest)."""
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The spec of a zoo model; :class:`UnknownModelError` names the known ones."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(_SPECS)}") from None


def count_params(spec: ModelSpec) -> int:
    """Number of parameters of ``spec``'s model, computed from its widths."""
    d, h, p = spec.embed_dim, spec.mlp_hidden, spec.patch_size
    patch = spec.in_chans * p * p * d + d
    tokens = d + spec.num_tokens * d  # cls_token + pos_embed
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    return patch + tokens + spec.depth * block + 2 * d + d * spec.num_classes + spec.num_classes


def build_model(spec: ModelSpec) -> VisionTransformer:
    """The model of ``spec`` in eval mode, with torch's default (global-RNG) init."""
    return VisionTransformer(
        img_size=spec.img_size, patch_size=spec.patch_size, in_chans=spec.in_chans, embed_dim=spec.embed_dim,
        depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, num_classes=spec.num_classes,
    ).eval()


@torch.no_grad()
def init_synthetic(model: nn.Module, seed: int = SYNTHETIC_SEED) -> nn.Module:
    """Overwrite every parameter from a private ``torch.Generator(seed)``.

    Weights, class token and position embedding ~ truncated N(0, 0.02) as in DeiT's
    init; biases ~ N(0, 0.02) and LayerNorm gains ~ 1 + N(0, 0.1) instead of exact
    zeros / ones, so that synthetic models still exercise every bias and gain path of
    the integer pipeline. The result depends on ``seed`` only, never on global RNG state.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # deterministic registration order
        if isinstance(_owner(model, name), nn.LayerNorm):
            base = 1.0 if name.endswith("weight") else 0.0
            std = 0.1 if name.endswith("weight") else 0.02
            param.copy_(base + std * torch.randn(param.shape, generator=gen))
        elif name.endswith("bias"):
            param.copy_(0.02 * torch.randn(param.shape, generator=gen))
        else:
            param.copy_(_trunc_normal(param.shape, std=0.02, gen=gen))
    return model


def _trunc_normal(shape: torch.Size, std: float, gen: torch.Generator) -> torch.Tensor:
    """N(0, std) truncated to +-2 std, by inverse-CDF sampling (nn.init's version is ~10x slower on CPU)."""
    bound = math.erf(2 / math.sqrt(2))  # |2u - 1| limit that maps to +-2 std
    u = (torch.rand(shape, generator=gen) * 2 - 1) * bound
    return torch.erfinv(u) * (std * math.sqrt(2))


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    module_name = param_name.rpartition(".")[0]
    return model.get_submodule(module_name) if module_name else model


def asset_path(filename: str) -> Path:
    """Path of a file packaged in ``vit2hw/assets``."""
    return Path(str(resources.files("vit2hw") / "assets" / filename))


def _notice(message: str) -> None:
    print(f"vit2hw: {message}", file=sys.stderr)


def _download_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor] | None:
    """The official checkpoint of ``spec``, or ``None`` (with a notice) if it cannot be fetched."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        obj = torch.hub.load_state_dict_from_url(spec.download_url, map_location="cpu", weights_only=True, progress=False)
    except Exception as exc:  # URLError, timeouts, DNS, HTTP errors: all mean "offline"
        _notice(f"could not download {spec.name} weights from {spec.download_url} ({type(exc).__name__}: {exc})")
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return extract_state_dict(obj, source=f"downloaded checkpoint {spec.download_url}")


def create_model(
    name: str,
    weights: str | Path | None = None,
    allow_download: bool = False,
) -> VisionTransformer:
    """Build zoo model ``name`` in eval mode with weights.

    Parameters
    ----------
    name:
        A name from :func:`list_models`.
    weights:
        A checkpoint file (loaded strictly, see :mod:`vit2hw.checkpoint`);
        ``"synthetic"`` for the deterministic synthetic init; ``None`` for the
        default: the packaged checkpoint if the model has one, else (optionally) the
        official download, else the synthetic init with a notice on stderr.
    allow_download:
        With ``weights=None``, try the official URL first (short timeout; on any
        network failure falls back to the synthetic init with a notice).
    """
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG; keep it untouched
        model = build_model(spec)
    if weights == "synthetic":
        return init_synthetic(model)
    if weights is not None:
        return load_weights(model, weights)
    if spec.default_weights is not None:
        return load_weights(model, asset_path(spec.default_weights))
    if allow_download and spec.download_url is not None:
        state_dict = _download_state_dict(spec)
        if state_dict is not None:
            return load_weights(model, state_dict)
    _notice(
        f"{name}: no weights given, using a synthetic random init (seed {SYNTHETIC_SEED}); "
        f"accuracy figures are meaningless (pass a checkpoint file for real weights)"
    )
    return init_synthetic(model)


def _format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_model_table() -> str:
    """A plain-text table of the zoo, one row per model (for ``vit2hw models``)."""
    header = ("name", "params", "tokens", "dim", "depth", "heads", "dataset", "default weights")
    rows = [header]
    for spec in _SPECS.values():
        if spec.default_weights is not None:
            source = f"packaged ({spec.default_weights})"
        elif spec.download_url is not None:
            source = "checkpoint file / download, else synthetic"
        else:
            source = "synthetic"
        rows.append((
            spec.name, _format_count(count_params(spec)), str(spec.num_tokens), str(spec.embed_dim),
            str(spec.depth), str(spec.num_heads), spec.dataset, source,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

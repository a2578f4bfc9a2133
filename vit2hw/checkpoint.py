"""Read model checkpoints from disk and load them strictly, with one clear error.

Supported files:

* ``.pth`` / ``.pt`` / ``.bin`` (any name not ending in ``.safetensors``), read with
  ``torch.load(weights_only=True)``: ``{"model": state_dict}`` (official DeiT
  layout), ``{"state_dict": state_dict}`` (Lightning and others) or a plain state dict;
* ``.safetensors``.

Keys prefixed with ``module.`` (saved from ``DataParallel`` / DDP wrappers) are
unwrapped. :func:`load_weights` checks the whole state dict against the model before
touching it, so a failed load never leaves a half-loaded model behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "load_state_dict", "extract_state_dict", "check_compatible", "load_weights"]

#: Container keys under which checkpoints commonly nest the state dict, tried in order.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict", "module")
#: How many offending key names an error message shows per category.
_SHOW = 3


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... (+{len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor state dict inside a loaded checkpoint object.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` containers and a common
    ``module.`` key prefix. Raises :class:`CheckpointError` if no state dict is found.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict (expected a dict of tensors)")
    for key in _NESTED_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = _preview([str(k) for k in obj])
        raise CheckpointError(
            f"{source} contains no tensors (top-level keys: {keys}); expected a state dict, "
            f"or a dict with one under 'model' or 'state_dict'"
        )
    if len(tensors) != len(obj):
        others = _preview(sorted(str(k) for k in obj if k not in tensors))
        raise CheckpointError(f"{source}: state dict has non-tensor entries ({others})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; pass the path of a .pth or .safetensors file")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file (corrupted or truncated?): {exc}"
            ) from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip / weights_only errors all mean "unusable file"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {path} is not a torch checkpoint or is corrupted "
                f"(torch.load with weights_only=True failed: {reason})"
            ) from exc
    return extract_state_dict(obj, source=f"checkpoint {path}")


def check_compatible(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` exactly.

    Exactly means: the same key set and the same shape for every key. The message
    counts missing keys, unexpected keys and shape mismatches and names a few of each.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_preview(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) ({_preview(mismatched)})")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: " + "; ".join(problems)
            + ". Check that the checkpoint was trained for this model variant (embed dim, depth, classes)."
        )


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint file (or an in-memory state dict) into ``model`` strictly.

    The state dict is validated first; on any mismatch :class:`CheckpointError` is
    raised and ``model`` is left unchanged. Returns ``model``.
    """
    if isinstance(weights, Mapping):
        source = "state dict"
        state_dict = extract_state_dict(weights, source=source)
    else:
        source = f"checkpoint {weights}"
        state_dict = load_state_dict(weights)
    check_compatible(model, state_dict, source=source)
    model.load_state_dict(state_dict, strict=True)
    return model

"""Float inference over a :class:`~vit2hw.data.Dataset`: logits and top-1 accuracy.

Evaluation is deterministic (fixed batch order, no augmentation, eval mode), so an
accuracy recorded next to a checkpoint can be reproduced exactly on the same torch.
"""

from __future__ import annotations

import torch
from torch import nn

from vit2hw.data import Dataset, normalize
from vit2hw.models.zoo import ModelSpec

__all__ = ["predict_logits", "top1_correct", "top1_accuracy"]


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, spec: ModelSpec, batch_size: int = 50) -> torch.Tensor:
    """Float logits ``[N, num_classes]`` of ``model`` on ``data`` (normalized per ``spec``)."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model(normalize(data.images[i : i + batch_size], spec)) for i in range(0, len(data), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, spec.num_classes)


def top1_correct(model: nn.Module, data: Dataset, spec: ModelSpec, batch_size: int = 50) -> int:
    """Number of images whose arg-max logit is the label."""
    pred = predict_logits(model, data, spec, batch_size).argmax(dim=1)
    return int((pred == torch.as_tensor(data.labels)).sum())


def top1_accuracy(model: nn.Module, data: Dataset, spec: ModelSpec, batch_size: int = 50) -> float:
    """Top-1 accuracy in [0, 1]."""
    return top1_correct(model, data, spec, batch_size) / len(data)

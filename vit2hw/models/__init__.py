"""Float ViT models and the model zoo (names, specs, weights)."""

from vit2hw.models.vit import VisionTransformer
from vit2hw.models.zoo import (
    ModelSpec,
    UnknownModelError,
    build_model,
    count_params,
    create_model,
    format_model_table,
    get_spec,
    init_synthetic,
    list_models,
)

__all__ = [
    "VisionTransformer",
    "ModelSpec",
    "UnknownModelError",
    "build_model",
    "count_params",
    "create_model",
    "format_model_table",
    "get_spec",
    "init_synthetic",
    "list_models",
]

"""Shared fixtures: the trained vit_digits quantized once per session, real-data locations."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEIT_TINY = SHARED / "models" / "deit_tiny_patch16_224.pth"
SAMPLES = SHARED / "data" / "imagenet-samples"


def need_real_data():
    if not (DEIT_TINY.is_file() and SAMPLES.is_dir()):
        pytest.skip(f"real DeiT-Tiny weights / ImageNet samples not found under {SHARED}")


@pytest.fixture(scope="session")
def digits_model():
    from vit2hw.models.zoo import create_model, get_spec
    return create_model("vit_digits"), get_spec("vit_digits")


@pytest.fixture(scope="session")
def digits_q8(digits_model):
    """vit_digits calibrated at W8A8 with the default method on 32 train images."""
    from vit2hw.data import load_calib_data
    from vit2hw.pipeline import quantize_model
    model, spec = digits_model
    calib = load_calib_data(spec, None, 32).images
    return quantize_model(model, spec, calib, "8", "fqvit", progress=False)


@pytest.fixture(scope="session")
def digits_test():
    from vit2hw.data import load_digits_split
    return load_digits_split("test")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)

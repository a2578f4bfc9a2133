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
def digits_calib(digits_model):
    """The 32 vit_digits calibration images (from the train split)."""
    from vit2hw.data import load_calib_data
    return load_calib_data(digits_model[1], None, 32).images


@pytest.fixture(scope="session")
def digits_q8(digits_model, digits_calib):
    """vit_digits calibrated at W8A8 with the default method on 32 train images."""
    from vit2hw.pipeline import quantize_model
    model, spec = digits_model
    return quantize_model(model, spec, digits_calib, "8", "fqvit", progress=False)


@pytest.fixture(scope="session")
def digits_test():
    from vit2hw.data import load_digits_split
    return load_digits_split("test")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)

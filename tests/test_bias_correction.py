"""Bias correction (calib.bias_correction) on vit_digits at W4A4."""

import numpy as np
import pytest

from calib.bias_correction import correct_biases, mean_output_errors
from calib.fqvit import BitConfig, calibrate_fqvit


@pytest.fixture(scope="module")
def plans(digits_model):
    from vit2hw.data import load_calib_data
    model, spec = digits_model
    calib = load_calib_data(spec, None, 32).images
    base = calibrate_fqvit(model, spec, calib, BitConfig.uniform(len(model.blocks), 4, 4), progress=False)
    return calib, base, correct_biases(model, spec, calib, base)


def test_corrected_plan_has_zero_mean_output_error_per_channel(digits_model, plans):
    """Per layer and output channel, E[(W_q·x_q + b') − (W·x + b)] over the calibration tokens:
    about zero after correction, far below the uncorrected error."""
    model, spec = digits_model
    calib, base, corrected = plans
    before = mean_output_errors(model, spec, calib, base)
    after = mean_output_errors(model, spec, calib, corrected)
    assert set(after) == set(before) and len(after) == 2 + 6 * len(model.blocks)
    for layer in before:
        assert np.abs(after[layer]).max() < 1e-9, layer
    assert np.mean([np.abs(e).mean() for e in before.values()]) > 1e-3


def test_correction_generalizes_to_held_out_images(digits_model, plans, digits_test):
    model, spec = digits_model
    _, base, corrected = plans
    held = digits_test.images[:64]
    before = mean_output_errors(model, spec, held, base)
    after = mean_output_errors(model, spec, held, corrected)
    b = np.mean([np.abs(e).mean() for e in before.values()])
    a = np.mean([np.abs(e).mean() for e in after.values()])
    assert a < 0.5 * b


def test_correction_changes_only_biases_and_lowers(digits_model, plans):
    from calib.lower import lower_plan
    model, spec = digits_model
    _, base, corrected = plans
    for n, w in base.weights.items():
        assert np.array_equal(corrected.weights[n].q, w.q) and np.array_equal(corrected.weights[n].scale, w.scale)
    for p, a in base.acts.items():
        assert np.array_equal(corrected.acts[p].scale, a.scale)
    assert any(not np.allclose(corrected.biases[n], base.biases[n]) for n in base.biases)
    g0, g1 = lower_plan(base, model, spec), lower_plan(corrected, model, spec)
    assert not np.array_equal(g0.nodes["blocks.0.mlp.fc1"].consts["bias"], g1.nodes["blocks.0.mlp.fc1"].consts["bias"])

"""ADFQ-ViT calibration: Shift-Log2 table and shift-mode fc2 bit-exact with the fake-quant
model, reconstruction lowers its own objective, end-to-end agreement, outlier refusal."""

import numpy as np
import pytest
import torch

from calib.adfq import (ReconConfig, block_forward, calibrate_adfq, embed_stream, log2_linear_terms,
                        reconstruct_plan, shift_log2_codes, shift_log2_fake, shift_log2_lut)
from calib.forward import FloatPolicy, vit_forward
from calib.fqvit import RecordingPolicy, calibrate_fqvit
from calib.lower import LoweringError, lower_plan
from calib.methods import parse_bits
from calib.plan import ActQuant
from vit2hw import intops as I
from vit2hw.graph import TensorSpec
from vit2hw.pipeline import QuantResult, evaluate, graph_input, quantize_model
from vit2hw.reference import run_graph


@pytest.fixture(scope="module")
def adfq_w8(digits_model, digits_calib):
    """adfq at W8A8 with Shift-Log2 forced in every block (so the shift-mode path is exercised)."""
    model, spec = digits_model
    plan = calibrate_adfq(model, spec, digits_calib, parse_bits("8", len(model.blocks)), progress=False,
                          gelu="log2", attn="log2", recon=ReconConfig(steps=10))
    return QuantResult(plan, lower_plan(plan, model, spec))


@pytest.mark.parametrize("bits,zp,s_in,scale,shift", [(8, -7, 0.05, 4.0, 0.17), (6, 3, 0.2, 2.5, 0.1),
                                                      (4, 0, 0.4, 3.0, 0.25)])
def test_shift_log2_table_equals_fake_quant_on_every_code(bits, zp, s_in, scale, shift):
    """For every fc1-output code: table code == the fake-quant's code, and their values match exactly."""
    spec = TensorSpec("fc1", (4, 4), bits, True, (s_in,), zp)
    q = ActQuant(4, np.array([scale]), 0, "log2", shift=shift)
    table = shift_log2_lut(spec, q)
    codes = torch.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=torch.float64)
    x = ActQuant(bits, np.array([s_in]), zp).fake((codes - zp) * s_in)  # the fake-quant fc1 output
    fake = shift_log2_fake(torch.nn.functional.gelu(x), q).numpy()
    assert table.min() >= 0 and table.max() <= 15 and len(np.unique(table)) > 3
    assert np.array_equal(table, shift_log2_codes(torch.nn.functional.gelu(x), scale, shift).numpy())
    from_table = np.where(table == 15, 0.0, scale * 2.0 ** -table) - shift
    assert np.array_equal(from_table, fake)


def test_shift_log2_codes_are_nearest_in_value():
    """Each code is the representable value nearest to x (ties aside): decision points are midpoints."""
    x = torch.linspace(-0.2, 3.0, 4001, dtype=torch.float64)
    scale, shift = 2.0, 0.17
    vals = torch.tensor([scale * 2.0 ** -k for k in range(15)] + [0.0], dtype=torch.float64) - shift
    nearest = (x[:, None] - vals[None]).abs().argmin(1)
    assert torch.equal(shift_log2_codes(x, scale, shift).long(), nearest)


def test_fc2_shift_mode_accumulator_equals_fake_quant_product(adfq_w8, digits_test):
    """fc2 on Shift-Log2 codes: the int32 accumulator plus the folded bias is exactly the fake-quant
    product (2**-k·scale − shift) @ W_q.T over the accumulator scale."""
    plan, g = adfq_w8.plan, adfq_w8.graph
    env = run_graph(g, graph_input(digits_test.images[:8]), keep=True)
    node = g.nodes["blocks.1.mlp.fc2"]
    assert node.attrs["mode"] == "log2"
    codes = env[node.inputs[0]]
    acc = I.shift_log2_linear(codes, node.consts["weight"], 4, node.attrs["w_bits"])
    q, wq = plan.acts["blocks.1.mlp.gelu.out"], plan.weights["blocks.1.mlp.fc2"]
    x_real = np.where(codes == 15, 0.0, q.scale[0] * 2.0 ** -codes) - q.shift
    fq = x_real @ wq.dequant().T + plan.biases["blocks.1.mlp.fc2"]
    acc_scale, bias = log2_linear_terms(q, node.consts["weight"], wq.scale, plan.biases["blocks.1.mlp.fc2"])
    assert np.array_equal(bias.astype(np.int64), node.consts["bias"])
    assert np.abs((acc + node.consts["bias"]) * acc_scale - fq).max() <= np.abs(acc_scale).max()
    # and the accumulator alone is an exact integer image of the code-domain product
    exact = np.rint((x_real + q.shift) @ wq.q.T.astype(np.float64) / (q.scale[0] * 2.0 ** -14)).astype(np.int64)
    assert np.array_equal(acc, exact)


def test_block_forward_is_the_vit_forward_block(digits_model, digits_calib):
    """The module forwards used for reconstruction reproduce vit_forward's residual stream."""
    model, spec = digits_model
    px = digits_calib[:4]
    rec = {}
    vit_forward(model, spec, torch.from_numpy(px.astype(np.float64)), RecordingPolicy(lambda n, x: rec.setdefault(n, x)),
                dtype=torch.float64)
    x = embed_stream(model, spec, px, FloatPolicy(), torch.float64)
    for i, blk in enumerate(model.blocks):
        _, x = block_forward(blk, i, len(model.blocks), x, FloatPolicy())
    assert torch.allclose(x, rec["norm.in"], rtol=0, atol=1e-10)


def test_reconstruction_lowers_the_module_loss_it_optimizes(digits_model, digits_calib):
    model, spec = digits_model
    plan = calibrate_fqvit(model, spec, digits_calib, parse_bits("4", len(model.blocks)), progress=False,
                           attn="log2")
    before = {k: (v.scale.copy() if hasattr(v, "scale") else None) for k, v in plan.weights.items()}
    log = reconstruct_plan(model, spec, plan, digits_calib, ReconConfig(steps=30), progress=False)
    assert set(log) == {f"blocks.{i}.{m}" for i in range(len(model.blocks)) for m in ("attn", "mlp")}
    assert log["blocks.0.attn"]["after"] < log["blocks.0.attn"]["before"]
    assert log["blocks.0.mlp"]["after"] < log["blocks.0.mlp"]["before"]
    assert sum(v["after"] for v in log.values()) < sum(v["before"] for v in log.values())
    # kept modules changed their weight scales; the plan is still integer weights + scales
    assert not np.array_equal(before["blocks.0.attn.q"], plan.weights["blocks.0.attn.q"].scale)
    assert plan.weights["blocks.0.attn.q"].q.dtype == np.int64


def test_adfq_integer_agrees_with_fake_quant(digits_model, digits_calib, digits_test):
    """Acceptance: the lowered adfq plan (reconstructed scales, GELU quantizer chosen by
    calibration error) agrees with its fake-quant model on >= 99 % of the digits test split."""
    model, spec = digits_model
    res = quantize_model(model, spec, digits_calib, "8", "adfq", progress=False, attn="uniform", recon_steps=10)
    m = evaluate(model, spec, res, digits_test.images, digits_test.labels, progress=False)
    assert res.plan.notes["recon_steps"] == 10
    assert m["agreement"] >= 0.99
    assert m["integer_top1"] >= m["fp_top1"] - 1.0


def test_forced_shift_log2_model_stays_close_to_its_fake_quant(digits_model, adfq_w8, digits_test):
    """With 4-bit Shift-Log2 GELU codes in every block the integer model still tracks fake-quant
    (coarse codes amplify upstream LayerNorm rounding differences, hence 0.98 not 0.99)."""
    model, spec = digits_model
    m = evaluate(model, spec, adfq_w8, digits_test.images, digits_test.labels, progress=False)
    assert sum(q.kind == "log2" for q in adfq_w8.plan.acts.values()) == len(model.blocks)
    assert m["agreement"] >= 0.98


def test_outlier_variant_refuses_lowering_and_evaluates_fake_quant_only(digits_model, digits_calib, digits_test):
    model, spec = digits_model
    plan = calibrate_adfq(model, spec, digits_calib, parse_bits("4", len(model.blocks)), progress=False,
                          outliers=True, attn="log2", recon=None)
    assert plan.acts["blocks.0.norm1.out"].kind == "patch_outlier"
    with pytest.raises(LoweringError, match="keeps outliers in floating point"):
        lower_plan(plan, model, spec)
    res = quantize_model(model, spec, digits_calib[:8], "8", "adfq-outlier", progress=False, attn="log2",
                         recon_steps=0)
    assert res.graph is None and "adfq" in res.unavailable
    m = evaluate(model, spec, res, digits_test.images[:20], digits_test.labels[:20], progress=False)
    assert m["integer_top1"] is None and m["fakequant_top1"] > 50


def test_outlier_quantizer_keeps_outliers_exact_and_quantizes_per_token():
    from calib.adfq import PerPatchOutlierQuant
    q = PerPatchOutlierQuant(4, np.array([1.0]), 0, "patch_outlier", threshold=5.0)
    x = torch.tensor([[0.1, -0.3, 0.2, 40.0], [1.0, -2.0, 3.0, 0.5]], dtype=torch.float64)
    y = q.fake(x)
    assert y[0, 3] == 40.0
    assert (y[0, :3] - x[0, :3]).abs().max() <= 0.5 * 0.5 / 15 + 1e-12  # row 0's own range, not 40
    assert (y[1] - x[1]).abs().max() <= 0.5 * 5.0 / 15 + 1e-12


def test_cli_quantize_refuses_the_outlier_method(tmp_path, capsys):
    from vit2hw.cli import main
    rc = main(["quantize", "--model", "vit_digits", "--method", "adfq-outlier", "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not hardware-mappable" in err[0]
    assert not (tmp_path / "g").exists()

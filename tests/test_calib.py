"""Calibration: PTF factors, the plan→graph lowering, and integer reference vs fake-quant."""

import numpy as np
import pytest
import torch

from calib.fakequant import FakeQuantPolicy, fakequant_logits, lis_probs, quantize_scores
from calib.observers import PTFErrorAccumulator, symmetric_quant
from vit2hw import intops as I
from vit2hw.pipeline import evaluate, graph_input
from vit2hw.reference import run_graph

from conftest import DEIT_TINY, SAMPLES, need_real_data


def test_ptf_gives_outlier_channels_large_factors_and_beats_per_tensor_quantization():
    rng = np.random.default_rng(0)
    ranges = np.array([0.5, 0.5, 1.0, 2.0, 4.0, 40.0])
    x = torch.from_numpy(rng.uniform(-1, 1, (500, 6)) * ranges)
    acc = PTFErrorAccumulator(float(x.abs().max()), 8)
    acc.update(x)
    q = acc.result()
    assert q.alpha[-1] == 3 and q.alpha[0] == 0 and list(q.alpha) == sorted(q.alpha)
    err_ptf = float(((q.fake(x) - x) ** 2).sum())
    per_tensor = symmetric_quant(float(x.abs().max()), 8)
    err_tensor = float(((per_tensor.fake(x) - x) ** 2).sum())
    assert err_ptf < 0.5 * err_tensor


def test_graph_weights_are_the_fake_quant_weights(digits_q8):
    plan, g = digits_q8.plan, digits_q8.graph
    for name, wq in plan.weights.items():
        assert np.array_equal(g.nodes[name].consts["weight"], wq.q.T)


def test_integer_accumulator_equals_fake_quant_product(digits_q8, digits_test):
    """The GEMM of the first query projection: integer codes in, exact int32 out, same as float."""
    g, plan = digits_q8.graph, digits_q8.plan
    env = run_graph(g, graph_input(digits_test.images[:8]), keep=True)
    node = g.nodes["blocks.0.attn.q"]
    x = env[node.inputs[0]]
    acc = I.int_gemm(x, node.consts["weight"], 8, 8)
    xs = g.tensors[node.inputs[0]]
    x_real = (x - xs.zero_point) * xs.scale[0]
    w_real = plan.weights["blocks.0.attn.q"].dequant().T
    fq = x_real @ w_real / (xs.scale[0] * plan.weights["blocks.0.attn.q"].scale)
    assert np.array_equal(acc - xs.zero_point * node.consts["weight"].sum(0), np.rint(fq).astype(np.int64))


def test_gelu_table_is_the_fake_quant_gelu_on_every_code(digits_q8):
    g, plan = digits_q8.graph, digits_q8.plan
    node = g.nodes["blocks.1.mlp.gelu"]
    xs = g.tensors[node.inputs[0]]
    codes = np.arange(-(1 << (xs.bits - 1)), 1 << (xs.bits - 1))
    x = torch.from_numpy((codes - xs.zero_point) * xs.scale[0])
    out_q = plan.acts["blocks.1.mlp.gelu.out"]
    fake = out_q.fake(torch.nn.functional.gelu(x)).numpy()
    integer = (I.apply_lut(codes, node.consts["table"], xs.bits) - out_q.zero_point) * out_q.scale[0]
    assert np.allclose(fake, integer, rtol=0, atol=1e-12)


def test_fake_quant_softmax_codes_equal_integer_codes():
    rng = np.random.default_rng(3)
    s = quantize_scores(torch.from_numpy(rng.normal(0, 3, (2, 3, 17, 17))))
    t = np.rint(s.numpy() * 256 / np.log(2)).astype(np.int64)
    codes = I.log_int_softmax(t)
    expect = np.where(codes == 15, 0.0, 2.0 ** -codes)
    assert np.array_equal(lis_probs(s).numpy(), expect)


def test_vit_digits_w8a8_integer_accuracy_and_agreement(digits_model, digits_q8, digits_test):
    """Acceptance: integer top-1 within 0.5 points of float, agreement with fake-quant >= 0.99."""
    model, spec = digits_model
    m = evaluate(model, spec, digits_q8, digits_test.images, digits_test.labels, progress=False)
    assert m["n_images"] == 450
    assert m["integer_top1"] >= m["fp_top1"] - 0.5
    assert m["agreement"] >= 0.99
    assert m["logit_cosine"] > 0.99


@pytest.mark.parametrize("attn", ["log2", "uniform"])
def test_attention_encoding_lowers_to_matching_ops(digits_model, attn):
    from vit2hw.data import load_calib_data
    from vit2hw.pipeline import quantize_model
    model, spec = digits_model
    r = quantize_model(model, spec, load_calib_data(spec, None, 8).images, "8", "fqvit", progress=False,
                       attn=attn)
    sm = r.graph.nodes["blocks.0.attn.softmax"]
    probs = r.graph.tensors[sm.output]
    assert sm.attrs["mode"] == attn
    assert (probs.kind, probs.bits) == (("log2", 4) if attn == "log2" else ("int", 8))
    x = graph_input(load_calib_data(spec, None, 4).images)
    p = run_graph(r.graph, x, keep=True)[sm.output]
    assert p.min() >= 0 and p.max() <= (15 if attn == "log2" else I.PROB_MAX)


def test_synthetic_deit_tiny_integer_tracks_fake_quant():
    """The full-size graph (197 tokens, 12 blocks) runs in integers and follows the fake-quant model."""
    from vit2hw.data import synthetic_images
    from vit2hw.models.zoo import create_model, get_spec
    from vit2hw.pipeline import integer_logits, quantize_model
    spec = get_spec("deit_tiny")
    model = create_model("deit_tiny", "synthetic")
    imgs = synthetic_images(spec, 4).images
    r = quantize_model(model, spec, imgs, "8", "fqvit", progress=False, attn="log2")
    it = integer_logits(r.graph, imgs, progress=False)
    fq = fakequant_logits(model, spec, r.plan, imgs)
    cos = (it * fq).sum(1) / np.linalg.norm(it, axis=1) / np.linalg.norm(fq, axis=1)
    assert cos.min() > 0.98
    # where the spec says they must agree exactly: the integer patch embedding GEMM (pixels × folded
    # weights) equals the fake-quant product of the same codes
    g = r.graph
    env = run_graph(g, graph_input(imgs[:1]), keep=True)
    node = g.nodes["patch_embed"]
    acc = I.int_gemm(env["patches"], node.consts["weight"], 8, 8)
    w = r.plan.weights["patch_embed"]
    pix = env["patches"] + 128
    fq_acc = (pix * 1.0) @ w.dequant().T / w.scale
    assert np.array_equal(acc + 128 * node.consts["weight"].sum(0), np.rint(fq_acc).astype(np.int64))


@pytest.mark.realdata
def test_real_deit_tiny_w8a8_stays_close_to_float():
    """Real DeiT-Tiny, 32 calibration images, first 64 evaluation images (full 200 in docs/results.md)."""
    need_real_data()
    from vit2hw.data import load_calib_data, load_imagefolder
    from vit2hw.models.zoo import create_model, get_spec
    from vit2hw.pipeline import quantize_model
    spec = get_spec("deit_tiny")
    model = create_model("deit_tiny", DEIT_TINY)
    r = quantize_model(model, spec, load_calib_data(spec, SAMPLES, 32).images, "8", "fqvit", progress=False)
    data = load_imagefolder(SAMPLES, spec, limit=64)
    m = evaluate(model, spec, r, data.images, data.labels, progress=False)
    assert set(r.plan.attn_modes.values()) == {"log2"}
    assert m["integer_top1"] >= m["fp_top1"] - 100 * 3 / 64  # at most 3 images of 64 lost
    assert m["agreement"] >= 0.9

"""Integer primitives against exact rational arithmetic and float math, with stated error bounds."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vit2hw import intops as I

SETTINGS = settings(max_examples=150, deadline=None)


def _ints(bits, shape):
    lo, hi = I.int_range(bits)
    return hnp.arrays(np.int64, shape, elements=st.integers(lo, hi))


@SETTINGS
@given(st.integers(-(1 << 40), 1 << 40), st.integers(0, 30))
def test_round_shift_is_round_half_up_of_exact_quotient(x, s):
    # floor(x / 2^s + 1/2), computed with Python's exact integers
    expected = x if s == 0 else math.floor(x / (1 << s) + 0.5) if abs(x) < (1 << 52) else (x + (1 << (s - 1))) >> s
    assert int(I.round_shift(np.int64(x), s)) == expected


def test_round_shift_ties_round_up_for_negative_values_too():
    assert I.round_shift(np.array([-3, -2, -1, 1, 2, 3]), 1).tolist() == [-1, -1, 0, 1, 1, 2]


@SETTINGS
@given(st.floats(1e-6, 1e3), st.integers(-(1 << 20), 1 << 20))
def test_requantize_matches_float_within_half_lsb_plus_multiplier_error(ratio, acc):
    m, s = I.choose_multiplier(ratio)
    assert abs(int(m) / 2.0 ** int(s) - ratio) <= ratio * 2.0 ** -14  # 16-bit multiplier precision
    q = int(I.requantize(np.int64(acc), m, s, 32, True))
    exact = acc * ratio
    assert abs(q - exact) <= 0.5 + abs(acc) * ratio * 2.0 ** -14 + 1e-9


def test_requantize_saturates_and_adds_bias_and_zero_point():
    acc = np.array([1000, -1000, 10])
    out = I.requantize(acc, 1 << 10, 10, 8, True, zero_point=3, bias=np.array([0, 0, 5]))
    assert out.tolist() == [127, -128, 18]


def test_requantize_rejects_accumulator_overflow():
    with pytest.raises(I.IntegerRangeError):
        I.requantize(np.array([1 << 31]), 1, 0, 8)


@SETTINGS
@given(_ints(8, (5, 7)), _ints(8, (7, 3)))
def test_int_gemm_is_exact(x, w):
    expected = [[sum(int(x[i, k]) * int(w[k, j]) for k in range(7)) for j in range(3)] for i in range(5)]
    assert I.int_gemm(x, w, 8, 8).tolist() == expected


def test_int_gemm_uses_float64_beyond_float32_exact_range_and_stays_exact():
    # 16-bit operands: partial sums up to 2^30·K, beyond float32's 2^24, within float64's 2^53
    rng = np.random.default_rng(0)
    x = rng.integers(-(1 << 15), 1 << 15, (4, 64))
    w = rng.integers(-(1 << 15), 1 << 15, (64, 4))
    assert (I.int_gemm(x, w, 16, 16, acc_bits=40) == x @ w).all()


def test_int_gemm_refuses_inputs_outside_declared_width():
    with pytest.raises(I.IntegerRangeError):
        I.int_gemm(np.array([[200]]), np.array([[1]]), 8, 8)


@SETTINGS
@given(hnp.arrays(np.int64, 20, elements=st.integers(0, 1 << 50)))
def test_isqrt_is_floor_sqrt(n):
    r = I.isqrt(n)
    assert (r * r <= n).all() and ((r + 1) * (r + 1) > n).all()


@SETTINGS
@given(_ints(8, (3, 48)), hnp.arrays(np.int64, 48, elements=st.integers(0, 3)))
def test_layernorm_normalize_matches_float_within_bound(q, alpha):
    x = np.left_shift(q, alpha)
    n = I.layernorm_normalize(x) / 2.0 ** I.LN_NORM_FRAC
    mu, sd = x.mean(-1, keepdims=True), x.std(-1, keepdims=True)
    ref = np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1), 0.0)
    # isqrt floor and a 16-bit reciprocal cost at most ~2^-14 relative; output rounding 2^-12
    sd_int = np.sqrt(x.shape[-1] ** 2 * x.var(-1, keepdims=True))
    rel = np.where(sd_int > 0, 1.0 / np.maximum(sd_int, 1), 0) + 2.0 ** -14
    assert (np.abs(n - ref) <= np.abs(ref) * rel * 2 + 2.0 ** -(I.LN_NORM_FRAC + 1) + 1e-12).all()


def test_layernorm_constant_row_normalizes_to_zero_not_nan():
    out = I.ptf_layernorm(np.full((2, 8), 5), np.zeros(8, np.int64), np.full(8, 100), np.full(8, 4),
                          np.arange(8) * 16, 8)
    assert out.tolist() == [[round(b / 16) for b in np.arange(8) * 16]] * 2


def test_layernorm_reciprocal_has_sixteen_significant_bits():
    r = np.array([1, 2, 3, 255, 256, 1 << 19, (1 << 19) + 1])
    inv = I.layernorm_reciprocal(r)
    e = I.bit_length(r)
    assert (inv >= 1 << 15).all() and (inv <= 1 << 16).all()
    assert (inv == (np.left_shift(1, e + I.LN_RECIP_FRAC) // r)).all()
    assert int(I.layernorm_reciprocal(np.array(0))) == 0


def test_ptf_layernorm_rejects_alpha_outside_0_to_3():
    with pytest.raises(I.IntegerRangeError):
        I.ptf_layernorm(np.zeros((1, 4), np.int64), np.array([0, 1, 2, 4]), np.ones(4, np.int64),
                        np.ones(4, np.int64), np.zeros(4, np.int64), 8)


def test_exp2_polynomial_error_below_0_2_percent():
    r = np.arange(1 << I.SCORE_FRAC)
    approx = I.exp2_frac_poly(r) / 2.0 ** I.EXP_FRAC
    exact = 2.0 ** (-r / 2.0 ** I.SCORE_FRAC)
    assert np.abs(approx - exact).max() < 0.0021
    assert int(I.exp2_frac_poly(np.array(0))) == 1 << I.EXP_FRAC


@SETTINGS
@given(hnp.arrays(np.int64, 30, elements=st.integers(-(1 << 16), 0)))
def test_int_exp2_neg_tracks_float(z):
    e = I.int_exp2_neg(z) / 2.0 ** I.EXP_FRAC
    exact = 2.0 ** (z / 2.0 ** I.SCORE_FRAC)
    # the polynomial's absolute error on [1/2, 1], scaled by the integer power, plus the floor shift
    q = np.floor(-z / 2.0 ** I.SCORE_FRAC)
    assert (np.abs(e - exact) <= 0.0021 * 2.0 ** -q + 2.0 ** -I.EXP_FRAC).all()


def _codes_by_definition(e, total):
    k = np.zeros(np.broadcast_shapes(e.shape, total.shape), np.int64)
    for i in range(I.LOG2_ZERO_CODE):
        k += 2 * total >= np.left_shift(3 * e, i)
    return k


@SETTINGS
@given(hnp.arrays(np.int64, 40, elements=st.integers(0, 1 << 15)), st.integers(0, 1 << 22))
def test_log2_codes_equal_their_definition(e, extra):
    total = e.sum() + extra
    assert (I.log2_codes(e, np.int64(total)) == _codes_by_definition(e, np.int64(total))).all()


def test_log2_codes_exact_boundaries():
    # 2·total == 3·e·2^k exactly: the ">=" puts the boundary in the larger code
    e = np.array([2, 2, 2])
    total = np.array([3, 6, 12])
    assert I.log2_codes(e, total).tolist() == _codes_by_definition(e, total).tolist() == [1, 2, 3]


@SETTINGS
@given(hnp.arrays(np.float64, (2, 50), elements=st.floats(-20, 20)))
def test_log_int_softmax_codes_are_fqvit_rounding_of_float_softmax(s):
    t = np.rint(s * 256 / math.log(2)).astype(np.int64)
    codes = I.log_int_softmax(t)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    v = 1 / np.maximum(p, 1e-300)
    ref = np.zeros_like(codes)
    for i in range(I.LOG2_ZERO_CODE):
        ref += v >= 1.5 * 2.0 ** i
    # the exponential's error may move a probability across a rounding boundary: by one code at most
    assert (np.abs(codes - ref) <= 1).all()
    # and only near a boundary: e has >= 7 significant bits for p >= 2^-8 (error < 1.2 % with the polynomial)
    near = np.zeros(v.shape, bool)
    for i in range(I.LOG2_ZERO_CODE):
        near |= np.abs(v / (1.5 * 2.0 ** i) - 1) < 0.02
    clear = (p >= 2.0 ** -8) & ~near
    assert (codes[clear] == ref[clear]).all()


@SETTINGS
@given(hnp.arrays(np.float64, (3, 40), elements=st.floats(-15, 15)))
def test_uniform_softmax_within_one_code_of_float(s):
    t = np.rint(s * 256 / math.log(2)).astype(np.int64)
    p = I.uniform_softmax(t) / I.PROB_MAX
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    assert (np.abs(p - ref) <= 1.0 / I.PROB_MAX + 0.005 * ref).all()


@SETTINGS
@given(hnp.arrays(np.int64, (3, 6), elements=st.integers(0, 15)), _ints(8, (6, 4)))
def test_attn_v_shift_equals_powers_of_two_times_v(codes, v):
    p = np.where(codes == 15, 0.0, 2.0 ** (I.ATTN_SHIFT - codes))
    assert (I.attn_v_shift(codes, v, 8) == np.rint(p @ v)).all()


def test_lut_is_exhaustive_over_codes():
    table = I.build_lut(lambda x: x * x, 4, 0.5, 0, 8, 0.25)
    q = np.arange(-8, 8)
    assert I.apply_lut(q, table, 4).tolist() == [min(127, int(round((c * 0.5) ** 2 / 0.25))) for c in q]


@SETTINGS
@given(_ints(8, (4, 6)), _ints(8, (4, 6)), st.floats(0.01, 4), st.floats(0.01, 4))
def test_residual_add_matches_float(a, b, ra, rb):
    _, sa = I.choose_multiplier(ra)
    _, sb = I.choose_multiplier(rb)
    s = int(min(sa, sb))
    ma, mb = int(round(ra * 2 ** s)), int(round(rb * 2 ** s))
    out = I.residual_add(a, b, ma, mb, 0, s, 16)
    exact = a * ra + b * rb
    assert (np.abs(out - exact) <= 0.5 + (np.abs(a) * ra + np.abs(b) * rb) * 2.0 ** -13 + 1e-9).all()


def test_choose_multiplier_zero_and_sign():
    m, s = I.choose_multiplier(np.array([0.0, -0.75]))
    assert m.tolist()[0] == 0 and m.tolist()[1] < 0 and abs(m[1] / 2.0 ** s[1] + 0.75) < 1e-4

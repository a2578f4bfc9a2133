"""Integer primitives: the single source of truth for vit2hw arithmetic.

Every run-time computation of a quantized ViT is one of the functions below. The
integer reference executor, calibration's bit-exactness checks and every cocotb
scoreboard call these functions, so the Python model and the RTL can only agree
or disagree, never drift apart. ``docs/integer-spec.md`` states the same rules in
prose, constant by constant.

Conventions
-----------
* Values are numpy ``int64`` arrays (or Python ints); results are ``int64``.
* ``round_shift(x, s) = (x + (1 << (s - 1))) >> s`` for ``s > 0`` (arithmetic shift,
  i.e. round half up), ``x`` for ``s == 0``.
* ``saturate`` clamps to the two's-complement (or unsigned) range of a bit width.
* Every function asserts that its inputs fit their declared widths and raises
  :class:`IntegerRangeError` otherwise: an overflow is a bug, never silently wrapped.

Only the ``choose_*`` / ``build_*`` helpers use floating point, and they run at
compile time to derive integer constants.
"""

from __future__ import annotations

import math
import numpy as np

__all__ = [
    "IntegerRangeError",
    "int_range",
    "check_range",
    "saturate",
    "round_shift",
    "requantize",
    "choose_multiplier",
    "int_gemm",
    "shift_gemm",
    "isqrt",
    "bit_length",
    "LN_NORM_FRAC",
    "LN_RECIP_FRAC",
    "layernorm_stats",
    "layernorm_reciprocal",
    "layernorm_normalize",
    "ptf_layernorm",
    "SCORE_FRAC",
    "EXP_FRAC",
    "EXP2_C1",
    "EXP2_C2",
    "LOG2_CODE_BITS",
    "LOG2_ZERO_CODE",
    "ATTN_SHIFT",
    "exp2_frac_poly",
    "int_exp2_neg",
    "log2_codes",
    "log_int_softmax",
    "attn_v_shift",
    "PROB_MAX",
    "PROB_RECIP_SHIFT",
    "uniform_softmax",
    "uniform_reciprocal",
    "build_lut",
    "apply_lut",
    "residual_add",
    "shift_log2_linear",
]


class IntegerRangeError(ValueError):
    """A value left the bit width the integer contract declares for it."""


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive (lo, hi) of a ``bits``-wide two's-complement or unsigned integer."""
    if bits < 1 or bits > 63:
        raise ValueError(f"bit width {bits} outside 1..63")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _as_int(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"integer array expected, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def check_range(x, bits: int, signed: bool = True, what: str = "value") -> np.ndarray:
    """Return ``x`` as int64 after asserting every element fits ``bits`` (signed or not)."""
    a = _as_int(x)
    lo, hi = int_range(bits, signed)
    if a.size and (a.min() < lo or a.max() > hi):
        raise IntegerRangeError(
            f"{what}: range [{int(a.min())}, {int(a.max())}] does not fit "
            f"{'signed' if signed else 'unsigned'} {bits}-bit [{lo}, {hi}]"
        )
    return a


def saturate(x, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp to the range of a ``bits``-wide integer."""
    lo, hi = int_range(bits, signed)
    return np.clip(_as_int(x), lo, hi)


def round_shift(x, s) -> np.ndarray:
    """Arithmetic right shift by ``s`` with round-half-up; ``s`` may be per element (broadcast)."""
    a = _as_int(x)
    s = _as_int(s)
    if s.size and s.min() < 0:
        raise ValueError("round_shift: negative shift")
    if s.size and s.max() > 62:
        raise ValueError("round_shift: shift above 62")
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(a + half, s)


def requantize(acc, m, s, bits: int, signed: bool = True, zero_point=0, bias=0,
               acc_bits: int = 32, m_bits: int = 16) -> np.ndarray:
    """``sat(round_shift((acc + bias) * m, s) + zero_point)``: the array drain's requantizer.

    ``bias``, ``m``, ``s`` and ``zero_point`` are integers per output channel (broadcast
    along the last axis; ``bias`` may also be a full [rows, channels] matrix, e.g. the
    position embedding folded into the patch embedding). ``acc + bias`` must fit
    ``acc_bits`` and ``m`` must fit ``m_bits`` signed.
    """
    acc = check_range(_as_int(acc) + _as_int(bias), acc_bits, True, "requantize accumulator")
    m = check_range(m, m_bits, True, "requantize multiplier")
    return saturate(round_shift(acc * m, s) + _as_int(zero_point), bits, signed)


def choose_multiplier(ratio, m_bits: int = 16, max_shift: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Compile time: integers (M, S) with ``M / 2**S ≈ ratio``, ``|M| < 2**(m_bits-1)``.

    ``S`` is as large as possible (most precise) within ``max_shift``; a ratio of zero
    gives ``M = 0, S = 0``. Works element-wise on arrays.
    """
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if not np.all(np.isfinite(r)):
        raise ValueError("choose_multiplier: non-finite ratio")
    limit = (1 << (m_bits - 1)) - 1
    m_out = np.zeros(r.shape, np.int64)
    s_out = np.zeros(r.shape, np.int64)
    for i, v in np.ndenumerate(r):
        if v == 0.0:
            continue
        # largest S with round(|v| * 2^S) <= limit
        s = int(math.floor(math.log2(limit / abs(v))))
        s = min(s, max_shift)
        m = int(round(abs(v) * 2.0 ** s))
        while m > limit:
            s -= 1
            m = int(round(abs(v) * 2.0 ** s))
        if s < 0:
            raise ValueError(f"choose_multiplier: ratio {v} too large for a {m_bits}-bit multiplier")
        m_out[i] = m if v > 0 else -m
        s_out[i] = s
    return m_out.reshape(np.shape(ratio)), s_out.reshape(np.shape(ratio))


def _exact_matmul(x: np.ndarray, w: np.ndarray, bound: int, what: str) -> np.ndarray:
    """Integer matmul through float BLAS, exact because no partial sum can exceed ``bound``.

    Every partial sum of integer products is an integer of magnitude at most ``bound``;
    float32 represents all such integers exactly below 2**24, float64 below 2**53, so
    each addition is exact in any order. float32 is twice as fast and covers 8-bit
    GEMMs up to K = 1024.
    """
    if bound < 1 << 24:
        dt = np.float32
    elif bound < 1 << 53:
        dt = np.float64
    else:
        raise IntegerRangeError(f"{what}: worst-case partial sum {bound} not exact in float64")
    xf, wf = x.astype(dt), w.astype(dt)
    if wf.ndim == 2:
        # one 2-D BLAS call: numpy's stacked matmul is an order of magnitude slower here
        acc = (xf.reshape(-1, xf.shape[-1]) @ wf).reshape(*xf.shape[:-1], wf.shape[-1])
    else:
        acc = np.einsum("...ik,...kj->...ij", xf, wf, optimize=True)
    return acc.astype(np.int64)


def int_gemm(x, w, x_bits: int, w_bits: int, acc_bits: int = 32,
             x_signed: bool = True) -> np.ndarray:
    """Exact integer ``x @ w`` (``x``: [..., K], ``w``: [K, M]) with an ``acc_bits`` accumulator.

    Computed in float BLAS (see :func:`_exact_matmul`) after bounding every partial
    sum by ``K * max|x| * max|w|``.
    """
    x = check_range(x, x_bits, x_signed, "gemm input")
    w = check_range(w, w_bits, True, "gemm weight")
    k = x.shape[-1]
    bound = k * max(1, int(np.abs(x).max(initial=0))) * max(1, int(np.abs(w).max(initial=0)))
    acc = _exact_matmul(x, w, bound, "int_gemm")
    return check_range(acc, acc_bits, True, "gemm accumulator")


# ---------------------------------------------------------------- LayerNorm (PTF)

#: fractional bits of the normalized value (x - mean) / std inside the LayerNorm unit
LN_NORM_FRAC = 11
#: the reciprocal 1/isqrt(.) is held with this many fractional bits below its leading one
LN_RECIP_FRAC = 15


def isqrt(n) -> np.ndarray:
    """Element-wise ``floor(sqrt(n))`` for non-negative int64 (exact; bit-by-bit in hardware)."""
    n = _as_int(n)
    if n.size and n.min() < 0:
        raise ValueError("isqrt of a negative number")
    r = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    # float sqrt can be off by one near perfect squares: correct both ways
    r = np.where(r * r > n, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


def bit_length(n) -> np.ndarray:
    """Element-wise bit length of non-negative integers (0 for 0)."""
    n = _as_int(n)
    out = np.zeros(n.shape, np.int64)
    v = n.copy()
    while np.any(v > 0):
        nz = v > 0
        out += nz
        v = np.right_shift(v, 1)
    return out


def layernorm_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Row statistics of the PTF-aligned LayerNorm input ``x`` ([..., C]).

    Returns ``S = Σx`` and ``Q = C·Σx² − S²`` (= C²·variance, exact, no division).
    """
    x = _as_int(x)
    c = x.shape[-1]
    s1 = x.sum(axis=-1, keepdims=True)
    s2 = (x * x).sum(axis=-1, keepdims=True)
    q = c * s2 - s1 * s1
    return s1, q


def layernorm_reciprocal(r) -> np.ndarray:
    """``floor(2**(bit_length(r) + LN_RECIP_FRAC) / r)`` (0 for ``r = 0``): 16 significant bits for any ``r``."""
    r = _as_int(r)
    e = bit_length(r)
    return np.where(r > 0, np.left_shift(np.int64(1), e + LN_RECIP_FRAC) // np.maximum(r, 1), 0)


def layernorm_normalize(x) -> np.ndarray:
    """``(x − mean)/std`` of each row in fixed point with ``LN_NORM_FRAC`` fractional bits.

    ``(x_c − μ)/σ = (C·x_c − S) / sqrt(C·Σx² − S²)``. The denominator is
    ``r = isqrt(Q)``; its reciprocal ``inv = floor(2**(e+LN_RECIP_FRAC) / r)``
    with ``e = bit_length(r)`` keeps 16 significant bits for any ``r``; then
    ``n_c = round_shift((C·x_c − S)·inv, e + LN_RECIP_FRAC − LN_NORM_FRAC)``.
    A constant row (``Q = 0``) normalizes to zero instead of dividing by zero.
    """
    x = _as_int(x)
    c = x.shape[-1]
    s1, q = layernorm_stats(x)
    r = isqrt(q)
    e = bit_length(r)
    inv = layernorm_reciprocal(r)
    d = c * x - s1
    shift = np.maximum(e, 1) + LN_RECIP_FRAC - LN_NORM_FRAC
    return round_shift(d * inv, shift)


def ptf_layernorm(q, alpha, gamma_m, gamma_s, beta_b, out_bits: int, out_zp=0,
                  in_bits: int = 8, out_signed: bool = True) -> np.ndarray:
    """Integer LayerNorm of a Power-of-Two-Factor quantized input.

    ``q``: [..., C] codes of ``in_bits``; ``alpha``: [C] shifts in {0..3} that bring
    every channel to the common scale (``x_c = q_c << alpha_c``). The affine part is
    per channel: ``y_c = sat(round_shift(n_c·gamma_m_c + beta_b_c, gamma_s_c) + out_zp)``.
    """
    q = check_range(q, in_bits, True, "layernorm input")
    alpha = _as_int(alpha)
    if alpha.size and (alpha.min() < 0 or alpha.max() > 3):
        raise IntegerRangeError("layernorm: PTF alpha outside {0,1,2,3}")
    x = np.left_shift(q, alpha)
    n = layernorm_normalize(x)
    gm = check_range(gamma_m, 16, True, "layernorm gamma multiplier")
    bb = check_range(beta_b, 32, True, "layernorm beta")
    y = round_shift(n * gm + bb, gamma_s) + _as_int(out_zp)
    return saturate(y, out_bits, out_signed)


# ------------------------------------------------------- Log-Int-Softmax (LIS)

#: attention scores enter the softmax as score·log2(e) with this many fractional bits
SCORE_FRAC = 8
#: fractional bits of the integer exponential (exp of the row maximum is 2**EXP_FRAC)
EXP_FRAC = 15
#: 2**-v ≈ 1 + C1·v + C2·v² on v in [0, 1), coefficients at 2**-EXP_FRAC;
#: exact at v = 0 and v = 1, max absolute error 0.0019 (minimax fit with both ends pinned)
EXP2_C1 = -22025
EXP2_C2 = 5641
LOG2_CODE_BITS = 4
#: code value meaning probability zero; codes 0..14 mean 2**-k
LOG2_ZERO_CODE = (1 << LOG2_CODE_BITS) - 1
#: attention×V computes Σ V << (ATTN_SHIFT − k): the result has scale s_V·2**-ATTN_SHIFT
ATTN_SHIFT = LOG2_ZERO_CODE - 1


def exp2_frac_poly(r, frac: int = SCORE_FRAC) -> np.ndarray:
    """``2**(-r / 2**frac)`` for ``0 <= r < 2**frac``, at ``EXP_FRAC`` fractional bits (Horner, two multiplies)."""
    r = _as_int(r)
    if r.size and (r.min() < 0 or r.max() >= 1 << frac):
        raise IntegerRangeError("exp2_frac_poly: fraction outside [0, 2**frac)")
    t = round_shift(EXP2_C2 * r, frac) + EXP2_C1
    t = round_shift(t * r, frac)
    return t + (1 << EXP_FRAC)


def int_exp2_neg(z, frac: int = SCORE_FRAC) -> np.ndarray:
    """``2**(z / 2**frac)`` for ``z <= 0`` at ``EXP_FRAC`` fractional bits.

    ``-z = q·2**frac + r`` splits into an integer power (a right shift by ``q``, floor)
    and a fraction handled by :func:`exp2_frac_poly`; ``q > EXP_FRAC`` gives 0.
    """
    z = _as_int(z)
    if z.size and z.max() > 0:
        raise IntegerRangeError("int_exp2_neg: positive exponent")
    u = -z
    qi = np.right_shift(u, frac)
    r = u & ((1 << frac) - 1)
    p = exp2_frac_poly(r, frac)
    return np.where(qi > EXP_FRAC, 0, np.right_shift(p, np.minimum(qi, EXP_FRAC)))


def log2_codes(e, total) -> np.ndarray:
    """4-bit code ``k = round(log2(total / e))`` (FQ-ViT's rounding: threshold at 1.5·2**k).

    Computed without division: ``k = #{i in 0..14 : 2·total >= (3·e) << i}``, which is the
    smallest ``k`` with ``total < 1.5·2**k·e``; 15 (:data:`LOG2_ZERO_CODE`) means zero.
    """
    e = _as_int(e)
    total = _as_int(total)
    e, total = np.broadcast_arrays(e, total)
    # a float estimate of the smallest k with 2·total < 3·e·2**k, then exact integer fix-ups
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (2.0 * total) / (3.0 * e)
        k = np.where(r >= 1.0, np.floor(np.log2(np.where(r >= 1.0, r, 1.0))) + 1, 0).astype(np.int64)
    k = np.clip(k, 0, LOG2_ZERO_CODE)
    lhs = 2 * total
    e3 = 3 * e
    for _ in range(2):
        k = np.where((k > 0) & (lhs < np.left_shift(e3, np.maximum(k - 1, 0))), k - 1, k)
        k = np.where((k < LOG2_ZERO_CODE) & (lhs >= np.left_shift(e3, np.minimum(k, 62))), k + 1, k)
    return np.where(e == 0, LOG2_ZERO_CODE, k)


def log_int_softmax(t, frac: int = SCORE_FRAC, score_bits: int = 16) -> np.ndarray:
    """Log-Int-Softmax along the last axis: scores ``t`` (score·log2 e at 2**-frac) → 4-bit codes."""
    t = check_range(t, score_bits, True, "softmax scores")
    z = t - t.max(axis=-1, keepdims=True)
    e = int_exp2_neg(z, frac)
    total = e.sum(axis=-1, keepdims=True)
    return log2_codes(e, total)


#: uniform attention probabilities: code p in 0..PROB_MAX means p / PROB_MAX (fits a signed 8-bit operand)
PROB_MAX = 127
#: fractional bits of the per-row reciprocal PROB_MAX / total
PROB_RECIP_SHIFT = 32


def uniform_softmax(t, frac: int = SCORE_FRAC, score_bits: int = 16) -> np.ndarray:
    """Softmax along the last axis with uniform 8-bit output codes ``round(PROB_MAX·e/total)``.

    Same integer exponential as :func:`log_int_softmax`; one reciprocal per row
    ``R = floor(PROB_MAX·2**32 / total)`` (a sequential divider in hardware), then per
    element ``p = min(round_shift(e·R, 32), PROB_MAX)``. For models whose attention is too
    sensitive to 4-bit log2 codes; attention×V then runs in the array's multiply mode.
    """
    t = check_range(t, score_bits, True, "softmax scores")
    z = t - t.max(axis=-1, keepdims=True)
    e = int_exp2_neg(z, frac)
    total = e.sum(axis=-1, keepdims=True)
    r = uniform_reciprocal(total)
    return np.minimum(round_shift(e * r, PROB_RECIP_SHIFT), PROB_MAX)


def uniform_reciprocal(total) -> np.ndarray:
    """``floor(PROB_MAX·2**PROB_RECIP_SHIFT / total)``: the softmax row's reciprocal (total >= 1)."""
    total = _as_int(total)
    if total.size and total.min() < 1:
        raise IntegerRangeError("uniform_reciprocal: row sum below 1")
    return np.left_shift(np.int64(PROB_MAX), PROB_RECIP_SHIFT) // total


def shift_gemm(codes, v, v_bits: int, shift: int, zero_code: int, acc_bits: int = 32) -> np.ndarray:
    """``Σ_j v[j, c] << (shift − codes[i, j])``, skipping ``codes == zero_code``: multiplier-free GEMM.

    ``codes``: [..., N, J] in ``0..zero_code``; ``v``: [..., J, C]. The PE array's
    log2-shift mode computes exactly this.
    """
    codes = _as_int(codes)
    if codes.size and (codes.min() < 0 or codes.max() > zero_code):
        raise IntegerRangeError("shift_gemm: code outside 0..zero_code")
    if zero_code - 1 > shift:
        raise ValueError("shift_gemm: codes below zero_code must give non-negative shifts")
    v = check_range(v, v_bits, True, "shift-gemm operand")
    p = np.where(codes == zero_code, 0, np.left_shift(np.int64(1), np.maximum(shift - codes, 0)))
    bound = codes.shape[-1] * (1 << shift) * max(1, int(np.abs(v).max(initial=0)))
    acc = _exact_matmul(p, v, bound, "shift_gemm")
    return check_range(acc, acc_bits, True, "shift-gemm accumulator")


def attn_v_shift(codes, v, v_bits: int, acc_bits: int = 32) -> np.ndarray:
    """Attention × V from 4-bit log2 probabilities (scale of the result: s_V·2**-ATTN_SHIFT)."""
    return shift_gemm(codes, v, v_bits, ATTN_SHIFT, LOG2_ZERO_CODE, acc_bits)


# ------------------------------------------------------- lookup tables (GELU)

def build_lut(fn, in_bits: int, in_scale: float, in_zp: int, out_bits: int,
              out_scale: float, out_zp: int = 0, out_signed: bool = True) -> np.ndarray:
    """Compile time: table over every signed ``in_bits`` code of ``sat(round(fn((q−zp)·s)/s_out) + zp_out)``."""
    lo, hi = int_range(in_bits, True)
    codes = np.arange(lo, hi + 1, dtype=np.int64)
    real = fn((codes - in_zp).astype(np.float64) * in_scale)
    q = np.rint(np.asarray(real, np.float64) / out_scale).astype(np.int64) + out_zp
    return saturate(q, out_bits, out_signed)


def apply_lut(q, lut, in_bits: int) -> np.ndarray:
    """Look every signed ``in_bits`` code up in ``lut`` (indexed from the most negative code)."""
    q = check_range(q, in_bits, True, "lut input")
    lut = _as_int(lut)
    if lut.shape != (1 << in_bits,):
        raise ValueError(f"lut has shape {lut.shape}, expected ({1 << in_bits},)")
    return lut[q - int_range(in_bits, True)[0]]


# ------------------------------------------------------- residual add

def residual_add(a, b, ma, mb, bias, s, out_bits: int, out_zp=0,
                 a_bits: int = 16, b_bits: int = 16, m_bits: int = 16) -> np.ndarray:
    """``sat(round_shift(a·ma + b·mb + bias, s) + out_zp)``: both inputs rescaled to the output scale.

    ``ma, mb, bias, s`` are per channel (last axis); zero points of ``a``/``b`` are folded into ``bias``.
    """
    a = check_range(a, a_bits, True, "residual input a")
    b = check_range(b, b_bits, True, "residual input b")
    ma = check_range(ma, m_bits, True, "residual multiplier a")
    mb = check_range(mb, m_bits, True, "residual multiplier b")
    return saturate(round_shift(a * ma + b * mb + _as_int(bias), s) + _as_int(out_zp), out_bits, True)


# ------------------------------------------------------- Shift-Log2 activations

def shift_log2_linear(codes, w, bits: int, w_bits: int, acc_bits: int = 32) -> np.ndarray:
    """Linear layer on Shift-Log2 activation codes: ``Σ_k w[k, m] << (2**bits − 2 − code_k)``.

    Code ``2**bits − 1`` means zero. The result has scale ``s_w · s_a · 2**-(2**bits − 2)``;
    the shift applied before log2 quantization is folded into the bias at compile time.
    """
    zero = (1 << bits) - 1
    return shift_gemm(codes, w, w_bits, zero - 1, zero, acc_bits)

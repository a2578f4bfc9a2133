"""cocotb testbench of hdl.vector.VectorUnit; scoreboard: intops.apply_lut / intops.residual_add.

Parameters (``tb_params()``): ``lanes``, ``max_channels``, ``in_width``, ``out_width``,
``lut_in_bits``, ``seed``.
"""

from __future__ import annotations

import math
import random

import cocotb
import numpy as np

from hdl.vecops import pack_lanes, pack_struct, unpack_lanes
from hdl.vector import OP_LUT, OP_RESIDUAL, VECTOR_START_CYCLES, residual_const_layout, vector_cycles
from sim.runner import tb_params
from sim.stream_driver import reset_unit, run_operation, write_constants
from vit2hw import intops


def _p() -> dict:
    p = {"lanes": 1, "max_channels": 64, "in_width": 16, "out_width": 16, "lut_in_bits": 8, "seed": 1}
    p.update(tb_params())
    return p


def _beats(a: np.ndarray, b: np.ndarray, lanes: int, width: int) -> list[int]:
    flat_a, flat_b = a.reshape(-1, lanes), b.reshape(-1, lanes)
    return [pack_lanes(x, width) | (pack_lanes(y, width) << (lanes * width))
            for x, y in zip(flat_a.tolist(), flat_b.tolist())]


def _unpack(words: list[int], lanes: int, width: int, shape) -> np.ndarray:
    vals = [v for w in words for v in unpack_lanes(w, width, lanes)]
    return np.array(vals, np.int64).reshape(shape)


async def _lut_op(dut, p, table: np.ndarray, lut_bits: int, codes: np.ndarray,
                  rng=None, stall=0.0):
    lanes = p["lanes"]
    await write_constants(dut, "lut_wr", enumerate(table.tolist()))
    beats = _beats(codes, np.zeros_like(codes), lanes, p["in_width"])
    trace = await run_operation(
        dut, {"op": OP_LUT, "beats": len(beats), "channels": lanes, "out_bits": p["out_width"],
              "out_zp": 0, "lut_bits": lut_bits},
        beats, len(beats), rng=rng, in_stall=stall, out_stall=stall)
    got = _unpack(trace.outputs, lanes, p["out_width"], codes.shape)
    want = intops.apply_lut(codes, table, lut_bits)
    assert np.array_equal(got, want), f"LUT mismatch at {np.argwhere(got != want)[:5].tolist()}"
    return trace


async def _residual_op(dut, p, a, b, ma, mb, bias, s, out_bits, zp, rng=None, stall=0.0):
    lanes = p["lanes"]
    layout = residual_const_layout()
    words = [(c, pack_struct(layout, {"ma": ma[c], "mb": mb[c], "bias": bias[c], "s": s[c]}))
             for c in range(a.shape[1])]
    await write_constants(dut, "const_wr", words)
    beats = _beats(a, b, lanes, p["in_width"])
    trace = await run_operation(
        dut, {"op": OP_RESIDUAL, "beats": len(beats), "channels": a.shape[1], "out_bits": out_bits,
              "out_zp": zp, "lut_bits": p["lut_in_bits"]},
        beats, len(beats), rng=rng, in_stall=stall, out_stall=stall)
    got = _unpack(trace.outputs, lanes, p["out_width"], a.shape)
    want = intops.residual_add(a, b, ma, mb, bias, s, out_bits, zp)
    assert np.array_equal(got, want), (
        f"residual mismatch at {np.argwhere(got != want)[:5].tolist()}: "
        f"got {got[got != want][:5].tolist()} want {want[got != want][:5].tolist()}")
    return trace


@cocotb.test()
async def lut_gelu_and_random_tables(dut):
    """Every input code of a GELU table and of random 16-bit tables maps exactly as apply_lut."""
    p = _p()
    rng = random.Random(p["seed"])
    nrng = np.random.default_rng(p["seed"])
    await reset_unit(dut)
    lanes = p["lanes"]
    gelu = lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    table = intops.build_lut(gelu, 8, 0.05, 0, 8, 0.03, out_zp=-20)
    codes = np.arange(-128, 128, dtype=np.int64)
    codes = np.concatenate([codes, nrng.integers(-128, 128, 64)])
    codes = codes[: len(codes) // lanes * lanes].reshape(-1, lanes)
    await _lut_op(dut, p, table, 8, codes, rng, 0.3)
    lo, hi = intops.int_range(p["out_width"])
    table = nrng.integers(lo, hi + 1, 1 << p["lut_in_bits"])
    table[0], table[-1] = lo, hi
    codes = nrng.integers(-(1 << (p["lut_in_bits"] - 1)), 1 << (p["lut_in_bits"] - 1), (40, lanes))
    codes[0, 0], codes[-1, -1] = -(1 << (p["lut_in_bits"] - 1)), (1 << (p["lut_in_bits"] - 1)) - 1
    await _lut_op(dut, p, table, p["lut_in_bits"], codes, rng, 0.3)
    # a narrower table (4-bit codes) in the same memory
    table4 = nrng.integers(-100, 100, 16)
    codes4 = np.tile(np.arange(-8, 8), lanes * 2)[: 16 * lanes].reshape(-1, lanes)
    await _lut_op(dut, p, table4, 4, codes4, rng, 0.0)


@cocotb.test()
async def residual_random_and_realistic(dut):
    """Random operands with random and choose_multiplier constants match residual_add."""
    p = _p()
    rng = random.Random(p["seed"] + 1)
    nrng = np.random.default_rng(p["seed"] + 1)
    await reset_unit(dut)
    lanes, cmax = p["lanes"], p["max_channels"]
    # realistic: int8 GEMM output + 16-bit residual stream to a 16-bit stream
    c = cmax
    a = nrng.integers(-128, 128, (3, c))
    b = nrng.integers(-30000, 30000, (3, c))
    sa = nrng.uniform(0.01, 0.05, c)
    sb = np.full(c, 0.002)
    so = 0.004
    ma, sha = intops.choose_multiplier(sa / so, 16, 30)
    mb, shb = intops.choose_multiplier(sb / so, 16, 30)
    s = np.minimum(sha, shb)
    ma = np.right_shift(ma, sha - s)
    mb = np.right_shift(mb, shb - s)
    bias = nrng.integers(-1000, 1000, c) << np.maximum(s - 4, 0)
    await _residual_op(dut, p, a, b, ma, mb, bias, s, 16, 0, rng, 0.25)
    # fully random constants, 8-bit output with a zero point
    c = max(lanes, cmax // 2)
    a = nrng.integers(-32768, 32768, (4, c))
    b = nrng.integers(-32768, 32768, (4, c))
    ma = nrng.integers(-32768, 32768, c)
    mb = nrng.integers(-32768, 32768, c)
    bias = nrng.integers(-(1 << 39), 1 << 39, c)
    s = nrng.integers(0, 63, c)
    await _residual_op(dut, p, a, b, ma, mb, bias, s, 8, -7, rng, 0.25)


@cocotb.test()
async def residual_edges(dut):
    """Saturation at both ends, shifts 0 and 62, extreme products, ties at zero crossings."""
    p = _p()
    await reset_unit(dut)
    lanes = p["lanes"]
    c = 4 * lanes
    lo16, hi16 = -32768, 32767
    a = np.array([[hi16, lo16, lo16, 1] * lanes, [0, -1, 1, -2] * lanes,
                  [lo16, hi16, 3, -3] * lanes], np.int64)
    b = np.array([[hi16, lo16, hi16, -1] * lanes, [1, 0, -1, 2] * lanes,
                  [lo16, lo16, -3, 3] * lanes], np.int64)
    ma = np.array([lo16, lo16, hi16, 1] * lanes, np.int64)
    mb = np.array([lo16, hi16, -1, 1] * lanes, np.int64)
    bias = np.array([(1 << 39) - 1, -(1 << 39), 0, 1] * lanes, np.int64)
    for s_val in (0, 1, 62):
        s = np.full(c, s_val, np.int64)
        for out_bits, zp in ((16, 0), (8, 5), (8, -128), (4, 0), (1, 0)):
            await _residual_op(dut, p, a, b, ma, mb, bias, s, out_bits, zp)
    # round-half-up ties around zero: (x + 1) >> 1 for x = -3..3
    a = np.resize(np.arange(-3, 4, dtype=np.int64), (2, c))
    await _residual_op(dut, p, a, np.zeros_like(a), np.ones(c, np.int64), np.zeros(c, np.int64),
                       np.zeros(c, np.int64), np.ones(c, np.int64), 16, 0)


@cocotb.test()
async def cycle_model(dut):
    """Measured cycles (first input to last output, no stalls) equal vector_cycles()."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 2)
    await reset_unit(dut)
    lanes = p["lanes"]
    table = nrng.integers(-100, 100, 1 << p["lut_in_bits"])
    for n_beats in (1, 2, 17):
        codes = nrng.integers(-128, 128, (n_beats, lanes))
        trace = await _lut_op(dut, p, table, p["lut_in_bits"], codes)
        assert trace.in_cycles[0] == VECTOR_START_CYCLES
        assert trace.cycles == vector_cycles(n_beats * lanes, lanes, OP_LUT), \
            (trace.cycles, vector_cycles(n_beats * lanes, lanes, OP_LUT))
    c = p["max_channels"]
    for rows in (1, 3):
        a = nrng.integers(-1000, 1000, (rows, c))
        ones = np.ones(c, np.int64)
        trace = await _residual_op(dut, p, a, a, ones, ones, 0 * ones, ones, 16, 0)
        assert trace.in_cycles[0] == VECTOR_START_CYCLES
        assert trace.cycles == vector_cycles(rows * c, lanes, OP_RESIDUAL), \
            (trace.cycles, vector_cycles(rows * c, lanes, OP_RESIDUAL))

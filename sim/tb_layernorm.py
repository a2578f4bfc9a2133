"""cocotb testbench of hdl.layernorm.LayerNormUnit; scoreboard: intops.ptf_layernorm.

Parameters (``tb_params()``): ``lanes``, ``max_channels``, ``in_bits``, ``out_width``, ``seed``.
Besides the outputs, every operation checks the unit's reciprocal of each row (white box:
``inv_out``) against ``intops.layernorm_reciprocal(isqrt(Q))``: a one-LSB error of the
divider changes the outputs of only some rows, the reciprocal of every row.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np

from hdl.layernorm import LN_START_CYCLES, layernorm_const_layout, layernorm_cycles
from hdl.vecops import pack_lanes, pack_struct, unpack_lanes
from sim.runner import tb_params
from sim.stream_driver import reset_unit, run_operation, write_constants
from cocotb.triggers import FallingEdge, ReadOnly
from vit2hw import intops


def _p() -> dict:
    p = {"lanes": 1, "max_channels": 16, "in_bits": 8, "out_width": 16, "seed": 1}
    p.update(tb_params())
    return p


def realistic_affine(nrng, c: int, out_scale: float = 0.05):
    """gm/gs/bb of LayerNorm weights N(1, .3) / N(0, .5) to an ``out_scale`` output (choose_multiplier)."""
    gamma = nrng.normal(1.0, 0.3, c)
    beta = nrng.normal(0.0, 0.5, c)
    ratio = gamma / (2.0 ** intops.LN_NORM_FRAC * out_scale)
    gm, gs = intops.choose_multiplier(ratio, 16, 24)   # gs capped so bb fits 32 bits
    bb = np.rint(beta / out_scale * 2.0 ** gs).astype(np.int64)
    return gm, gs, bb


def row_roots(q: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``r = isqrt(Q)`` of each row of codes ``q`` after PTF alignment ``q << alpha``."""
    return intops.isqrt(intops.layernorm_stats(np.left_shift(q, alpha))[1]).reshape(-1)


async def _watch_reciprocals(dut, sink: list[int]) -> None:
    """Record each row's reciprocal as the front hands the row to the output pass (white
    box: ``inv_out`` in the cycle after ``handover``)."""
    latched = False
    while True:
        await FallingEdge(dut.clk)
        await ReadOnly()
        if latched:
            sink.append(dut.inv_out.value.to_unsigned())
        latched = str(dut.handover.value) == "1"          # X before its process first runs


async def ln_op(dut, p, q, alpha, gm, gs, bb, out_bits, zp, rng=None, stall=0.0, out_stall=None):
    """Load constants, run rows ``q`` through the unit and compare with ptf_layernorm
    (outputs) and layernorm_reciprocal (each row's internal reciprocal). ``stall``: the
    probability of an idle input cycle and (unless ``out_stall`` is given) of a refused
    output cycle."""
    lanes, in_bits = p["lanes"], p["in_bits"]
    rows, c = q.shape
    layout = layernorm_const_layout()
    words = [(ch, pack_struct(layout, {"alpha": alpha[ch], "gm": gm[ch], "bb": bb[ch], "gs": gs[ch]}))
             for ch in range(c)]
    await write_constants(dut, "const_wr", words)
    beats = [pack_lanes(v, in_bits) for v in q.reshape(-1, lanes).tolist()]
    beats_per_row = c // lanes
    recips: list[int] = []
    watcher = cocotb.start_soon(_watch_reciprocals(dut, recips))
    trace = await run_operation(dut, {"channels": c, "rows": rows, "out_bits": out_bits, "out_zp": zp},
                                beats, len(beats), rng=rng, in_stall=stall,
                                out_stall=stall if out_stall is None else out_stall)
    watcher.cancel()
    r = row_roots(q, alpha)
    want_inv = intops.layernorm_reciprocal(r)
    got_inv = np.array(recips, np.int64)
    assert got_inv.shape == want_inv.shape, (got_inv.shape, want_inv.shape)
    bad = np.flatnonzero(got_inv != want_inv)
    assert not bad.size, (f"reciprocal mismatch in rows {bad[:5].tolist()}: r = {r[bad[:5]].tolist()}, "
                          f"got {got_inv[bad[:5]].tolist()} want {want_inv[bad[:5]].tolist()}")
    got = np.array([v for w in trace.outputs for v in unpack_lanes(w, p["out_width"], lanes)],
                   np.int64).reshape(q.shape)
    want = intops.ptf_layernorm(q, alpha, gm, gs, bb, out_bits, zp, in_bits)
    bad = np.argwhere(got != want)
    assert not bad.size, (f"mismatch at {bad[:5].tolist()}: got {got[got != want][:5].tolist()} "
                          f"want {want[got != want][:5].tolist()} (C={c}, rows={rows})")
    return trace


@cocotb.test()
async def random_rows_realistic_constants(dut):
    """Random codes and alphas with choose_multiplier constants, random stalls: equal to ptf_layernorm."""
    p = _p()
    rng = random.Random(p["seed"])
    nrng = np.random.default_rng(p["seed"])
    await reset_unit(dut)
    lo, hi = intops.int_range(p["in_bits"])
    for c, rows, out_bits, zp in ((p["max_channels"], 3, 8, 0),
                                  (max(p["lanes"], p["max_channels"] // 2), 2, 8, -3),
                                  (p["max_channels"], 2, 16, 100)):
        q = nrng.integers(lo, hi + 1, (rows, c))
        q[1] = np.rint(nrng.normal(0, 6, c)).clip(lo, hi)          # a narrow, realistic row
        alpha = nrng.integers(0, 4, c)
        gm, gs, bb = realistic_affine(nrng, c)
        await ln_op(dut, p, q, alpha, gm, gs, bb, out_bits, zp, rng, 0.3)
    # heavy output back-pressure on short rows: the front finishes rows faster than they
    # leave, so rows are handed to the output pass while the previous row's last beats are
    # still held in the stalled output pipeline
    for c in sorted({p["lanes"], 2 * p["lanes"]}):
        if c > p["max_channels"]:
            continue
        q = nrng.integers(lo, hi + 1, (6, c))
        alpha = nrng.integers(0, 4, c)
        gm, gs, bb = realistic_affine(nrng, c)
        await ln_op(dut, p, q, alpha, gm, gs, bb, 8, 1, rng, 0.0, out_stall=0.95)


@cocotb.test()
async def edge_rows(dut):
    """Constant rows (Q = 0), alpha 3 extremes, outliers, saturation, shifts 0/62, short rows."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 1)
    await reset_unit(dut)
    lanes, cmax = p["lanes"], p["max_channels"]
    lo, hi = intops.int_range(p["in_bits"])
    c = cmax
    rows = np.stack([
        np.full(c, lo), np.full(c, hi), np.zeros(c, np.int64), np.full(c, -1),   # Q = 0
        np.resize([lo, hi], c),                                                   # max variance
        np.where(np.arange(c) == c // 2, hi, lo),                                 # one outlier
        np.where(np.arange(c) == 0, lo, 0),
        np.resize([0, 1], c),
    ]).astype(np.int64)
    alpha3 = np.full(c, 3, np.int64)
    gm, gs, bb = realistic_affine(nrng, c)
    await ln_op(dut, p, rows, alpha3, gm, gs, bb, 8, 0)
    alpha0 = np.zeros(c, np.int64)
    await ln_op(dut, p, rows, alpha0, gm, gs, bb, 8, 0)
    # saturation at both ends: huge multipliers of both signs, tiny shift
    gm_sat = np.resize([32767, -32768], c).astype(np.int64)
    gs0 = np.zeros(c, np.int64)
    zero = np.zeros(c, np.int64)
    for out_bits in (8, 4, 16):
        await ln_op(dut, p, rows, np.resize([3, 0, 1, 2], c), gm_sat, gs0, zero, out_bits, 0)
    # extreme shifts and biases: 62 rounds everything to 0 or the rounding boundary
    bb_ext = np.resize([(1 << 31) - 1, -(1 << 31), 1 << 30, 0], c).astype(np.int64)
    await ln_op(dut, p, rows, alpha3, gm_sat, np.full(c, 62, np.int64), bb_ext, 8, 0)
    await ln_op(dut, p, rows, alpha3, gm_sat, np.full(c, 31, np.int64), bb_ext, 8, -5)
    # zero crossings: multiplier 1, shift 1 -> round-half-up of n/2 around zero
    await ln_op(dut, p, rows[4:], alpha0, np.ones(c, np.int64), np.ones(c, np.int64), zero, 16, 0)
    # shortest rows (one beat) and a constant one-element row
    q = nrng.integers(lo, hi + 1, (3, lanes))
    await ln_op(dut, p, q, np.full(lanes, 3, np.int64), *realistic_affine(nrng, lanes), 8, 0)


@cocotb.test()
async def cycle_model(dut):
    """Measured cycles (first input to last output, no stalls) equal layernorm_cycles(), 1, 3
    and 5 rows (row buffers reused)."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 2)
    await reset_unit(dut)
    lanes, cmax = p["lanes"], p["max_channels"]
    lo, hi = intops.int_range(p["in_bits"])
    for c in sorted({lanes, cmax}):
        for rows in (1, 3, 5):
            q = nrng.integers(lo, hi + 1, (rows, c))
            trace = await ln_op(dut, p, q, nrng.integers(0, 4, c), *realistic_affine(nrng, c), 8, 0)
            want = layernorm_cycles(c, rows, lanes, cmax, p["in_bits"])
            assert trace.in_cycles[0] == LN_START_CYCLES, trace.in_cycles[0]
            assert trace.cycles == want, f"C={c} rows={rows}: measured {trace.cycles}, model {want}"


@cocotb.test()
async def normalized_values_exposed(dut):
    """With gm = 1, gs = 0, bb = 0 the output is n itself: isqrt/reciprocal exact on rows of
    every spread, on rows whose root is a power of two (exact quotient) and on constant
    rows (r = 0); ln_op checks the internal reciprocal of each of them."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 3)
    await reset_unit(dut)
    c = p["max_channels"]
    lo, hi = intops.int_range(p["in_bits"])
    spreads = [0.3, 0.6, 1, 2, 4, 8, 16, 40, 80, 128]
    q = np.concatenate([np.rint(nrng.normal(nrng.integers(-60, 60), s, (2, c))) for s in spreads])
    # ±v rows give Q = (C·v)², so r = C·v is a power of two for power-of-two C and v
    # (the divider's exact-quotient case inv = 2**16)
    sym = np.stack([np.resize([v, -v], c) for v in (1, 2, 3, 16, 64, 127)])
    # two-spike rows [a, -b, 0, ...] whose root (after the alignment by alpha) is a power
    # of two, or one off it: large |C·x − S| with the divider's exact-quotient case and
    # its neighbours on both sides of a bit-length step
    a, b = np.meshgrid(np.arange(1, hi + 1), np.arange(0, hi + 1), indexing="ij")
    const = np.stack([np.full(c, v) for v in (lo, 0, 5, hi)])           # Q = 0, r = 0
    ones, zero = np.ones(c, np.int64), np.zeros(c, np.int64)
    roots = []
    for alpha in (nrng.integers(0, 4, c), np.full(c, 3, np.int64), np.zeros(c, np.int64)):
        # spikes on the two least-shifted channels: the finest lattice of roots
        i, j = np.argsort(alpha, kind="stable")[:2]
        spikes = np.zeros((a.size, c), np.int64)
        spikes[:, i], spikes[:, j] = a.reshape(-1), -b.reshape(-1)
        r = row_roots(spikes, alpha)
        picked = []
        for off, count in ((0, 12), (-1, 3), (1, 3)):
            hit = spikes[(r - off > 0) & (((r - off) & (r - off - 1)) == 0)]
            picked.append(hit[np.linspace(0, len(hit) - 1, min(count, len(hit))).astype(int)])
        rows = np.concatenate([q.clip(lo, hi), sym, *picked, const]).astype(np.int64)
        roots.append(row_roots(rows, alpha))
        await ln_op(dut, p, rows, alpha, ones, zero, zero, 16, 0)
    # (with all alphas 3 and C = 768 no two-spike row has a power-of-two root: cover the
    # case over the whole test rather than per alignment)
    r = np.concatenate(roots)
    assert (r == 0).any() and ((r > 0) & ((r & (r - 1)) == 0)).sum() >= 6, \
        "the rows must include r = 0 and power-of-two roots"

"""cocotb testbench of hdl.softmax.SoftmaxUnit; scoreboards: intops.log_int_softmax
(``cfg.mode`` = log2) and intops.uniform_softmax (``cfg.mode`` = uniform).

Parameters (``tb_params()``): ``lanes``, ``max_len``, ``seed``. Padding lanes of a
partial last beat carry random values (larger than the row maximum too) and must come
out as probability zero (``LOG2_ZERO_CODE`` / 0) without disturbing the row. Every
uniform-mode operation also checks the divider's reciprocal of each row (white box),
because the 8-bit probabilities hide most one-LSB errors of it.
"""

from __future__ import annotations

import math
import random

import cocotb
import numpy as np

from hdl.softmax import (SM_MODE_LOG2, SM_MODE_UNIFORM, SM_OUT_BITS, SM_START_CYCLES,
                         softmax_cycles)
from hdl.vecops import pack_lanes, unpack_lanes
from sim.runner import tb_params
from cocotb.triggers import FallingEdge, ReadOnly

from sim.stream_driver import reset_unit, run_operation
from vit2hw import intops

SCORE_BITS = 16
MODES = (SM_MODE_LOG2, SM_MODE_UNIFORM)


def _p() -> dict:
    p = {"lanes": 1, "max_len": 32, "seed": 1}
    p.update(tb_params())
    return p


def realistic_scores(nrng, rows: int, n: int, sigma: float) -> np.ndarray:
    """Attention logits N(0, sigma) as score·log2(e) at 2**-SCORE_FRAC, clipped to int16."""
    real = nrng.normal(0.0, sigma, (rows, n)) * math.log2(math.e) * (1 << intops.SCORE_FRAC)
    return np.clip(np.rint(real), -32768, 32767).astype(np.int64)


def check_reciprocals(t: np.ndarray, recips: list[int]) -> None:
    """Each row's ``R`` is ``floor(PROB_MAX·2**PROB_RECIP_SHIFT / total)``, stated as the
    defining inequality ``R·total <= D < (R+1)·total`` with ``total`` from int_exp2_neg."""
    total = intops.int_exp2_neg(t - t.max(axis=-1, keepdims=True)).sum(axis=-1)
    dividend = intops.PROB_MAX << intops.PROB_RECIP_SHIFT
    assert len(recips) == len(total), (len(recips), len(total))
    for row, (r, tot) in enumerate(zip(recips, total.tolist())):
        assert r * tot <= dividend < (r + 1) * tot, \
            f"row {row}: reciprocal {r} is not floor({dividend}/{tot}) = {dividend // tot}"


async def sm_op(dut, p, t: np.ndarray, nrng, rng=None, stall=0.0, mode=SM_MODE_LOG2):
    """Run rows ``t`` ([rows, N]) through the unit in ``mode``; compare with its intops function."""
    lanes = p["lanes"]
    rows, n = t.shape
    beats_per_row = -(-n // lanes)
    padded = nrng.integers(-32768, 32768, (rows, beats_per_row * lanes))
    padded[:, :n] = t
    beats = [pack_lanes(v, SCORE_BITS) for v in padded.reshape(-1, lanes).tolist()]
    recips: list[int] = []

    def sample_reciprocal(k: int) -> None:
        # R is stable while a row's outputs drain: sample it at each row's first output
        if k % beats_per_row == 0:
            recips.append(dut.recip.value.to_unsigned())

    trace = await run_operation(dut, {"length": n, "rows": rows, "mode": mode}, beats, len(beats),
                                rng=rng, in_stall=stall, out_stall=stall,
                                probe=sample_reciprocal if mode == SM_MODE_UNIFORM else None)
    got = np.array([v for w in trace.outputs for v in unpack_lanes(w, SM_OUT_BITS, lanes)],
                   np.int64).reshape(rows, -1)
    if mode == SM_MODE_UNIFORM:
        want, zero = intops.uniform_softmax(t), 0
        check_reciprocals(t, recips)
    else:
        want, zero = intops.log_int_softmax(t), intops.LOG2_ZERO_CODE
    assert np.all(got[:, n:] == zero), f"padding lanes must give probability zero (mode {mode})"
    got = got[:, :n]
    bad = np.argwhere(got != want)
    assert not bad.size, (f"mismatch at {bad[:5].tolist()}: got {got[got != want][:5].tolist()} "
                          f"want {want[got != want][:5].tolist()} (N={n}, rows={rows}, mode {mode})")
    return trace


@cocotb.test()
async def random_rows(dut):
    """Realistic and uniform random score rows of several lengths, random stalls, modes
    alternating between operations: equal to log_int_softmax / uniform_softmax."""
    p = _p()
    rng = random.Random(p["seed"])
    nrng = np.random.default_rng(p["seed"])
    await reset_unit(dut)
    nmax = p["max_len"]
    # 9 rows: every row buffer is reused while the stages hold different rows
    cases = [(nmax, 9, 2.0), (nmax - 1, 2, 0.5), (max(1, nmax // 2 + 1), 2, 6.0)]
    if nmax >= 197:
        cases.append((197, 2, 3.0))                   # DeiT: 196 patches + class token
    for n, rows, sigma in cases:
        t = realistic_scores(nrng, rows, n, sigma)
        for mode in MODES:
            await sm_op(dut, p, t, nrng, rng, 0.3, mode)
    await sm_op(dut, p, nrng.integers(-32768, 32768, (2, nmax)), nrng, rng, 0.3, SM_MODE_UNIFORM)
    await sm_op(dut, p, nrng.integers(-32768, 32768, (2, nmax)), nrng, rng, 0.3, SM_MODE_LOG2)
    await sm_op(dut, p, nrng.integers(-3000, 3000, (2, nmax)), nrng, rng, 0.3, SM_MODE_UNIFORM)
    await sm_op(dut, p, nrng.integers(-3000, 3000, (2, nmax)), nrng, rng, 0.3, SM_MODE_LOG2)


@cocotb.test()
async def edge_rows(dut):
    """One dominant score, equal rows, full int16 span, fraction boundaries, length 1, 2,
    max and not a multiple of the lanes, in both modes."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 1)
    await reset_unit(dut)
    nmax = p["max_len"]
    n = nmax
    idx = np.arange(n)
    rows = np.stack([
        np.where(idx == n // 3, 32767, -32768),           # one huge score: codes 0 and 15
        np.where(idx == 0, 5000, -100),                   # dominant but others not zero
        np.zeros(n, np.int64),                            # all equal: k = round(log2 N)
        np.full(n, -32768),
        np.full(n, 32767),
        np.resize([32767, -32768, 0, -1], n),             # u up to 65535
        -(idx % 17) * 256,                                 # exact integer powers of two
        -(idx % 17) * 256 - 255,                           # fraction at its top
        np.resize([0, 0, -1, -256, -257, -4095, -4096, -4097], n),
    ]).astype(np.int64)
    odd = max(1, nmax - p["lanes"] // 2 - 1)              # partial last beat when lanes > 1
    for mode in MODES:
        await sm_op(dut, p, rows, nrng, mode=mode)
        await sm_op(dut, p, rows[:, :odd], nrng, mode=mode)
        await sm_op(dut, p, np.array([[123]]), nrng, mode=mode)
        await sm_op(dut, p, np.array([[-32768], [32767], [0]]), nrng, mode=mode)
        await sm_op(dut, p, np.array([[7, 7]]), nrng, mode=mode)


@cocotb.test()
async def uniform_reciprocal(dut):
    """The uniform mode's divider gives floor(PROB_MAX·2**32/total) for totals from 2**15
    (N = 1) to max_len·2**15 (all equal), exact quotients (k·2**15 with k a power of two)
    and totals just above them, so a one-LSB error of the divider cannot pass unseen."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 4)
    await reset_unit(dut)
    nmax = p["max_len"]
    pow2 = [1 << i for i in range(nmax.bit_length()) if 1 << i <= nmax]
    ks = sorted({k for k in pow2 + [k + 1 for k in pow2] + [k - 1 for k in pow2] + [nmax]
                 if 1 <= k <= nmax})
    # k scores at the maximum (e = 2**15 each), the rest far below (e = 0); a second
    # variant adds one score 2**-8 below the maximum (e = 32682), breaking exactness
    rows = []
    for k in ks:
        row = np.full(nmax, -32768, np.int64)
        row[:k] = 1000
        rows.append(row)
        if k < nmax:
            row = row.copy()
            row[k] = 999
            rows.append(row)
    await sm_op(dut, p, np.stack(rows), nrng, mode=SM_MODE_UNIFORM)
    for n in sorted({1, 3, nmax - 1, nmax} - {0}):                 # all-equal rows of length n
        await sm_op(dut, p, np.full((1, n), -5, np.int64), nrng, mode=SM_MODE_UNIFORM)


@cocotb.test()
async def cycle_model(dut):
    """Measured cycles (first input to last output, no stalls) equal softmax_cycles(), 1, 3
    and 9 rows, both modes."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 2)
    await reset_unit(dut)
    lanes, nmax = p["lanes"], p["max_len"]
    for n in sorted({1, nmax - 1 if nmax > 1 else 1, nmax}):
        for rows in (1, 3, 9):
            for mode in MODES:
                trace = await sm_op(dut, p, realistic_scores(nrng, rows, n, 2.0), nrng, mode=mode)
                want = softmax_cycles(n, rows, lanes, mode)
                assert trace.in_cycles[0] == SM_START_CYCLES, trace.in_cycles[0]
                assert trace.cycles == want, \
                    f"N={n} rows={rows} mode {mode}: measured {trace.cycles}, model {want}"


async def _watch_exponentials(dut, lanes: int, sink: list[int]) -> None:
    """Record every exponential the exp pass writes back (white box: ``xv3``/``e3_<lane>``)."""
    while True:
        await FallingEdge(dut.clk)
        await ReadOnly()
        if int(dut.xv3.value):
            sink.extend(getattr(dut, f"e3_{lane}").value.to_unsigned() for lane in range(lanes))


@cocotb.test()
async def exponential_sweep(dut):
    """Every exponent z in [-(16·256+63), 0] gives exactly int_exp2_neg(z) inside the unit.

    The 4-bit codes hide most one-LSB errors of the exponential, so this test watches
    the internal values written back to the row buffer.
    """
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 3)
    await reset_unit(dut)
    n = p["max_len"]
    z = -np.arange(0, (intops.EXP_FRAC + 1) * (1 << intops.SCORE_FRAC) + 64, dtype=np.int64)
    per_row = n - 1
    z = np.resize(z, -(-len(z) // per_row) * per_row).reshape(-1, per_row)
    base = nrng.integers(-20000, 20000, (len(z), 1))
    t = np.concatenate([base, base + z], axis=1)          # row max sits in lane 0
    seen: list[int] = []
    watcher = cocotb.start_soon(_watch_exponentials(dut, p["lanes"], seen))
    await sm_op(dut, p, t, nrng)
    watcher.cancel()
    want = intops.int_exp2_neg(t - t.max(axis=1, keepdims=True)).reshape(-1)
    got = np.array(seen, np.int64)
    assert got.shape == want.shape, (got.shape, want.shape)
    bad = np.flatnonzero(got != want)
    assert not bad.size, f"exponential mismatch at {bad[:5].tolist()}: got {got[bad[:5]].tolist()} want {want[bad[:5]].tolist()}"

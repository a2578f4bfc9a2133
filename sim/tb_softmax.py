"""cocotb testbench of hdl.softmax.SoftmaxUnit; scoreboard: intops.log_int_softmax.

Parameters (``tb_params()``): ``lanes``, ``max_len``, ``seed``. Padding lanes of a
partial last beat carry random values (larger than the row maximum too) and must come
out as ``LOG2_ZERO_CODE`` without disturbing the row.
"""

from __future__ import annotations

import math
import random

import cocotb
import numpy as np

from hdl.softmax import SM_START_CYCLES, softmax_cycles
from hdl.vecops import pack_lanes, unpack_lanes
from sim.runner import tb_params
from cocotb.triggers import FallingEdge, ReadOnly

from sim.stream_driver import reset_unit, run_operation
from vit2hw import intops

SCORE_BITS = 16


def _p() -> dict:
    p = {"lanes": 1, "max_len": 32, "seed": 1}
    p.update(tb_params())
    return p


def realistic_scores(nrng, rows: int, n: int, sigma: float) -> np.ndarray:
    """Attention logits N(0, sigma) as score·log2(e) at 2**-SCORE_FRAC, clipped to int16."""
    real = nrng.normal(0.0, sigma, (rows, n)) * math.log2(math.e) * (1 << intops.SCORE_FRAC)
    return np.clip(np.rint(real), -32768, 32767).astype(np.int64)


async def sm_op(dut, p, t: np.ndarray, nrng, rng=None, stall=0.0):
    """Run rows ``t`` ([rows, N]) through the unit and compare with log_int_softmax."""
    lanes = p["lanes"]
    rows, n = t.shape
    beats_per_row = -(-n // lanes)
    padded = nrng.integers(-32768, 32768, (rows, beats_per_row * lanes))
    padded[:, :n] = t
    beats = [pack_lanes(v, SCORE_BITS) for v in padded.reshape(-1, lanes).tolist()]
    trace = await run_operation(dut, {"length": n, "rows": rows}, beats, len(beats),
                                rng=rng, in_stall=stall, out_stall=stall)
    got = np.array([v for w in trace.outputs for v in unpack_lanes(w, 4, lanes, signed=False)],
                   np.int64).reshape(rows, -1)
    want = intops.log_int_softmax(t)
    assert np.all(got[:, n:] == intops.LOG2_ZERO_CODE), "padding lanes must give the zero code"
    got = got[:, :n]
    bad = np.argwhere(got != want)
    assert not bad.size, (f"mismatch at {bad[:5].tolist()}: got {got[got != want][:5].tolist()} "
                          f"want {want[got != want][:5].tolist()} (N={n}, rows={rows})")
    return trace


@cocotb.test()
async def random_rows(dut):
    """Realistic and uniform random score rows of several lengths, random stalls: equal to log_int_softmax."""
    p = _p()
    rng = random.Random(p["seed"])
    nrng = np.random.default_rng(p["seed"])
    await reset_unit(dut)
    nmax = p["max_len"]
    cases = [(nmax, 3, 2.0), (nmax - 1, 2, 0.5), (max(1, nmax // 2 + 1), 2, 6.0)]
    if nmax >= 197:
        cases.append((197, 2, 3.0))                   # DeiT: 196 patches + class token
    for n, rows, sigma in cases:
        await sm_op(dut, p, realistic_scores(nrng, rows, n, sigma), nrng, rng, 0.3)
    await sm_op(dut, p, nrng.integers(-32768, 32768, (2, nmax)), nrng, rng, 0.3)
    await sm_op(dut, p, nrng.integers(-3000, 3000, (2, nmax)), nrng, rng, 0.3)


@cocotb.test()
async def edge_rows(dut):
    """One dominant score, equal rows, full int16 span, fraction boundaries, length 1 and max."""
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
    await sm_op(dut, p, rows, nrng)
    await sm_op(dut, p, np.array([[123]]), nrng)
    await sm_op(dut, p, np.array([[-32768], [32767], [0]]), nrng)
    await sm_op(dut, p, np.array([[7, 7]]), nrng)


@cocotb.test()
async def cycle_model(dut):
    """Measured cycles (first input to last output, no stalls) equal softmax_cycles(), 1 and 3 rows."""
    p = _p()
    nrng = np.random.default_rng(p["seed"] + 2)
    await reset_unit(dut)
    lanes, nmax = p["lanes"], p["max_len"]
    for n in sorted({1, nmax - 1 if nmax > 1 else 1, nmax}):
        for rows in (1, 3):
            trace = await sm_op(dut, p, realistic_scores(nrng, rows, n, 2.0), nrng)
            want = softmax_cycles(n, rows, lanes)
            assert trace.in_cycles[0] == SM_START_CYCLES, trace.in_cycles[0]
            assert trace.cycles == want, f"N={n} rows={rows}: measured {trace.cycles}, model {want}"


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
